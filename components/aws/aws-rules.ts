/**
 * AWS's documented rules for the values the AWS components hand to it, checked before
 * anything exists. Pure: zod schemas and small predicates, tested with a corpus of valid
 * but unusual inputs beside them (aws-rules.test.ts), since refusing good input is a defect
 * too. Each rule cites the strictest of the services a value reaches.
 */
import { z } from "zod";

const PARTITION = "aws(-[a-z]+)*";
const REGION = "[a-z]{2}(-[a-z]+)+-[0-9]+";
const ACCOUNT = "[0-9]{12}";
const arn = (service: string, region: string, account: string, resource: string) =>
  new RegExp(`^arn:${PARTITION}:${service}:${region}:${account}:${resource}$`);

const matching = (pattern: RegExp, what: string) => z.string().regex(pattern, { error: `must be ${what}` });

/** A Secrets Manager secret's full ARN: the name and the six characters Secrets Manager appends (policies match only the full ARN). */
export const secretArn = matching(
  arn("secretsmanager", REGION, ACCOUNT, "secret:[A-Za-z0-9/_+=.@-]{1,512}-[A-Za-z0-9]{6}"),
  "the full ARN of a Secrets Manager secret, with the six characters after its name (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME-AbCdEf)",
);

const KEY_ID = "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})";
/** A KMS key's ARN: an IAM grant (kms:Decrypt) and CloudWatch Logs encryption take keys, not aliases. */
export const kmsKeyArn = matching(
  arn("kms", REGION, ACCOUNT, `key/${KEY_ID}`),
  "the ARN of a KMS key, not an alias (arn:aws:kms:REGION:ACCOUNT:key/ID)",
);
/** A KMS key or alias ARN: EBS encryption takes either. */
export const kmsKeyOrAliasArn = matching(
  arn("kms", REGION, ACCOUNT, `(key/${KEY_ID}|alias/[A-Za-z0-9/_-]{1,250})`),
  "the ARN of a KMS key or alias (arn:aws:kms:REGION:ACCOUNT:key/ID or ...:alias/NAME)",
);

/** An IAM managed policy (a permissions boundary): the account's own or AWS's. */
export const policyArn = matching(
  new RegExp(`^arn:${PARTITION}:iam::(${ACCOUNT}|aws):policy/([A-Za-z0-9+=,.@_-]+/)*[A-Za-z0-9+=,.@_-]{1,128}$`),
  "the ARN of an IAM managed policy (arn:aws:iam::ACCOUNT:policy/NAME)",
);

/**
 * What a CloudWatch alarm can notify: an SNS topic, a Lambda function, a Systems Manager
 * OpsItem or incident response plan, an Auto Scaling policy. EC2 actions (arn:aws:automate)
 * need an instance in the alarm's dimensions, and these alarms watch a whole pool.
 */
const ALARM_TARGETS = [
  arn("sns", REGION, ACCOUNT, "[A-Za-z0-9_-]{1,256}(\\.fifo)?"),
  arn("lambda", REGION, ACCOUNT, "function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]{1,128})?"),
  arn("ssm", REGION, ACCOUNT, "opsitem:[1-4](#CATEGORY=[A-Za-z]+)?"),
  arn("ssm-incidents", "", ACCOUNT, "response-plan/[A-Za-z0-9_-]{1,200}"),
  arn(
    "autoscaling",
    REGION,
    ACCOUNT,
    "scalingPolicy:[0-9a-f-]{36}:autoScalingGroupName/[^:]{1,255}:policyName/[^:]{1,255}",
  ),
];
export const alarmAction = z.string().refine((value) => ALARM_TARGETS.some((pattern) => pattern.test(value)), {
  error:
    "must be the ARN of something an alarm can notify: an SNS topic, a Lambda function, an SSM OpsItem or incident response plan, or an Auto Scaling policy",
});

/** The partition and region an ARN names (region empty for global services). */
export function arnPlace(value: string): { partition: string; region: string } | undefined {
  const match = /^arn:([^:]+):[^:]+:([^:]*):/.exec(value);
  return match ? { partition: match[1], region: match[2] } : undefined;
}

const toNumber = (ip: string) => ip.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
/** Whether an IPv4 CIDR block has bits set after its prefix ("10.0.0.1/16"), which EC2 refuses. */
export const hasHostBits = (cidr: string) => {
  const [ip, prefix] = cidr.split("/");
  return toNumber(ip) % 2 ** (32 - Number(prefix)) !== 0;
};
export const cidrBlock = (example: string) =>
  z.cidrv4({ error: `must be an IPv4 CIDR block such as "${example}"` }).refine((cidr) => !hasHostBits(cidr), {
    error: "has bits set after its prefix; give the network address (e.g. 10.0.0.0/16, not 10.0.0.1/16)",
  });

// Tags. Every resource the components tag (EC2, Auto Scaling, IAM, CloudWatch Logs, Secrets
// Manager, SSM) takes at most 50; IAM, the strictest, allows letters, digits, spaces and
// _ . : / = + - @, treats keys as equal regardless of case, and "aws:" is AWS's own prefix
// in any case. Keys 1-128 characters, values 0-256.
export const MAX_TAGS = 50;
const TAG_TEXT = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;
const ALLOWED_TAG_TEXT = "letters, digits, spaces and _ . : / = + - @";

/** The user's tags for resources the kit also tags with `kitKeys`: within AWS's count with them, none clashing. */
export function tagsSchema(kitKeys: readonly string[]) {
  const key = z
    .string()
    .min(1, { error: "tag keys are 1-128 characters" })
    .max(128, { error: "tag keys are 1-128 characters" })
    .regex(TAG_TEXT, { error: `tag keys may hold ${ALLOWED_TAG_TEXT}` })
    .refine((k) => !k.toLowerCase().startsWith("aws:"), {
      error: 'tag keys may not start with "aws:" (in any case): the prefix is AWS\'s own',
    });
  const value = z
    .string()
    .max(256, { error: "tag values are at most 256 characters" })
    .regex(TAG_TEXT, { error: `tag values may hold ${ALLOWED_TAG_TEXT}` });
  return z
    .record(key, value)
    .superRefine((tags, ctx) => {
      const keys = Object.keys(tags);
      if (keys.length + kitKeys.length > MAX_TAGS) {
        ctx.addIssue({
          code: "custom",
          input: `${keys.length} tags`,
          message: `${keys.length} tags and the kit's ${kitKeys.length} (${kitKeys.join(", ")}) exceed AWS's ${MAX_TAGS} per resource`,
        });
      }
      const seen = new Map<string, string>(kitKeys.map((k) => [k.toLowerCase(), `the kit's own "${k}"`]));
      for (const k of keys) {
        const clash = seen.get(k.toLowerCase());
        if (clash)
          ctx.addIssue({
            code: "custom",
            path: [k],
            input: k,
            message: `clashes with ${clash} (IAM reads tag keys regardless of case)`,
          });
        seen.set(k.toLowerCase(), `"${k}"`);
      }
    })
    .default({});
}

/**
 * A pool's name reaches AWS inside other names: the IAM role and instance profile
 * "<name>-instance-" plus Pulumi's 7 random characters (a role name is at most 64 of
 * [A-Za-z0-9+=,.@_-]), the launch template "<name>-agents-..." ([A-Za-z0-9().\-/_]), the log
 * group "/agentpools/agentpools-<name>-..." ([.\-_/#A-Za-z0-9]), the SSM parameter path, and
 * the security group's description. The characters all of them take, and the IAM length.
 */
export const POOL_NAME = /^[A-Za-z0-9._-]{1,48}$/;
/** A Network's name reaches a security group's name and description and the Name tags. */
export const NETWORK_NAME = /^[A-Za-z0-9._-]{1,200}$/;
export const nameProblem = (name: string, pattern: RegExp) =>
  pattern.test(name)
    ? undefined
    : `name: ${JSON.stringify(name.slice(0, 80))} becomes part of IAM, launch template and log group names: use letters, digits, . _ - (at most ${pattern === POOL_NAME ? 48 : 200} characters)`;

// IAM statements a user adds to the instance role, held to IAM's grammar.
// IAM reads service prefixes case-blind ("S3:GetObject"), and a policy variable may stand for
// an ARN's region or account ("${aws:PrincipalAccount}").
const ACTION = /^[A-Za-z0-9-]+:[A-Za-z0-9*?]+$/;
const VARIABLE = "\\$\\{[^}]+\\}";
const RESOURCE = new RegExp(
  `^(\\*|arn:(\\*|${PARTITION}):[a-z0-9*?-]+:(?:[a-z0-9*?-]|${VARIABLE})*:((?:[0-9*?]|${VARIABLE})*|aws):.+)$`,
);
const EVERY_ACTION = ["*", "*:*"];
const strings = (what: string, pattern: RegExp, hint: string) =>
  z.union([
    z.string().regex(pattern, { error: hint }),
    z.array(z.string().regex(pattern, { error: hint })).min(1, { error: `must name at least one ${what}` }),
  ]);
const actions = strings(
  "action",
  /^(\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+)$/,
  'must be "service:Action" (e.g. "s3:GetObject"; * and ? match within the name)',
);
const resources = strings(
  "resource",
  RESOURCE,
  'must be "*" or an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)',
);
const conditionValue = z.union([z.string(), z.number(), z.boolean()]);

export const policyStatement = z
  .strictObject({
    Sid: z
      .string()
      .regex(/^[A-Za-z0-9]{1,128}$/, { error: "must be letters and digits" })
      .optional(),
    Effect: z.enum(["Allow", "Deny"]),
    Action: actions.optional(),
    NotAction: actions.optional(),
    Resource: resources.optional(),
    NotResource: resources.optional(),
    Condition: z
      .record(
        z.string().regex(/^(ForAllValues:|ForAnyValue:)?[A-Za-z]+$/, {
          error: "condition operators are names such as StringEquals or ForAnyValue:StringLike",
        }),
        z.record(
          z.string().regex(/^[A-Za-z0-9-]+:.+$/, { error: 'condition keys are "service:key"' }),
          z.union([conditionValue, z.array(conditionValue)]),
        ),
      )
      .optional(),
  })
  .superRefine((statement, ctx) => {
    const issue = (path: string, message: string) =>
      ctx.addIssue({ code: "custom", path: [path], input: statement[path as keyof typeof statement], message });
    if ((statement.Action === undefined) === (statement.NotAction === undefined))
      issue("Action", "give exactly one of Action and NotAction");
    if ((statement.Resource === undefined) === (statement.NotResource === undefined))
      issue("Resource", "give exactly one of Resource and NotResource");
    // A Deny narrows what the role may do: a "*" there is a guard-rail, not a grant.
    if (statement.Effect === "Allow") {
      if ([statement.Action ?? []].flat().some((a) => EVERY_ACTION.includes(a)))
        issue("Action", 'must name actions; "*" would grant every permission to the agents');
      if (statement.NotAction !== undefined)
        issue("NotAction", "with Allow grants everything but the actions named; name the actions to allow instead");
    }
  });
export type PolicyStatement = z.output<typeof policyStatement>;
export const isAction = (text: string) => ACTION.test(text);

/** An inline role policy's limit, counted without whitespace (IAM's quota for a role's inline policies). */
export const INLINE_POLICY_LIMIT = 10_240;

/**
 * Availability zone names: "eu-west-1a", Local Zones such as "us-west-2-lax-1a" and
 * Wavelength Zones such as "us-east-1-wl1-bos-wlz-1".
 */
export const availabilityZone = z
  .string()
  .regex(/^[a-z]{2}(-[a-z]+)+-[0-9]+([a-z]|(-[a-z0-9]+)+)$/, { error: 'must be a zone name such as "eu-west-1a"' });
/** The region a zone name belongs to. */
export const regionOfZone = (zone: string) => /^[a-z]{2}(-[a-z]+)+-[0-9]+/.exec(zone)?.[0];
