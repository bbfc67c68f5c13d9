import { createHash } from "node:crypto";
import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { poolTokenProblem } from "../shared/pool-tokens";
import { showValue, urlCredentialPaths } from "../shared/redact";
import {
  alarmAction,
  arnPlace,
  cidrBlock,
  INLINE_POLICY_LIMIT,
  kmsKeyArn,
  kmsKeyOrAliasArn,
  nameProblem,
  policyArn,
  policyStatement,
  POOL_NAME,
  secretArn,
  tagsSchema,
} from "./aws-rules";
import { autoScalingGroupArn, KIT_SIDS, poolPolicyDocument, policySize } from "./policy";
import type { RoleName } from "../../agent/config/roles";
import { checkSecrets } from "../shared/secrets";
import { secretSettings } from "../../agent/config/env";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { architectureOf, instanceTypeProblem } from "./instance-types";
import { formatIssues, InvalidArgumentsError } from "../shared/validation";
import { sharedPoolShape } from "../shared/pool-args";
import { scalingProblems, scalingShape } from "./scaling";

/** The retention periods CloudWatch Logs accepts. */
export const LOG_RETENTION_DAYS = [
  1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
] as const;

export const NODE_MAJORS = [22, 24] as const;

export const instanceType = z.string().superRefine((type, ctx) => {
  const problem = instanceTypeProblem(type);
  if (problem) ctx.addIssue({ code: "custom", message: problem, input: type });
});

/** The user's statements: IAM's grammar (aws-rules.ts), each Sid once and none of the kit's. */
const extraStatements = z.array(policyStatement).superRefine((statements, ctx) => {
  const seen = new Set<string>(KIT_SIDS);
  statements.forEach((statement, index) => {
    if (statement.Sid === undefined) return;
    if (seen.has(statement.Sid)) {
      const whose = (KIT_SIDS as readonly string[]).includes(statement.Sid)
        ? "one of the kit's own statements"
        : "an earlier statement";
      ctx.addIssue({
        code: "custom",
        path: [index, "Sid"],
        input: statement.Sid,
        message: `is already the Sid of ${whose}; Sids are unique in a policy`,
      });
    }
    seen.add(statement.Sid);
  });
});

/** The tags the kit adds to what it creates: counted against AWS's 50, and not for the user to set. */
export const KIT_TAG_KEYS = ["agentpools:pool", "agentpools:component", "Name"] as const;

/** Where instances get customCaCertificates: inline in user-data, or from an SSM parameter at boot. */
export const CA_DELIVERIES = ["userData", "ssmParameter"] as const;
/** The largest value an SSM parameter holds: 4,096 bytes on the standard tier, 8,192 on the advanced. */
const SSM_STANDARD_LIMIT = 4096;
export const SSM_PARAMETER_LIMIT = 8192;
/** The cheapest SSM tier that holds a value. */
export const ssmParameterTier = (value: string) =>
  Buffer.byteLength(value) <= SSM_STANDARD_LIMIT ? "Standard" : "Advanced";

export interface PoolDefaults {
  instanceType: string;
  rootVolumeSizeGiB: number;
  drainTimeoutSeconds: number;
}

/** Arguments every pool kind shares (the AWS side), with the kind's defaults. */
export function poolCoreShape(defaults: PoolDefaults) {
  return {
    instanceType: instanceType.default(defaults.instanceType),
    mixedInstances: z
      .strictObject({
        instanceTypes: z.array(instanceType).min(1).max(20),
        onDemandBaseCapacity: z.int().min(0).default(0),
        onDemandPercentageAboveBaseCapacity: z.int().min(0).max(100).default(100),
        spotAllocationStrategy: z
          .enum(["price-capacity-optimized", "capacity-optimized", "lowest-price"])
          .default("price-capacity-optimized"),
      })
      .optional(),
    minSize: z.int().min(0).max(1000).default(1),
    maxSize: z.int().min(1).max(1000).default(3),
    /** The size at creation; afterwards the scaling policy owns it (Pulumi leaves it alone). */
    desiredCapacity: z.int().min(0).max(1000).optional(),
    ...scalingShape,
    amiId: z
      .string()
      .regex(/^ami-[0-9a-f]{8,17}$/, { error: 'must be an AMI ID such as "ami-0123456789abcdef0"' })
      .optional(),
    nodeMajor: z
      .union(
        NODE_MAJORS.map((n) => z.literal(n)),
        { error: `must be one of ${NODE_MAJORS.join(", ")} (Node.js LTS lines packaged for Amazon Linux 2023)` },
      )
      .default(24),
    rootVolumeSizeGiB: z.int().min(8).max(16384).default(defaults.rootVolumeSizeGiB),
    volumeKmsKeyArn: kmsKeyOrAliasArn.optional(),
    logRetentionDays: z
      .union(
        LOG_RETENTION_DAYS.map((n) => z.literal(n)),
        { error: `must be one of ${LOG_RETENTION_DAYS.join(", ")}` },
      )
      .default(30),
    logKmsKeyArn: kmsKeyArn.optional(),
    secretKmsKeyArn: kmsKeyArn.optional(),
    existingSecretArn: secretArn.optional(),
    secretRecoveryWindowDays: z.int().min(7).max(30).default(7),
    permissionsBoundaryArn: policyArn.optional(),
    extraPolicyStatements: extraStatements.default([]),
    ssmSessionManager: z.boolean().default(false),
    alarmActions: z.array(alarmAction).default([]),
    egressCidrBlocks: z.array(cidrBlock("0.0.0.0/0")).min(1).default(["0.0.0.0/0"]),
    customCaCertificatesDelivery: z.enum(CA_DELIVERIES).default("userData"),
    /** The launch hook's timeout: an instance whose agent has not connected by then is replaced (AWS allows 30-7200). */
    launchTimeoutSeconds: z.int().min(60).max(7200).default(900),
    /** An agent disconnected from its gateway this long asks Auto Scaling to replace its instance. */
    unhealthyAfterDisconnectedSeconds: z.int().min(60).max(86_400).default(600),
    detailedMonitoring: z.boolean().default(false),
    ...sharedPoolShape(defaults),
    tags: tagsSchema(KIT_TAG_KEYS),
    /**
     * With httpsProxy: false (the default) sends the AWS APIs the instance calls (Secrets Manager,
     * CloudWatch Logs, Auto Scaling, SSM) and IMDS around the proxy, to the VPC endpoints or the
     * route the subnets have; true sends them through the proxy (a VPC whose only way out it is).
     */
    awsApisViaProxy: z.boolean().default(false),
  };
}

/** The core arguments after validation, as the schema gives them (every kind's schema holds them). */
export type CoreArgs = z.output<z.ZodObject<ReturnType<typeof poolCoreShape>>>;

/** The fields that hold ARNs, which must all name the partition (and, when regional, the region) the pool is in. */
export function givenArns(
  args: Pick<
    CoreArgs,
    | "volumeKmsKeyArn"
    | "logKmsKeyArn"
    | "secretKmsKeyArn"
    | "existingSecretArn"
    | "permissionsBoundaryArn"
    | "alarmActions"
  >,
): { field: string; arn: string }[] {
  const single = (
    ["volumeKmsKeyArn", "logKmsKeyArn", "secretKmsKeyArn", "existingSecretArn", "permissionsBoundaryArn"] as const
  ).flatMap((field) => (args[field] ? [{ field, arn: args[field] as string }] : []));
  return [...single, ...args.alarmActions.map((arn, index) => ({ field: `alarmActions[${index}]`, arn }))];
}

/** ARNs that disagree with the place the pool is deployed to (known at preview) or with each other (known now). */
export function arnPlaceProblems(
  arns: { field: string; arn: string }[],
  where?: { partition: string; region: string },
): string[] {
  const problems: string[] = [];
  const placed = arns.flatMap(({ field, arn }) => {
    const place = arnPlace(arn);
    return place ? [{ field, ...place }] : [];
  });
  const partition = where?.partition ?? placed[0]?.partition;
  const region = where?.region ?? placed.find((a) => a.region)?.region;
  for (const a of placed) {
    if (a.partition !== partition)
      problems.push(`${a.field}: is in partition "${a.partition}", the pool in "${partition}"`);
    else if (a.region && a.region !== region)
      problems.push(
        `${a.field}: is in region ${a.region}, the pool in ${region}: alarms, keys and secrets are used from the pool's region`,
      );
  }
  return problems;
}

/** Characters as hard to compress as real names are (a run of one letter would flatter the size). */
export const noise = (length: number, seed: string) =>
  createHash("sha512").update(seed).digest("base64url").replace(/[-_]/g, "0").slice(0, length);
const WORST_GROUP = `agentpools-${noise(48, "pool")}-${noise(8, "suffix").toLowerCase()}`;
/** Placeholders as long as real values get: the policy's size and user-data's are checked with them. */
export const WORST_CASE = {
  partition: "aws-us-gov",
  region: "ap-southeast-4",
  dnsSuffix: "amazonaws.com.cn",
  account: "123456789012",
  secretArn: `arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:${noise(80, "secret")}-AbCdEf`,
  autoScalingGroupName: WORST_GROUP,
  logGroupName: `/agentpools/${WORST_GROUP}`,
};

/** Sizes and types that only make sense together, and what AWS checks across fields. */
export function checkCoreRelations(args: CoreArgs, ctx: z.RefinementCtx): void {
  if (args.minSize > args.maxSize)
    ctx.addIssue({
      code: "custom",
      path: ["minSize"],
      input: args.minSize,
      message: `must not exceed maxSize (${args.maxSize})`,
    });
  if (
    args.desiredCapacity !== undefined &&
    (args.desiredCapacity < args.minSize || args.desiredCapacity > args.maxSize)
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["desiredCapacity"],
      input: args.desiredCapacity,
      message: `must be between minSize (${args.minSize}) and maxSize (${args.maxSize})`,
    });
  }
  for (const problem of scalingProblems(args)) ctx.addIssue({ code: "custom", ...problem });
  if (args.customCaCertificatesDelivery === "ssmParameter") {
    const size = args.customCaCertificates === undefined ? 0 : Buffer.byteLength(args.customCaCertificates);
    if (size === 0)
      ctx.addIssue({
        code: "custom",
        path: ["customCaCertificatesDelivery"],
        input: args.customCaCertificatesDelivery,
        message: 'is "ssmParameter" but customCaCertificates is not given',
      });
    if (size > SSM_PARAMETER_LIMIT)
      ctx.addIssue({
        code: "custom",
        path: ["customCaCertificates"],
        input: `${size} bytes`,
        message: `is ${size} bytes; an SSM parameter holds at most ${SSM_PARAMETER_LIMIT}`,
      });
  }
  const arch = architectureOf(args.instanceType);
  args.mixedInstances?.instanceTypes.forEach((type, index) => {
    if (instanceTypeProblem(type) === undefined && architectureOf(type) !== arch) {
      ctx.addIssue({
        code: "custom",
        path: ["mixedInstances", "instanceTypes", index],
        input: type,
        message: `is ${architectureOf(type)} but instanceType "${args.instanceType}" is ${arch}: one AMI serves the whole group`,
      });
    }
  });
  for (const problem of arnPlaceProblems(givenArns(args)))
    ctx.addIssue({
      code: "custom",
      message: problem.slice(problem.indexOf(": ") + 2),
      path: [problem.slice(0, problem.indexOf(":"))],
    });
  const policy = poolPolicyDocument({
    secretArn: WORST_CASE.secretArn,
    // The configuration's parameter counted always: whether it is needed is known only once the user-data is rendered.
    parameterArns: [...(args.customCaCertificatesDelivery === "ssmParameter" ? ["ca-certificates"] : []), "config"].map(
      (leaf) =>
        `arn:aws-us-gov:ssm:us-gov-west-1:123456789012:parameter/agentpools/${WORST_CASE.autoScalingGroupName}/${leaf}`,
    ),
    secretKmsKeyArn: args.secretKmsKeyArn,
    region: WORST_CASE.region,
    dnsSuffix: WORST_CASE.dnsSuffix,
    logGroupArn: `arn:aws-us-gov:logs:us-gov-west-1:123456789012:log-group:${WORST_CASE.logGroupName}`,
    autoScalingGroupArn: autoScalingGroupArn(
      WORST_CASE.partition,
      WORST_CASE.region,
      WORST_CASE.account,
      WORST_CASE.autoScalingGroupName,
    ),
    extraStatements: args.extraPolicyStatements,
  });
  if (policySize(policy) > INLINE_POLICY_LIMIT) {
    ctx.addIssue({
      code: "custom",
      path: ["extraPolicyStatements"],
      input: `${args.extraPolicyStatements.length} statements`,
      message: `make the instance role's policy up to ${policySize(policy)} characters, over IAM's ${INLINE_POLICY_LIMIT} for a role's inline policies`,
    });
  }
}

/** Where the pool runs: a Network's outputs or the IDs of an existing VPC and its subnets. */
export interface PoolPlacement {
  vpcId: pulumi.Input<string>;
  subnetIds: pulumi.Input<pulumi.Input<string>[]>;
}

export interface ValidatedPool<T> {
  args: T;
  /** The secret settings as their variables, wrapped as a Pulumi secret; undefined with existingSecretArn. */
  secretEnv?: pulumi.Output<Record<string, string>>;
}

/**
 * Validate a pool's arguments before anything is created: the plain ones with the kind's
 * zod schema, the secret ones (plain strings now, Outputs once known) with their settings'
 * schemas, and the placement IDs. Every problem is reported in one error.
 */
export function validatePool<S extends z.ZodType<CoreArgs>>(
  component: string,
  name: string,
  role: RoleName,
  schema: S,
  args: PoolPlacement,
): ValidatedPool<z.output<S>> {
  const secretKeys = secretSettings(settingsJsonSchema(role)).map((s) => s.key);
  const { vpcId, subnetIds, ...rest } = args as PoolPlacement & Record<string, unknown>;
  const plain = Object.fromEntries(Object.entries(rest).filter(([key]) => !secretKeys.includes(key)));
  const problems: string[] = [];

  const named = nameProblem(name, POOL_NAME);
  if (named) problems.push(named);
  const parsed = schema.safeParse(plain, { reportInput: true });
  if (!parsed.success) problems.push(...formatIssues(parsed.error));
  // Plain arguments end up in user-data and in the stack's state, readable by whoever can read those.
  for (const path of urlCredentialPaths(plain).filter((p) => !problems.some((line) => line.startsWith(`${p}:`)))) {
    problems.push(
      `${path}: must not carry credentials ("scheme://user:***@host"): plain arguments are written into user-data and the stack's state; use a proxy or endpoint that needs none (allowlisted by address), or an identity the VPC grants`,
    );
  }

  if (typeof vpcId === "string" && !/^vpc-[0-9a-f]{8,17}$/.test(vpcId))
    problems.push(`vpcId: must be a VPC ID such as "vpc-0123456789abcdef0" (got ${showValue(vpcId)})`);
  if (vpcId === undefined) problems.push("vpcId: is required (a Network's vpcId, or an existing VPC's ID)");
  if (subnetIds === undefined)
    problems.push("subnetIds: is required (a Network's privateSubnetIds, or existing subnet IDs)");
  if (Array.isArray(subnetIds)) {
    if (subnetIds.length === 0) problems.push("subnetIds: needs at least one subnet");
    subnetIds.forEach((id, index) => {
      if (typeof id === "string" && !/^subnet-[0-9a-f]{8,17}$/.test(id))
        problems.push(
          `subnetIds[${index}]: must be a subnet ID such as "subnet-0123456789abcdef0" (got ${showValue(id)})`,
        );
    });
    const plainIds = subnetIds.filter((id): id is string => typeof id === "string");
    if (new Set(plainIds).size !== plainIds.length)
      problems.push(`subnetIds: lists a subnet twice (got ${showValue(plainIds)})`);
  }

  // The credentials' shapes (components/shared/pool-tokens.ts): plain ones now, Outputs once known.
  const credentials: Record<string, unknown> = { ...rest };
  for (const key of secretKeys) {
    const value = rest[key];
    if (typeof value === "string") {
      // (An empty one is the schema's to refuse, as "required".)
      const problem = value === "" ? undefined : poolTokenProblem(role, key, value);
      if (problem) problems.push(`${key}: ${problem}`);
    } else if (value !== undefined) {
      credentials[key] = pulumi.output(value as pulumi.Input<string>).apply((text) => {
        const problem = poolTokenProblem(role, key, text);
        if (problem) throw new InvalidArgumentsError(component, name, [`${key}: ${problem}`]);
        return text;
      });
    }
  }
  const secretsCheck = checkSecrets(
    component,
    name,
    role,
    credentials,
    "existingSecretArn",
    (plain as { existingSecretArn?: unknown }).existingSecretArn !== undefined,
  );
  problems.push(...secretsCheck.problems);
  if (problems.length > 0 || !parsed.success) throw new InvalidArgumentsError(component, name, problems);
  const secretEnv = secretsCheck.secretEnv();
  return { args: parsed.data, secretEnv };
}
