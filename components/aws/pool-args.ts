import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import type { RoleName } from "../../agent/config/roles";
import { checkSecrets } from "../shared/secrets";
import { secretSettings } from "../../agent/config/env";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { architectureOf, instanceTypeProblem } from "./instance-types";
import { formatIssues, InvalidArgumentsError } from "../shared/validation";
import { sharedPoolShape } from "../shared/pool-args";

/** The retention periods CloudWatch Logs accepts. */
export const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] as const;

export const NODE_MAJORS = [22, 24] as const;

const arnOf = (service: string, resource: string, what: string) =>
  z.string().regex(new RegExp(`^arn:aws[a-z-]*:${service}:[a-z0-9-]*:[0-9]{12}:${resource}`), { error: `must be the ARN of ${what}` });

export const kmsKeyArn = arnOf("kms", "(key|alias)/", "a KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID)");

export const instanceType = z.string().superRefine((type, ctx) => {
  const problem = instanceTypeProblem(type);
  if (problem) ctx.addIssue({ code: "custom", message: problem, input: type });
});

/** An IAM statement a user adds to the instance role. Wildcard actions are refused. */
const policyStatement = z.strictObject({
  Sid: z.string().regex(/^[A-Za-z0-9]*$/, { error: "must be letters and digits" }).optional(),
  Effect: z.enum(["Allow", "Deny"]),
  Action: z.union([z.string(), z.array(z.string()).min(1)]).refine(
    (action) => ![action].flat().some((a) => a === "*" || a === "*:*"),
    { error: 'must name actions; "*" would grant every permission to the agents' },
  ),
  Resource: z.union([z.string(), z.array(z.string()).min(1)]),
  Condition: z.record(z.string(), z.record(z.string(), z.union([z.string(), z.array(z.string())]))).optional(),
});

/** Where instances get customCaCertificates: inline in user-data, or from an SSM parameter at boot. */
export const CA_DELIVERIES = ["userData", "ssmParameter"] as const;
/** The largest value an SSM parameter holds: 4,096 bytes on the standard tier, 8,192 on the advanced. */
const SSM_STANDARD_LIMIT = 4096;
export const SSM_PARAMETER_LIMIT = 8192;
/** The cheapest SSM tier that holds a value. */
export const ssmParameterTier = (value: string) => (Buffer.byteLength(value) <= SSM_STANDARD_LIMIT ? "Standard" : "Advanced");

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
        spotAllocationStrategy: z.enum(["price-capacity-optimized", "capacity-optimized", "lowest-price"]).default("price-capacity-optimized"),
      })
      .optional(),
    minSize: z.int().min(0).max(1000).default(1),
    maxSize: z.int().min(1).max(1000).default(3),
    desiredCapacity: z.int().min(0).max(1000).optional(),
    amiId: z.string().regex(/^ami-[0-9a-f]{8,17}$/, { error: 'must be an AMI ID such as "ami-0123456789abcdef0"' }).optional(),
    nodeMajor: z.union(NODE_MAJORS.map((n) => z.literal(n)), { error: `must be one of ${NODE_MAJORS.join(", ")} (Node.js LTS lines packaged for Amazon Linux 2023)` }).default(24),
    rootVolumeSizeGiB: z.int().min(8).max(16384).default(defaults.rootVolumeSizeGiB),
    volumeKmsKeyArn: kmsKeyArn.optional(),
    logRetentionDays: z
      .union(LOG_RETENTION_DAYS.map((n) => z.literal(n)), { error: `must be one of ${LOG_RETENTION_DAYS.join(", ")}` })
      .default(30),
    logKmsKeyArn: kmsKeyArn.optional(),
    secretKmsKeyArn: kmsKeyArn.optional(),
    existingSecretArn: arnOf("secretsmanager", "secret:", "a Secrets Manager secret").optional(),
    secretRecoveryWindowDays: z.int().min(7).max(30).default(7),
    permissionsBoundaryArn: z.string().regex(/^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy\//, { error: "must be the ARN of an IAM policy" }).optional(),
    extraPolicyStatements: z.array(policyStatement).default([]),
    ssmSessionManager: z.boolean().default(false),
    alarmActions: z.array(z.string().regex(/^arn:aws[a-z-]*:[a-z0-9-]+:/, { error: "must be an ARN (an SNS topic, for example)" })).default([]),
    egressCidrBlocks: z.array(z.cidrv4({ error: 'must be an IPv4 CIDR block such as "0.0.0.0/0"' })).min(1).default(["0.0.0.0/0"]),
    customCaCertificatesDelivery: z.enum(CA_DELIVERIES).default("userData"),
    launchTimeoutSeconds: z.int().min(60).max(7200).default(900),
    detailedMonitoring: z.boolean().default(false),
    ...sharedPoolShape(defaults),
    tags: z.record(z.string().regex(/^(?!aws:).{1,128}$/, { error: 'tag keys are 1-128 characters and may not start with "aws:"' }), z.string().max(256)).default({}),
  };
}

/** Sizes and types that only make sense together. */
export function checkCoreRelations(
  args: { minSize: number; maxSize: number; desiredCapacity?: number; instanceType: string; mixedInstances?: { instanceTypes: string[] }; customCaCertificates?: string; customCaCertificatesDelivery: string },
  ctx: z.RefinementCtx,
): void {
  if (args.minSize > args.maxSize) ctx.addIssue({ code: "custom", path: ["minSize"], input: args.minSize, message: `must not exceed maxSize (${args.maxSize})` });
  if (args.desiredCapacity !== undefined && (args.desiredCapacity < args.minSize || args.desiredCapacity > args.maxSize)) {
    ctx.addIssue({ code: "custom", path: ["desiredCapacity"], input: args.desiredCapacity, message: `must be between minSize (${args.minSize}) and maxSize (${args.maxSize})` });
  }
  if (args.customCaCertificatesDelivery === "ssmParameter") {
    const size = args.customCaCertificates === undefined ? 0 : Buffer.byteLength(args.customCaCertificates);
    if (size === 0) ctx.addIssue({ code: "custom", path: ["customCaCertificatesDelivery"], input: args.customCaCertificatesDelivery, message: 'is "ssmParameter" but customCaCertificates is not given' });
    if (size > SSM_PARAMETER_LIMIT) ctx.addIssue({ code: "custom", path: ["customCaCertificates"], input: `${size} bytes`, message: `is ${size} bytes; an SSM parameter holds at most ${SSM_PARAMETER_LIMIT}` });
  }
  const arch = architectureOf(args.instanceType);
  args.mixedInstances?.instanceTypes.forEach((type, index) => {
    if (instanceTypeProblem(type) === undefined && architectureOf(type) !== arch) {
      ctx.addIssue({ code: "custom", path: ["mixedInstances", "instanceTypes", index], input: type, message: `is ${architectureOf(type)} but instanceType "${args.instanceType}" is ${arch}: one AMI serves the whole group` });
    }
  });
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
export function validatePool<S extends z.ZodType>(
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

  const parsed = schema.safeParse(plain, { reportInput: true });
  if (!parsed.success) problems.push(...formatIssues(parsed.error));

  if (typeof vpcId === "string" && !/^vpc-[0-9a-f]{8,17}$/.test(vpcId)) problems.push(`vpcId: must be a VPC ID such as "vpc-0123456789abcdef0" (got ${JSON.stringify(vpcId)})`);
  if (vpcId === undefined) problems.push("vpcId: is required (a Network's vpcId, or an existing VPC's ID)");
  if (subnetIds === undefined) problems.push("subnetIds: is required (a Network's privateSubnetIds, or existing subnet IDs)");
  if (Array.isArray(subnetIds)) {
    if (subnetIds.length === 0) problems.push("subnetIds: needs at least one subnet");
    subnetIds.forEach((id, index) => {
      if (typeof id === "string" && !/^subnet-[0-9a-f]{8,17}$/.test(id)) problems.push(`subnetIds[${index}]: must be a subnet ID such as "subnet-0123456789abcdef0" (got ${JSON.stringify(id)})`);
    });
    const plainIds = subnetIds.filter((id): id is string => typeof id === "string");
    if (new Set(plainIds).size !== plainIds.length) problems.push(`subnetIds: lists a subnet twice (got ${JSON.stringify(plainIds)})`);
  }

  const secretsCheck = checkSecrets(component, name, role, rest, "existingSecretArn", (plain as { existingSecretArn?: unknown }).existingSecretArn !== undefined);
  problems.push(...secretsCheck.problems);
  if (problems.length > 0 || !parsed.success) throw new InvalidArgumentsError(component, name, problems);
  const secretEnv = secretsCheck.secretEnv();
  return { args: parsed.data, secretEnv };
}
