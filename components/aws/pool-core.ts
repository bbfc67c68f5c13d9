import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";
import type { InstanceConfig } from "../../agent/config/instance";
import type { RoleName } from "../../agent/config/roles";
import { runtimeBundle } from "../shared/bundles";
import { architectureOf } from "./instance-types";
import { ssmParameterTier, type PoolPlacement } from "./pool-args";
import { renderUserData, type UserDataFile, type UserDataSpec } from "./userdata";

/** The core arguments after validation (see poolCoreShape). */
export interface CoreArgs {
  instanceType: string;
  mixedInstances?: { instanceTypes: string[]; onDemandBaseCapacity: number; onDemandPercentageAboveBaseCapacity: number; spotAllocationStrategy: string };
  minSize: number;
  maxSize: number;
  desiredCapacity?: number;
  amiId?: string;
  nodeMajor: number;
  rootVolumeSizeGiB: number;
  volumeKmsKeyArn?: string;
  logRetentionDays: number;
  logKmsKeyArn?: string;
  secretKmsKeyArn?: string;
  existingSecretArn?: string;
  secretRecoveryWindowDays: number;
  permissionsBoundaryArn?: string;
  extraPolicyStatements: PolicyStatement[];
  ssmSessionManager: boolean;
  alarmActions: string[];
  egressCidrBlocks: string[];
  customCaCertificates?: string;
  customCaCertificatesDelivery: "userData" | "ssmParameter";
  drainTimeoutSeconds: number;
  launchTimeoutSeconds: number;
  detailedMonitoring: boolean;
  tags: Record<string, string>;
  httpsProxy?: string;
}

export interface PolicyStatement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, Record<string, string | string[]>>;
}

export interface PoolSpec extends PoolPlacement {
  /** The component's type name, for tags and messages. */
  component: string;
  role: RoleName;
  core: CoreArgs;
  /** Non-secret settings as the role's variables. */
  settingsEnv: Record<string, string>;
  /** Secret settings as the role's variables, a Pulumi secret; absent with existingSecretArn. */
  secretEnv?: pulumi.Output<Record<string, string>>;
  docker: boolean;
  gvisor: boolean;
  registryMirror?: string;
  noProxy?: string;
  runtimeSandbox?: { uids: string };
  extraFiles?: UserDataFile[];
}

/** What every pool exposes. */
export interface PoolOutputs {
  autoScalingGroupName: pulumi.Output<string>;
  roleArn: pulumi.Output<string>;
  secretArn: pulumi.Output<string>;
  logGroupName: pulumi.Output<string>;
  securityGroupId: pulumi.Output<string>;
  launchTemplateId: pulumi.Output<string>;
}

export const LAUNCH_HOOK = "agent-connected";
export const TERMINATION_HOOK = "agent-drained";

/** The SSM parameter holding a pool's CA certificates (customCaCertificatesDelivery "ssmParameter"). */
export const caParameterName = (autoScalingGroupName: string) => `/agentpools/${autoScalingGroupName}/ca-certificates`;

/** The AL2023 image parameter for an architecture. */
export const al2023Parameter = (arch: string) => `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${arch}`;

/** The ARN pattern of an Auto Scaling group by name (its ARN also carries a generated ID). */
export const autoScalingGroupArn = (partition: string, region: string, account: string, group: string) =>
  `arn:${partition}:autoscaling:${region}:${account}:autoScalingGroup:*:autoScalingGroupName/${group}`;

/**
 * The instance role's policy: read this pool's secret (and CA parameter, if it has one),
 * write this pool's logs, complete lifecycle actions of this pool's group. Nothing else,
 * unless the user adds statements.
 */
export function poolPolicyDocument(input: {
  secretArn: string;
  caParameterArn?: string;
  secretKmsKeyArn?: string;
  region: string;
  logGroupArn: string;
  autoScalingGroupArn: string;
  extraStatements?: PolicyStatement[];
}): { Version: string; Statement: PolicyStatement[] } {
  const statements: PolicyStatement[] = [
    { Sid: "ReadPoolSecret", Effect: "Allow", Action: "secretsmanager:GetSecretValue", Resource: input.secretArn },
    { Sid: "WritePoolLogs", Effect: "Allow", Action: ["logs:CreateLogStream", "logs:PutLogEvents"], Resource: `${input.logGroupArn}:log-stream:*` },
    {
      Sid: "CompletePoolLifecycleActions",
      Effect: "Allow",
      Action: ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
      Resource: input.autoScalingGroupArn,
    },
  ];
  if (input.caParameterArn) statements.push({ Sid: "ReadPoolCaCertificates", Effect: "Allow", Action: "ssm:GetParameter", Resource: input.caParameterArn });
  if (input.secretKmsKeyArn) {
    statements.push({
      Sid: "DecryptPoolSecret",
      Effect: "Allow",
      Action: "kms:Decrypt",
      Resource: input.secretKmsKeyArn,
      Condition: { StringEquals: { "kms:ViaService": `secretsmanager.${input.region}.amazonaws.com` } },
    });
  }
  return { Version: "2012-10-17", Statement: [...statements, ...(input.extraStatements ?? [])] };
}

/** Placeholders as long as real values get, to check user-data size before anything exists. */
const WORST_CASE_AWS = {
  secretArn: `arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:${"x".repeat(120)}-AbCdEf`,
  autoScalingGroupName: "x".repeat(80),
  launchHookName: LAUNCH_HOOK,
  terminationHookName: TERMINATION_HOOK,
  logGroupName: `/agentpools/${"x".repeat(80)}`,
};
const WORST_CASE_REGION = "ap-southeast-4";

/** The user-data spec of a pool, given where its AWS resources are. */
export function poolUserDataSpec(name: string, spec: PoolSpec, awsConfig: NonNullable<InstanceConfig["aws"]>, region: string): UserDataSpec {
  const caFromParameter = spec.core.customCaCertificatesDelivery === "ssmParameter";
  return {
    pool: name,
    role: spec.role,
    bundle: runtimeBundle(spec.role),
    config: { role: spec.role, pool: name, env: spec.settingsEnv, drainTimeoutSeconds: spec.core.drainTimeoutSeconds, aws: awsConfig },
    nodeMajor: spec.core.nodeMajor,
    docker: spec.docker,
    gvisor: spec.gvisor,
    registryMirror: spec.registryMirror,
    caCertificates: caFromParameter ? undefined : spec.core.customCaCertificates,
    caCertificatesParameter: caFromParameter ? { name: caParameterName(awsConfig.autoScalingGroupName), region } : undefined,
    httpsProxy: spec.core.httpsProxy,
    noProxy: spec.noProxy,
    extraFiles: spec.extraFiles,
    stopTimeoutSeconds: spec.core.drainTimeoutSeconds + 30,
    runtimeSandbox: spec.runtimeSandbox,
  };
}

/** Refuse, before anything is created, a configuration whose user-data cannot fit. */
export function checkUserDataSize(name: string, spec: PoolSpec): number {
  return renderUserData(poolUserDataSpec(name, spec, WORST_CASE_AWS, WORST_CASE_REGION)).length;
}

/** Create the resources every pool has, as children of `parent`. */
export function createPool(parent: pulumi.ComponentResource, name: string, spec: PoolSpec): PoolOutputs {
  const opts: pulumi.CustomResourceOptions = { parent };
  const invokeOpts: pulumi.InvokeOutputOptions = { parent };
  const core = spec.core;
  const tags = { ...core.tags, "agentpools:pool": name, "agentpools:component": spec.component };

  const partition = aws.getPartitionOutput({}, invokeOpts).partition;
  const region = aws.getRegionOutput({}, invokeOpts).region;
  const account = aws.getCallerIdentityOutput({}, invokeOpts).accountId;

  // A fixed name, known before the group exists, lets the policy, the log group and the
  // instances' configuration refer to the group without a dependency cycle.
  const suffix = new random.RandomId(`${name}-suffix`, { byteLength: 4 }, opts);
  const groupName = pulumi.interpolate`agentpools-${name}-${suffix.hex}`;

  const securityGroup = new aws.ec2.SecurityGroup(
    `${name}-agents`,
    {
      description: `agentpools ${spec.component} ${name}: outbound only`,
      vpcId: spec.vpcId,
      ingress: [],
      egress: [{ description: "Outbound to the gateway, the VCS and package mirrors", protocol: "-1", fromPort: 0, toPort: 0, cidrBlocks: core.egressCidrBlocks }],
      tags,
    },
    opts,
  );

  const logGroup = new aws.cloudwatch.LogGroup(
    `${name}-logs`,
    { name: pulumi.interpolate`/agentpools/${groupName}`, retentionInDays: core.logRetentionDays, kmsKeyId: core.logKmsKeyArn, tags },
    opts,
  );

  let secretArn: pulumi.Output<string>;
  if (core.existingSecretArn) {
    secretArn = pulumi.output(core.existingSecretArn);
  } else {
    const secret = new aws.secretsmanager.Secret(
      `${name}-credentials`,
      {
        description: `agentpools ${spec.component} ${name}: the agents' credentials`,
        kmsKeyId: core.secretKmsKeyArn,
        recoveryWindowInDays: core.secretRecoveryWindowDays,
        tags,
      },
      opts,
    );
    new aws.secretsmanager.SecretVersion(
      `${name}-credentials`,
      { secretId: secret.id, secretString: pulumi.secret((spec.secretEnv as pulumi.Output<Record<string, string>>).apply((env) => JSON.stringify(env))) },
      opts,
    );
    secretArn = secret.arn;
  }

  // Certificates are public: a plain String parameter, readable only by this pool's role.
  const caParameter =
    core.customCaCertificatesDelivery === "ssmParameter" && core.customCaCertificates
      ? new aws.ssm.Parameter(
          `${name}-ca-certificates`,
          {
            name: groupName.apply(caParameterName),
            description: `agentpools ${spec.component} ${name}: CA certificates the instances trust`,
            type: "String",
            tier: ssmParameterTier(core.customCaCertificates),
            value: core.customCaCertificates,
            tags,
          },
          opts,
        )
      : undefined;

  const role = new aws.iam.Role(
    `${name}-instance`,
    {
      description: `agentpools ${spec.component} ${name}: instance role`,
      assumeRolePolicy: JSON.stringify({
        Version: "2012-10-17",
        Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }],
      }),
      permissionsBoundary: core.permissionsBoundaryArn,
      tags,
    },
    opts,
  );
  new aws.iam.RolePolicy(
    `${name}-instance`,
    {
      role: role.name,
      policy: pulumi
        .all([secretArn, logGroup.arn, partition, region, account, groupName, caParameter?.arn])
        .apply(([secret, logGroupArn, part, reg, acct, group, caParameterArn]) =>
          JSON.stringify(
            poolPolicyDocument({
              secretArn: secret,
              caParameterArn,
              secretKmsKeyArn: core.secretKmsKeyArn,
              region: reg,
              logGroupArn,
              autoScalingGroupArn: autoScalingGroupArn(part, reg, acct, group),
              extraStatements: core.extraPolicyStatements,
            }),
          ),
        ),
    },
    opts,
  );
  if (core.ssmSessionManager) {
    new aws.iam.RolePolicyAttachment(
      `${name}-ssm`,
      { role: role.name, policyArn: pulumi.interpolate`arn:${partition}:iam::aws:policy/AmazonSSMManagedInstanceCore` },
      opts,
    );
  }
  const profile = new aws.iam.InstanceProfile(`${name}-instance`, { role: role.name, tags }, opts);

  const imageId = core.amiId ?? aws.ssm.getParameterOutput({ name: al2023Parameter(architectureOf(core.instanceType)) }, invokeOpts).value;
  const userData = pulumi
    .all([secretArn, groupName, logGroup.name, region])
    .apply(([secret, group, logs, reg]) =>
      renderUserData(
        poolUserDataSpec(name, spec, { secretArn: secret, autoScalingGroupName: group, launchHookName: LAUNCH_HOOK, terminationHookName: TERMINATION_HOOK, logGroupName: logs }, reg),
      ).toString("base64"),
    );

  const launchTemplate = new aws.ec2.LaunchTemplate(
    `${name}-agents`,
    {
      description: `agentpools ${spec.component} ${name}`,
      imageId,
      instanceType: core.instanceType,
      iamInstanceProfile: { arn: profile.arn },
      metadataOptions: { httpEndpoint: "enabled", httpTokens: "required", httpPutResponseHopLimit: 1, instanceMetadataTags: "disabled" },
      blockDeviceMappings: [
        {
          deviceName: "/dev/xvda",
          ebs: { volumeSize: core.rootVolumeSizeGiB, volumeType: "gp3", encrypted: "true", kmsKeyId: core.volumeKmsKeyArn, deleteOnTermination: "true" },
        },
      ],
      networkInterfaces: [{ deviceIndex: 0, associatePublicIpAddress: "false", deleteOnTermination: "true", securityGroups: [securityGroup.id] }],
      monitoring: { enabled: core.detailedMonitoring },
      userData,
      updateDefaultVersion: true,
      tagSpecifications: [
        { resourceType: "instance", tags: { ...tags, Name: `agentpools-${name}` } },
        { resourceType: "volume", tags },
      ],
      tags,
    },
    opts,
  );

  const templateRef = { id: launchTemplate.id, version: launchTemplate.latestVersion.apply((v) => `${v}`) };
  const group = new aws.autoscaling.Group(
    `${name}-agents`,
    {
      name: groupName,
      vpcZoneIdentifiers: spec.subnetIds,
      minSize: core.minSize,
      maxSize: core.maxSize,
      desiredCapacity: core.desiredCapacity,
      ...(core.mixedInstances
        ? {
            capacityRebalance: core.mixedInstances.onDemandPercentageAboveBaseCapacity < 100,
            mixedInstancesPolicy: {
              launchTemplate: {
                launchTemplateSpecification: { launchTemplateId: templateRef.id, version: templateRef.version },
                overrides: [core.instanceType, ...core.mixedInstances.instanceTypes.filter((t) => t !== core.instanceType)].map((instanceType) => ({ instanceType })),
              },
              instancesDistribution: {
                onDemandBaseCapacity: core.mixedInstances.onDemandBaseCapacity,
                onDemandPercentageAboveBaseCapacity: core.mixedInstances.onDemandPercentageAboveBaseCapacity,
                spotAllocationStrategy: core.mixedInstances.spotAllocationStrategy,
              },
            },
          }
        : { launchTemplate: templateRef }),
      healthCheckType: "EC2",
      healthCheckGracePeriod: 300,
      // Hooks given at creation hold the very first instances too.
      initialLifecycleHooks: [
        { name: LAUNCH_HOOK, lifecycleTransition: "autoscaling:EC2_INSTANCE_LAUNCHING", defaultResult: "ABANDON", heartbeatTimeout: core.launchTimeoutSeconds },
        { name: TERMINATION_HOOK, lifecycleTransition: "autoscaling:EC2_INSTANCE_TERMINATING", defaultResult: "CONTINUE", heartbeatTimeout: core.drainTimeoutSeconds + 60 },
      ],
      instanceRefresh: { strategy: "Rolling", preferences: { minHealthyPercentage: 90, skipMatching: true } },
      enabledMetrics: ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances", "GroupTerminatingInstances"],
      metricsGranularity: "1Minute",
      terminationPolicies: ["OldestLaunchTemplate", "OldestInstance"],
      waitForCapacityTimeout: `${core.launchTimeoutSeconds + 300}s`,
      tags: Object.entries({ ...tags, Name: `agentpools-${name}` }).map(([key, value]) => ({ key, value, propagateAtLaunch: true })),
    },
    // Instances read the CA parameter at boot: it exists before the first one starts.
    { ...opts, dependsOn: caParameter ? [logGroup, caParameter] : [logGroup] },
  );

  createAlarms(name, group.name, logGroup.name, core.alarmActions, tags, opts);

  return {
    autoScalingGroupName: group.name,
    roleArn: role.arn,
    secretArn,
    logGroupName: logGroup.name,
    securityGroupId: securityGroup.id,
    launchTemplateId: launchTemplate.id,
  };
}

/** Alarms an operator wants: capacity wanted but no connected agent, and runtime errors. */
function createAlarms(name: string, group: pulumi.Output<string>, logGroupName: pulumi.Output<string>, actions: string[], tags: Record<string, string>, opts: pulumi.CustomResourceOptions): void {
  const groupMetric = (metricName: string, stat: string) => ({
    namespace: "AWS/AutoScaling",
    metricName,
    dimensions: { AutoScalingGroupName: group },
    period: 60,
    stat,
  });
  // An instance becomes InService only after its agent connected (the launch hook), so
  // InService is the count of connected agents.
  new aws.cloudwatch.MetricAlarm(
    `${name}-no-agents`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: capacity is wanted but no agent has been connected for 10 minutes (group ${group})`,
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      threshold: 1,
      evaluationPeriods: 10,
      datapointsToAlarm: 10,
      treatMissingData: "notBreaching",
      metricQueries: [
        { id: "desired", metric: groupMetric("GroupDesiredCapacity", "Maximum"), returnData: false },
        { id: "inservice", metric: groupMetric("GroupInServiceInstances", "Minimum"), returnData: false },
        { id: "unserved", expression: "IF(desired > 0 AND inservice < 1, 1, 0)", label: "Capacity wanted, no agent", returnData: true },
      ],
      alarmActions: actions,
      okActions: actions,
      tags,
    },
    opts,
  );

  const metricName = pulumi.interpolate`RuntimeErrors-${group}`;
  new aws.cloudwatch.LogMetricFilter(
    `${name}-errors`,
    {
      logGroupName,
      pattern: '{ $.level = "error" }',
      metricTransformation: { name: metricName, namespace: "agentpools", value: "1", defaultValue: "0" },
    },
    opts,
  );
  new aws.cloudwatch.MetricAlarm(
    `${name}-runtime-errors`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: the runtime logged 5 or more errors in 5 minutes (log group ${logGroupName})`,
      namespace: "agentpools",
      metricName,
      statistic: "Sum",
      period: 300,
      evaluationPeriods: 1,
      threshold: 5,
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      treatMissingData: "notBreaching",
      alarmActions: actions,
      okActions: actions,
      tags,
    },
    opts,
  );
}
