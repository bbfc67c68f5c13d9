import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";
import { terminationHeartbeatTimeout, type InstanceConfig } from "../../agent/config/instance";
import { METRICS, METRICS_NAMESPACE, METRICS_PERIOD_SECONDS, POOL_DIMENSION } from "../../agent/config/metrics";
import type { RoleName } from "../../agent/config/roles";
import { runtimeBundle } from "../shared/bundles";
import { ec2Variant } from "../../agent/config/variants";
import { InvalidArgumentsError } from "../shared/validation";
import { architectureOf } from "./instance-types";
import {
  arnPlaceProblems,
  givenArns,
  noise,
  SSM_PARAMETER_LIMIT,
  ssmParameterTier,
  WORST_CASE,
  type CoreArgs,
  type PoolPlacement,
} from "./pool-args";
import { autoScalingGroupArn, poolPolicyDocument } from "./policy";
import {
  BOOT_LOG_STREAM,
  renderConfigParameterValue,
  renderUserData,
  USER_DATA_BUDGET,
  UserDataTooLargeError,
  type UserDataFile,
  type UserDataSpec,
} from "./userdata";
import {
  busyShareQueries,
  dashboardBody,
  dashboardName,
  fromZeroQueries,
  neverConnectPeriods,
  PROTECTION_LINGER_SECONDS,
  type MetricQuery,
} from "./scaling";

export type { CoreArgs } from "./pool-args";

export interface PoolSpec extends PoolPlacement {
  /** The component's type name, for tags and messages. */
  component: string;
  role: RoleName;
  core: CoreArgs;
  /** Non-secret settings by key, typed, as the role's zod schema gave them (plainSettings). */
  settings: Record<string, unknown>;
  /** Secret settings as the role's variables, a Pulumi secret; absent with existingSecretArn. */
  secretEnv?: pulumi.Output<Record<string, string>>;
  docker: boolean;
  gvisor: boolean;
  registryMirror?: string;
  noProxy?: string;
  runtimeSandbox?: { uids: string };
  extraFiles?: UserDataFile[];
  /** Where instances get the role's configuration (see configDelivery); in user-data unless set. */
  configDelivery?: ConfigDelivery;
}

/** The role's configuration travels in user-data, or, when it would not fit there, in a parameter of the pool. */
export type ConfigDelivery = "userData" | "ssmParameter";

/** What every pool exposes. */
export interface PoolOutputs {
  autoScalingGroupName: pulumi.Output<string>;
  roleArn: pulumi.Output<string>;
  secretArn: pulumi.Output<string>;
  logGroupName: pulumi.Output<string>;
  securityGroupId: pulumi.Output<string>;
  launchTemplateId: pulumi.Output<string>;
  /** The CloudWatch dashboard of the pool. */
  dashboardName: pulumi.Output<string>;
}

export const LAUNCH_HOOK = "agent-connected";
export const TERMINATION_HOOK = "agent-drained";

/** A pool's lifecycle hooks: held at launch until the agent connects, at termination until it drains. */
export function lifecycleHooks(core: Pick<CoreArgs, "launchTimeoutSeconds" | "drainTimeoutSeconds">) {
  return [
    {
      name: LAUNCH_HOOK,
      lifecycleTransition: "autoscaling:EC2_INSTANCE_LAUNCHING",
      defaultResult: "ABANDON",
      heartbeatTimeout: core.launchTimeoutSeconds,
    },
    {
      name: TERMINATION_HOOK,
      lifecycleTransition: "autoscaling:EC2_INSTANCE_TERMINATING",
      defaultResult: "CONTINUE",
      heartbeatTimeout: terminationHeartbeatTimeout(core.drainTimeoutSeconds),
    },
  ];
}

/**
 * Instance refresh (a new launch template version) and replacement of unhealthy instances:
 * launch first, terminate once the new instance is InService (its agent connected), so a
 * one-instance pool never drops to none. AWS allows a maximum of 100-200% and at most 100
 * points between the two.
 */
export const REPLACEMENT = { minHealthyPercentage: 100, maxHealthyPercentage: 200 } as const;

/** The SSM parameter holding a pool's CA certificates (customCaCertificatesDelivery "ssmParameter"). */
export const caParameterName = (autoScalingGroupName: string) => `/agentpools/${autoScalingGroupName}/ca-certificates`;
/** The SSM parameter holding a pool's configuration files, when they do not fit in user-data. */
export const configParameterName = (autoScalingGroupName: string) => `/agentpools/${autoScalingGroupName}/config`;
/** The version the size check assumes: SSM counts a parameter's versions up, one per change. */
const WORST_CASE_VERSION = 999_999;

/** The AL2023 image parameter for an architecture. */
export const al2023Parameter = (arch: string) =>
  `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${arch}`;

/** Where a pool's AWS resources are, once they exist (or at their longest, before). */
export interface PoolPlace {
  secretArn: string;
  autoScalingGroupName: string;
  logGroupName: string;
  region: string;
  /** The partition's DNS suffix: amazonaws.com, amazonaws.com.cn, ... */
  dnsSuffix: string;
}

/**
 * What goes around the proxy: the user's list and, unless told otherwise, every AWS API of
 * the pool's region (Secrets Manager, CloudWatch Logs, Auto Scaling, SSM, ECR, S3), which the
 * VPC reaches through its endpoints or its route. The entry is a ".domain" suffix, a form the
 * runtime, Node, Docker and curl all read.
 */
export function poolNoProxy(spec: PoolSpec, place: Pick<PoolPlace, "region" | "dnsSuffix">): string | undefined {
  const aws = spec.core.httpsProxy && !spec.core.awsApisViaProxy ? `.${place.region}.${place.dnsSuffix}` : undefined;
  return [spec.noProxy, aws].filter(Boolean).join(",") || undefined;
}

/**
 * The user-data spec of a pool, given where its AWS resources are (and, when its configuration
 * is in a parameter, that parameter's version).
 */
export function poolUserDataSpec(name: string, spec: PoolSpec, place: PoolPlace, configVersion = 0): UserDataSpec {
  const core = spec.core;
  const caFromParameter = core.customCaCertificatesDelivery === "ssmParameter";
  const awsConfig: NonNullable<InstanceConfig["aws"]> = {
    secretArn: place.secretArn,
    autoScalingGroupName: place.autoScalingGroupName,
    launchHookName: LAUNCH_HOOK,
    terminationHookName: TERMINATION_HOOK,
    heartbeatSeconds: Math.floor(terminationHeartbeatTimeout(core.drainTimeoutSeconds) / 3),
    metricsSeconds: METRICS_PERIOD_SECONDS,
    unhealthyAfterSeconds: core.unhealthyAfterDisconnectedSeconds,
    // A worker pool's drain covers its run timeout: no stretch of real work outlasts it.
    protectSeconds: core.drainTimeoutSeconds,
    lingerSeconds: PROTECTION_LINGER_SECONDS[spec.role],
  };
  return {
    pool: name,
    role: spec.role,
    // The variant for EC2 and the pool's executor or vendor: what the pool does not use is left out. The instance
    // file names the same one, from the same arguments (test/bundle-variants.test.ts): the bundle does not check it.
    bundle: runtimeBundle(spec.role, ec2Variant(spec.role, core as { executor?: string; vendor?: string })),
    config: {
      role: spec.role,
      pool: name,
      settings: spec.settings,
      drainTimeoutSeconds: core.drainTimeoutSeconds,
      aws: awsConfig,
    },
    nodeMajor: core.nodeMajor,
    docker: spec.docker,
    gvisor: spec.gvisor,
    architecture: architectureOf(core.instanceType),
    region: place.region,
    logGroupName: place.logGroupName,
    registryMirror: spec.registryMirror,
    caCertificates: caFromParameter ? undefined : core.customCaCertificates,
    caCertificatesParameter: caFromParameter ? { name: caParameterName(place.autoScalingGroupName) } : undefined,
    configParameter:
      spec.configDelivery === "ssmParameter"
        ? { name: configParameterName(place.autoScalingGroupName), version: configVersion }
        : undefined,
    httpsProxy: core.httpsProxy,
    noProxy: poolNoProxy(spec, place),
    awsApisViaProxy: core.awsApisViaProxy,
    extraFiles: spec.extraFiles,
    stopTimeoutSeconds: core.drainTimeoutSeconds + 30,
    runtimeSandbox: spec.runtimeSandbox,
  };
}

/**
 * Where a pool's resources will be, at their longest: under its own name, in the region and
 * partition with the longest names, with random parts as hard to compress as real ones.
 */
export function worstCasePlace(name: string, core: CoreArgs): PoolPlace {
  const group = `agentpools-${name}-${noise(8, "suffix").toLowerCase()}`;
  return {
    secretArn:
      core.existingSecretArn ??
      `arn:${WORST_CASE.partition}:secretsmanager:${WORST_CASE.region}:${WORST_CASE.account}:secret:${name}-credentials-${noise(7, "name")}-${noise(6, "arn")}`,
    autoScalingGroupName: group,
    logGroupName: `/agentpools/${group}`,
    region: WORST_CASE.region,
    dnsSuffix: WORST_CASE.dnsSuffix,
  };
}

/**
 * Where the role's configuration goes: in user-data if it fits there within the budget (three quarters of
 * EC2's limit) at the pool's worst case, else in a parameter. Decided from the arguments alone, so the same
 * arguments always choose the same.
 */
export function configDelivery(name: string, spec: PoolSpec): ConfigDelivery {
  try {
    const inline = poolUserDataSpec(name, { ...spec, configDelivery: "userData" }, worstCasePlace(name, spec.core));
    return renderUserData(inline).length <= USER_DATA_BUDGET ? "userData" : "ssmParameter";
  } catch (error) {
    if (error instanceof UserDataTooLargeError) return "ssmParameter";
    throw error;
  }
}

/** Refuse, before anything is created, a configuration whose user-data (or config parameter) cannot fit. */
export function checkUserDataSize(name: string, spec: PoolSpec): number {
  const userData = poolUserDataSpec(name, spec, worstCasePlace(name, spec.core), WORST_CASE_VERSION);
  const size = renderUserData(userData).length;
  if (userData.configParameter) {
    const value = Buffer.byteLength(renderConfigParameterValue(userData));
    if (value > SSM_PARAMETER_LIMIT) {
      throw new InvalidArgumentsError(spec.component, name, [
        `(arguments): the role's configuration does not fit in user-data, and packed it is ${value} bytes, over the ${SSM_PARAMETER_LIMIT} an SSM parameter holds; shorten it (the run initialization policy and lists of variables, mounts and tags count in full)`,
      ]);
    }
  }
  return size;
}

/** Create the resources every pool has, as children of `parent`. */
export function createPool(parent: pulumi.ComponentResource, name: string, spec: PoolSpec): PoolOutputs {
  const opts: pulumi.CustomResourceOptions = { parent };
  const invokeOpts: pulumi.InvokeOutputOptions = { parent };
  const core = spec.core;
  const tags = { ...core.tags, "agentpools:pool": name, "agentpools:component": spec.component };

  const partition = aws.getPartitionOutput({}, invokeOpts);
  const region = aws.getRegionOutput({}, invokeOpts).region;
  const account = aws.getCallerIdentityOutput({}, invokeOpts).accountId;
  // The ARNs given must be of this partition and region: checked once both are known, at preview.
  const placed = pulumi.all([partition.partition, region]).apply(([part, reg]) => {
    const problems = arnPlaceProblems(givenArns(core), { partition: part, region: reg });
    if (problems.length > 0) throw new InvalidArgumentsError(spec.component, name, problems);
    return part;
  });

  // A fixed name, known before the group exists, lets the policy, the log group and the
  // instances' configuration refer to the group without a dependency cycle.
  const suffix = new random.RandomId(`${name}-suffix`, { byteLength: 4 }, opts);
  const groupName = pulumi.interpolate`agentpools-${name}-${suffix.hex}`;

  const securityGroup = new aws.ec2.SecurityGroup(
    `${name}-agents`,
    {
      // Not Pulumi's auto-name ("<name>-agents-..."): AWS refuses a group name starting "sg-".
      namePrefix: `agentpools-${name}-agents-`,
      description: `agentpools ${spec.component} ${name}: outbound only`,
      vpcId: spec.vpcId,
      ingress: [],
      egress: [
        {
          description: "Outbound to the gateway, the VCS and package mirrors",
          protocol: "-1",
          fromPort: 0,
          toPort: 0,
          cidrBlocks: core.egressCidrBlocks,
        },
      ],
      tags,
    },
    opts,
  );

  const logGroup = new aws.cloudwatch.LogGroup(
    `${name}-logs`,
    {
      name: pulumi.interpolate`/agentpools/${groupName}`,
      retentionInDays: core.logRetentionDays,
      kmsKeyId: core.logKmsKeyArn,
      tags,
    },
    opts,
  );
  // Where a boot script that fails for good says why, before any runtime exists to make a stream.
  const bootLog = new aws.cloudwatch.LogStream(
    `${name}-boot`,
    { logGroupName: logGroup.name, name: BOOT_LOG_STREAM },
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
      {
        secretId: secret.id,
        secretString: pulumi.secret(
          (spec.secretEnv as pulumi.Output<Record<string, string>>).apply((env) => JSON.stringify(env)),
        ),
      },
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

  // The configuration when it does not fit in user-data: not secret (the credentials are in
  // the secret), a String parameter only this pool's role may read. Each change makes a
  // version, which the user-data pins: a new launch template, and an instance refresh.
  const place = pulumi
    .all([secretArn, groupName, logGroup.name, region, partition.dnsSuffix])
    .apply(([secret, group, logs, reg, dnsSuffix]): PoolPlace => ({
      secretArn: secret,
      autoScalingGroupName: group,
      logGroupName: logs,
      region: reg,
      dnsSuffix,
    }));
  const configParameter =
    spec.configDelivery === "ssmParameter"
      ? createConfigParameter(name, spec, place, groupName, tags, opts)
      : undefined;

  const role = new aws.iam.Role(
    `${name}-instance`,
    {
      description: `agentpools ${spec.component} ${name}: instance role`,
      // EC2's service principal as the partition spells it.
      assumeRolePolicy: aws.getServicePrincipalOutput({ serviceName: "ec2" }, invokeOpts).name.apply((principal) =>
        JSON.stringify({
          Version: "2012-10-17",
          Statement: [{ Effect: "Allow", Principal: { Service: principal }, Action: "sts:AssumeRole" }],
        }),
      ),
      permissionsBoundary: core.permissionsBoundaryArn,
      tags,
    },
    opts,
  );
  const parameterArns = pulumi
    .all([caParameter?.arn, configParameter?.arn])
    .apply((arns) => arns.filter((arn): arn is string => arn !== undefined));
  const policy = new aws.iam.RolePolicy(
    `${name}-instance`,
    {
      role: role.name,
      policy: pulumi
        .all([secretArn, logGroup.arn, placed, partition.dnsSuffix, region, account, groupName, parameterArns])
        .apply(([secret, logGroupArn, part, dnsSuffix, reg, acct, group, parameters]) =>
          JSON.stringify(
            poolPolicyDocument({
              secretArn: secret,
              parameterArns: parameters,
              secretKmsKeyArn: core.secretKmsKeyArn,
              region: reg,
              dnsSuffix,
              logGroupArn,
              autoScalingGroupArn: autoScalingGroupArn(part, reg, acct, group),
              sessionManager: core.ssmSessionManager,
              extraStatements: core.extraPolicyStatements,
            }),
          ),
        ),
    },
    opts,
  );
  const profile = new aws.iam.InstanceProfile(`${name}-instance`, { role: role.name, tags }, opts);

  const imageId =
    core.amiId ??
    aws.ssm.getParameterOutput({ name: al2023Parameter(architectureOf(core.instanceType)) }, invokeOpts).value;
  const userData = pulumi
    .all([place, configParameter?.version])
    .apply(([p, version]) => renderUserData(poolUserDataSpec(name, spec, p, version)).toString("base64"));

  const launchTemplate = new aws.ec2.LaunchTemplate(
    `${name}-agents`,
    {
      // Not Pulumi's auto-name ("<name>-agents-..."): AWS refuses a group name starting "sg-".
      namePrefix: `agentpools-${name}-agents-`,
      description: `agentpools ${spec.component} ${name}`,
      imageId,
      instanceType: core.instanceType,
      iamInstanceProfile: { arn: profile.arn },
      metadataOptions: {
        httpEndpoint: "enabled",
        httpTokens: "required",
        httpPutResponseHopLimit: 1,
        instanceMetadataTags: "disabled",
      },
      blockDeviceMappings: [
        {
          deviceName: "/dev/xvda",
          ebs: {
            volumeSize: core.rootVolumeSizeGiB,
            volumeType: "gp3",
            encrypted: "true",
            kmsKeyId: core.volumeKmsKeyArn,
            deleteOnTermination: "true",
          },
        },
      ],
      networkInterfaces: [
        {
          deviceIndex: 0,
          associatePublicIpAddress: "false",
          deleteOnTermination: "true",
          securityGroups: [securityGroup.id],
        },
      ],
      monitoring: { enabled: core.detailedMonitoring },
      // A boot script that cannot tell AWS it failed powers off: the instance is then gone, and replaced.
      instanceInitiatedShutdownBehavior: "terminate",
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

  const hooks = lifecycleHooks(core);
  const warmPool = core.warmPool && {
    minSize: core.warmPool.minSize,
    maxGroupPreparedCapacity: core.warmPool.maxPreparedCapacity,
    poolState: core.warmPool.poolState,
    instanceReusePolicy: { reuseOnScaleIn: core.warmPool.reuseOnScaleIn },
  };
  const templateRef = { id: launchTemplate.id, version: launchTemplate.latestVersion.apply((v) => `${v}`) };
  const group = new aws.autoscaling.Group(
    `${name}-agents`,
    {
      name: groupName,
      vpcZoneIdentifiers: spec.subnetIds,
      minSize: core.minSize,
      maxSize: core.maxSize,
      desiredCapacity: core.desiredCapacity,
      maxInstanceLifetime: core.maxInstanceLifetimeDays && core.maxInstanceLifetimeDays * 86_400,
      warmPool,
      ...(core.mixedInstances
        ? {
            capacityRebalance: core.mixedInstances.onDemandPercentageAboveBaseCapacity < 100,
            mixedInstancesPolicy: {
              launchTemplate: {
                launchTemplateSpecification: { launchTemplateId: templateRef.id, version: templateRef.version },
                overrides: [
                  core.instanceType,
                  ...core.mixedInstances.instanceTypes.filter((t) => t !== core.instanceType),
                ].map((instanceType) => ({ instanceType })),
              },
              instancesDistribution: {
                onDemandBaseCapacity: core.mixedInstances.onDemandBaseCapacity,
                onDemandPercentageAboveBaseCapacity: core.mixedInstances.onDemandPercentageAboveBaseCapacity,
                spotAllocationStrategy: core.mixedInstances.spotAllocationStrategy,
              },
            },
          }
        : { launchTemplate: templateRef }),
      // EC2 checks the machine; the runtime reports its agent (SetInstanceHealth after a sustained disconnect).
      healthCheckType: "EC2",
      healthCheckGracePeriod: 300,
      // Given at creation, the hooks hold the very first instances; AWS applies them only then.
      initialLifecycleHooks: hooks,
      // A busy (protected) instance is refreshed too, through its drain: it finishes its work first.
      instanceRefresh: {
        strategy: "Rolling",
        preferences: { ...REPLACEMENT, skipMatching: true, scaleInProtectedInstances: "Refresh" },
      },
      instanceMaintenancePolicy: REPLACEMENT,
      enabledMetrics: [
        "GroupDesiredCapacity",
        "GroupInServiceInstances",
        "GroupPendingInstances",
        "GroupTerminatingInstances",
      ],
      metricsGranularity: "1Minute",
      terminationPolicies: ["OldestLaunchTemplate", "OldestInstance"],
      waitForCapacityTimeout: `${core.launchTimeoutSeconds + 300}s`,
      tags: Object.entries({ ...tags, Name: `agentpools-${name}` }).map(([key, value]) => ({
        key,
        value,
        propagateAtLaunch: true,
      })),
    },
    {
      ...opts,
      // Instances read the secret, write logs and complete their hook with the role's policy
      // at boot, and read the parameters: all exist before the first instance starts.
      dependsOn: [logGroup, bootLog, policy, ...[caParameter, configParameter].filter((p) => p !== undefined)],
      // Later changes reach the hooks through the LifecycleHook resources below; the scaling
      // policy owns the desired capacity once the group exists.
      ignoreChanges: ["initialLifecycleHooks", ...(core.scaling.enabled ? ["desiredCapacity"] : [])],
    },
  );
  // The same hooks as resources of their own (PutLifecycleHook creates or updates one), so a
  // change of drain or launch time reaches AWS after the group's creation too.
  for (const hook of hooks) {
    new aws.autoscaling.LifecycleHook(`${name}-${hook.name}`, { autoscalingGroupName: group.name, ...hook }, opts);
  }

  const alarms = createAlarms(name, group.name, logGroup.name, core, tags, opts);
  if (core.scaling.enabled) createScaling(name, group, core, tags, opts);
  const dashboard = new aws.cloudwatch.Dashboard(
    `${name}-dashboard`,
    {
      dashboardName: group.name.apply(dashboardName),
      dashboardBody: pulumi
        .all([group.name, region, alarms.errorsMetric, ...alarms.arns])
        .apply(([groupName, reg, errorsMetric, ...arns]) =>
          dashboardBody({
            group: groupName,
            region: reg,
            demand: core.scaling.demandMetric,
            errorsMetric,
            alarmArns: arns,
          }),
        ),
    },
    opts,
  );

  return {
    autoScalingGroupName: group.name,
    roleArn: role.arn,
    secretArn,
    logGroupName: logGroup.name,
    securityGroupId: securityGroup.id,
    launchTemplateId: launchTemplate.id,
    dashboardName: dashboard.dashboardName,
  };
}

function createConfigParameter(
  name: string,
  spec: PoolSpec,
  place: pulumi.Output<PoolPlace>,
  group: pulumi.Output<string>,
  tags: Record<string, string>,
  opts: pulumi.CustomResourceOptions,
) {
  const value = place.apply((p) => renderConfigParameterValue(poolUserDataSpec(name, spec, p)));
  return new aws.ssm.Parameter(
    `${name}-config`,
    {
      name: group.apply(configParameterName),
      description: `agentpools ${spec.component} ${name}: the instances' configuration (Brotli archive, base64)`,
      type: "String",
      tier: value.apply(ssmParameterTier),
      value,
      tags,
    },
    opts,
  );
}

/** A metric query as the Pulumi provider spells it (dimensions as name/value pairs). */
const providerQuery = (q: MetricQuery) =>
  "metricStat" in q
    ? {
        ...q,
        metricStat: {
          stat: q.metricStat.stat,
          metric: {
            namespace: q.metricStat.namespace,
            metricName: q.metricStat.metricName,
            dimensions: Object.entries(q.metricStat.dimensions).map(([n, value]) => ({ name: n, value })),
          },
        },
      }
    : q;

/**
 * Target tracking on the pool's busy share (with queued work, if the service publishes it),
 * and, for a pool that may sit at zero, a step that starts one instance when work is queued.
 */
function createScaling(
  name: string,
  group: aws.autoscaling.Group,
  core: CoreArgs,
  tags: Record<string, string>,
  opts: pulumi.CustomResourceOptions,
): void {
  const { targetBusyPercent, demandMetric, instanceWarmupSeconds } = core.scaling;
  new aws.autoscaling.Policy(
    `${name}-busy-share`,
    {
      autoscalingGroupName: group.name,
      policyType: "TargetTrackingScaling",
      estimatedInstanceWarmup: instanceWarmupSeconds,
      targetTrackingConfiguration: {
        targetValue: targetBusyPercent,
        customizedMetricSpecification: {
          metrics: group.name.apply((g) => busyShareQueries(g, demandMetric).map(providerQuery)),
        },
      },
    },
    opts,
  );
  if (!demandMetric || core.minSize > 0) return;
  const start = new aws.autoscaling.Policy(
    `${name}-from-zero`,
    {
      autoscalingGroupName: group.name,
      policyType: "StepScaling",
      adjustmentType: "ChangeInCapacity",
      stepAdjustments: [{ metricIntervalLowerBound: "0", scalingAdjustment: 1 }],
    },
    opts,
  );
  new aws.cloudwatch.MetricAlarm(
    `${name}-work-queued`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: work is queued and the group has no capacity: start one instance (group ${group.name})`,
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      threshold: 1,
      evaluationPeriods: 1,
      treatMissingData: "notBreaching",
      metricQueries: group.name.apply((g) =>
        fromZeroQueries(g, demandMetric).map((q) =>
          "metricStat" in q
            ? { id: q.id, returnData: false, metric: { ...q.metricStat, period: METRICS_PERIOD_SECONDS } }
            : { id: q.id, label: q.label, expression: q.expression, returnData: true },
        ),
      ),
      alarmActions: [start.arn],
      tags,
    },
    opts,
  );
}

/** Alarms an operator wants: capacity wanted but no connected agent, instances that never connect, runtime errors. */
function createAlarms(
  name: string,
  group: pulumi.Output<string>,
  logGroupName: pulumi.Output<string>,
  core: CoreArgs,
  tags: Record<string, string>,
  opts: pulumi.CustomResourceOptions,
) {
  const actions = core.alarmActions;
  const metric = (namespace: string, metricName: string, stat: string) => ({
    namespace,
    metricName,
    dimensions: { [POOL_DIMENSION]: group },
    period: METRICS_PERIOD_SECONDS,
    stat,
  });
  // Connected agents as the runtimes report them (agent/config/metrics.ts): an instance whose
  // agent lost its gateway is InService all the same.
  const noAgents = new aws.cloudwatch.MetricAlarm(
    `${name}-no-agents`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: capacity is wanted but no agent has been connected for 10 minutes (group ${group})`,
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      threshold: 1,
      evaluationPeriods: 10,
      datapointsToAlarm: 10,
      treatMissingData: "notBreaching",
      metricQueries: [
        { id: "desired", metric: metric("AWS/AutoScaling", "GroupDesiredCapacity", "Maximum"), returnData: false },
        { id: "connected", metric: metric(METRICS_NAMESPACE, METRICS.connected, "Sum"), returnData: false },
        {
          id: "unserved",
          expression: "IF(desired > 0 AND FILL(connected, 0) < 1, 1, 0)",
          label: "Capacity wanted, no connected agent",
          returnData: true,
        },
      ],
      alarmActions: actions,
      okActions: actions,
      tags,
    },
    opts,
  );

  // Instances stay Pending until their agent connects (the launch hook): pending for longer
  // than the hook's timeout, without a pause, means instance after instance never connects.
  const periods = neverConnectPeriods(core.launchTimeoutSeconds);
  const neverConnect = new aws.cloudwatch.MetricAlarm(
    `${name}-never-connect`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: instances have been pending for ${periods} minutes: their agents do not connect (see the log group's boot stream; group ${group})`,
      namespace: "AWS/AutoScaling",
      metricName: "GroupPendingInstances",
      dimensions: { [POOL_DIMENSION]: group },
      period: METRICS_PERIOD_SECONDS,
      statistic: "Minimum",
      comparisonOperator: "GreaterThanOrEqualToThreshold",
      threshold: 1,
      evaluationPeriods: periods,
      treatMissingData: "notBreaching",
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
      metricTransformation: { name: metricName, namespace: METRICS_NAMESPACE, value: "1", defaultValue: "0" },
    },
    opts,
  );
  const errors = new aws.cloudwatch.MetricAlarm(
    `${name}-runtime-errors`,
    {
      alarmDescription: pulumi.interpolate`agentpools ${name}: the runtime logged 5 or more errors in 5 minutes (log group ${logGroupName})`,
      namespace: METRICS_NAMESPACE,
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
  return { errorsMetric: metricName, arns: [noAgents.arn, neverConnect.arn, errors.arn] };
}
