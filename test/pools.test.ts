import assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";
import {
  FlowsAgentPool,
  Network,
  VcsAgentPool,
  WorkerPool,
  decodeUserData,
  USER_DATA_BUDGET,
  USER_DATA_LIMIT,
  UserDataTooLargeError,
} from "../components";
import { createHash } from "node:crypto";
import { runtimeBundle } from "../components/shared/bundles";
import { preparePool, type AgentPool } from "../components/aws/agent-pool";
import { workerPoolArgs, workerPoolKind, type WorkerPoolArgs } from "../components/aws/worker-pool";
import { flowsAgentPoolArgs, flowsAgentPoolKind, type FlowsAgentPoolArgs } from "../components/aws/flows-agent-pool";
import { ssmParameterTier } from "../components/aws/pool-args";
import { checkUserDataSize } from "../components/aws/pool-core";
import { unpackFiles } from "../components/aws/userdata";
import { policyFileContent } from "../components/shared/worker-args";
import { DEFAULT_TARGET_BUSY_PERCENT, metricQueryProblems, type MetricQuery } from "../components/aws/scaling";
import { METRICS, METRICS_NAMESPACE, POOL_DIMENSION } from "../agent/config/metrics";
import { caCertificates } from "../devkit/certificates";
import {
  ACCOUNT,
  REGION,
  byType,
  invokeResults,
  recorded,
  isSecretInput,
  one,
  settled,
  valueOf,
  type RecordedResource,
} from "../devkit/pulumi-mocks";
import {
  CA_BUNDLE,
  LARGEST,
  PRIVATE_KEY_B64,
  SUBNETS,
  TOKENS,
  VPC,
  flowsArgs,
  vcsArgs,
  workerArgs,
} from "../devkit/fixtures";

/**
 * These arguments with metadata tags of random text added until the role's configuration no longer fits in
 * user-data and goes to its parameter: the same test of that path however small the runtime bundles become.
 */
function pastUserData<A extends WorkerPoolArgs | FlowsAgentPoolArgs>(args: A): A {
  const worker = "poolPrivateKey" in args;
  const padded = (count: number) => {
    const tags = Array.from({ length: count }, (_, i) => [
      `pad_${i}`,
      createHash("sha256").update(`${i}`).digest("hex"),
    ]);
    return { ...args, metadataTags: { ...args.metadataTags, ...Object.fromEntries(tags) } };
  };
  for (let count = 0; ; count += 2) {
    const spec = worker
      ? preparePool("WorkerPool", "launcher", "pad", workerPoolArgs, padded(count) as WorkerPoolArgs, workerPoolKind)
      : preparePool(
          "FlowsAgentPool",
          "flows-agent",
          "pad",
          flowsAgentPoolArgs,
          padded(count) as never,
          flowsAgentPoolKind,
        );
    // Past it by a margin: a pool of another name is a few bytes more or less once gzipped.
    if (spec.configDelivery === "ssmParameter") return padded(count + 4);
  }
}

const T = {
  sg: "aws:ec2/securityGroup:SecurityGroup",
  lt: "aws:ec2/launchTemplate:LaunchTemplate",
  asg: "aws:autoscaling/group:Group",
  hook: "aws:autoscaling/lifecycleHook:LifecycleHook",
  secret: "aws:secretsmanager/secret:Secret",
  secretVersion: "aws:secretsmanager/secretVersion:SecretVersion",
  role: "aws:iam/role:Role",
  policy: "aws:iam/rolePolicy:RolePolicy",
  attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
  logGroup: "aws:cloudwatch/logGroup:LogGroup",
  logStream: "aws:cloudwatch/logStream:LogStream",
  alarm: "aws:cloudwatch/metricAlarm:MetricAlarm",
  filter: "aws:cloudwatch/logMetricFilter:LogMetricFilter",
  parameter: "aws:ssm/parameter:Parameter",
  scalingPolicy: "aws:autoscaling/policy:Policy",
  dashboard: "aws:cloudwatch/dashboard:Dashboard",
};

async function deploy(make: () => AgentPool, prefix: string) {
  const pool = make();
  const outputs = {
    group: await valueOf(pool.autoScalingGroupName),
    role: await valueOf(pool.roleArn),
    secret: await valueOf(pool.secretArn),
    logs: await valueOf(pool.logGroupName),
    sg: await valueOf(pool.securityGroupId),
  };
  const resources = await settled(prefix);
  return { pool, outputs, resources };
}

function userDataOf(resources: RecordedResource[]) {
  const lt = one(resources, T.lt);
  assert.equal(typeof lt.inputs.userData, "string", "user-data is a plain (non-secret) value");
  // With the files of the pool's config parameter, when it has one: every file an instance gets.
  const parameter = resources.find((r) => r.type === T.parameter && r.name === lt.name.replace(/-agents$/, "-config"));
  return {
    raw: lt.inputs.userData as string,
    decoded: decodeUserData(lt.inputs.userData, parameter?.inputs.value.value),
  };
}

/** Every plain (non-secret) input of every resource, as text: what `pulumi stack export` shows in the clear. */
function plainState(resources: RecordedResource[]): string {
  const strip = (value: unknown): unknown =>
    isSecretInput(value)
      ? "[secret]"
      : Array.isArray(value)
        ? value.map(strip)
        : value && typeof value === "object"
          ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, strip(v)]))
          : value;
  return JSON.stringify(resources.map((r) => strip(r.inputs)));
}

/** Give the invokes another partition and region while `run` deploys (China, GovCloud). */
async function inPartition<T>(
  place: { partition: string; dnsSuffix: string; region: string },
  run: () => Promise<T>,
): Promise<T> {
  const saved = { ...invokeResults };
  invokeResults["aws:index/getPartition:getPartition"] = () => ({
    partition: place.partition,
    dnsSuffix: place.dnsSuffix,
    reverseDnsPrefix: "x",
    id: place.partition,
  });
  invokeResults["aws:index/getRegion:getRegion"] = () => ({
    region: place.region,
    name: place.region,
    id: place.region,
  });
  invokeResults["aws:index/getServicePrincipal:getServicePrincipal"] = (args) => ({
    name: `${args.serviceName}.${place.dnsSuffix}`,
    id: args.serviceName,
  });
  try {
    return await run();
  } finally {
    Object.assign(invokeResults, saved);
  }
}

const kinds = [
  {
    kind: "WorkerPool",
    role: "launcher",
    make: (n: string) => new WorkerPool(n, workerArgs()),
    secrets: { SPACELIFT_TOKEN: TOKENS.worker, SPACELIFT_POOL_PRIVATE_KEY: PRIVATE_KEY_B64 },
    type: "m7i.large",
    docker: true,
    drain: 4500,
    variant: { platform: "ec2", executor: "docker" },
  },
  {
    kind: "VcsAgentPool",
    role: "vcs-agent",
    make: (n: string) => new VcsAgentPool(n, vcsArgs()),
    secrets: { SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKENS.vcs },
    type: "c7i.large",
    docker: false,
    drain: 120,
    variant: { platform: "ec2", vendor: "gitlab" },
  },
  {
    kind: "FlowsAgentPool",
    role: "flows-agent",
    make: (n: string) => new FlowsAgentPool(n, flowsArgs()),
    secrets: { FLOWS_AGENT_POOL_TOKEN: TOKENS.flows },
    type: "c7i.xlarge",
    docker: true,
    drain: 300,
    variant: { platform: "ec2", executor: "docker" },
  },
] as const;

for (const k of kinds) {
  describe(`${k.kind} (AWS)`, () => {
    const name = `${k.role}-basic`;
    let deployed: Awaited<ReturnType<typeof deploy>>;
    before(async () => {
      deployed = await deploy(() => k.make(name), name);
    });

    it("has a security group with no inbound rule", () => {
      const sg = one(deployed.resources, T.sg);
      assert.deepEqual(sg.inputs.ingress, []);
      assert.equal(sg.inputs.vpcId, VPC);
      assert.equal(sg.inputs.egress.length, 1);
    });

    it('names its security group so that AWS takes it whatever the pool\'s name (never "sg-...")', async () => {
      const named = await deploy(() => k.make(`sg-${k.role}`), `sg-${k.role}`);
      const sg = one(named.resources, T.sg);
      assert.equal(sg.inputs.namePrefix, `agentpools-sg-${k.role}-agents-`);
      assert.equal(sg.inputs.name, undefined, "no name of Pulumi's making, which would start with the pool's name");
    });

    it("launches with IMDSv2 required (hop limit 1), an encrypted gp3 root volume, no public IP, and terminates when it powers off", () => {
      const lt = one(deployed.resources, T.lt);
      assert.equal(lt.inputs.metadataOptions.httpTokens, "required");
      assert.equal(lt.inputs.metadataOptions.httpPutResponseHopLimit, 1);
      assert.equal(lt.inputs.blockDeviceMappings[0].ebs.encrypted, "true");
      assert.equal(lt.inputs.blockDeviceMappings[0].ebs.volumeType, "gp3");
      assert.equal(lt.inputs.networkInterfaces[0].associatePublicIpAddress, "false");
      assert.deepEqual(lt.inputs.networkInterfaces[0].securityGroups, [one(deployed.resources, T.sg).id]);
      assert.equal(lt.inputs.instanceType, k.type);
      assert.equal(lt.inputs.imageId, "ami-0bbbbbbbbbbbbbbb2", "AL2023 x86_64 from the public SSM parameter");
      assert.equal(lt.inputs.instanceInitiatedShutdownBehavior, "terminate");
    });

    it("renders user-data that decodes to the role's EC2 bundle for the pool's executor or vendor, and its configuration", () => {
      const { decoded } = userDataOf(deployed.resources);
      assert.equal(decoded.files.get(`/opt/agentpools/${k.role}.js`)?.content, runtimeBundle(k.role, k.variant));
      const config = JSON.parse(decoded.files.get(`/etc/agentpools/${k.role}.json`)?.content as string);
      assert.equal(config.role, k.role);
      assert.equal(config.pool, name);
      assert.deepEqual(config.aws, {
        secretArn: deployed.outputs.secret,
        autoScalingGroupName: deployed.outputs.group,
        launchHookName: "agent-connected",
        terminationHookName: "agent-drained",
        heartbeatSeconds: Math.floor(Math.min(k.drain + 60, 600) / 3),
        metricsSeconds: 60,
        unhealthyAfterSeconds: 600,
        protectSeconds: k.drain,
        lingerSeconds: k.role === "launcher" ? 0 : 60,
      });
      for (const variable of Object.keys(k.secrets)) assert.ok(!JSON.stringify(config).includes(variable));
      assert.ok(!Object.keys(config.settings).some((key) => /token|privateKey/i.test(key)), "no secret setting");
      assert.equal(decoded.files.has("/etc/docker/daemon.json"), k.docker);
    });

    it("holds instances at launch until the agent connects and at termination until it drains, with hooks an update reaches", () => {
      const group = one(deployed.resources, T.asg);
      const hooks = byType(deployed.resources, T.hook).map((h) => h.inputs);
      const expected = [
        {
          name: "agent-connected",
          lifecycleTransition: "autoscaling:EC2_INSTANCE_LAUNCHING",
          defaultResult: "ABANDON",
          heartbeatTimeout: 900,
        },
        {
          name: "agent-drained",
          lifecycleTransition: "autoscaling:EC2_INSTANCE_TERMINATING",
          defaultResult: "CONTINUE",
          heartbeatTimeout: Math.min(k.drain + 60, 600),
        },
      ];
      // At creation (the first instances are held too) and as resources of their own (changes reach AWS).
      assert.deepEqual(group.inputs.initialLifecycleHooks, expected);
      assert.deepEqual(
        hooks.map(
          ({ autoscalingGroupName, ...hook }) => (assert.equal(autoscalingGroupName, deployed.outputs.group), hook),
        ),
        expected,
      );
      // The scaling policy owns the desired capacity once the group exists: Pulumi does not set it back.
      assert.deepEqual(group.ignoreChanges, ["initialLifecycleHooks", "desiredCapacity"]);
      for (const hook of expected)
        assert.ok(hook.heartbeatTimeout >= 30 && hook.heartbeatTimeout <= 7200, "AWS takes 30 to 7200 seconds");
    });

    it("replaces instances launch-first, so a one-instance pool never drops to none", () => {
      const group = one(deployed.resources, T.asg);
      // Busy instances are protected from scale-in: a refresh replaces them too, through their drain.
      assert.deepEqual(group.inputs.instanceRefresh, {
        strategy: "Rolling",
        preferences: {
          minHealthyPercentage: 100,
          maxHealthyPercentage: 200,
          skipMatching: true,
          scaleInProtectedInstances: "Refresh",
        },
      });
      assert.deepEqual(group.inputs.instanceMaintenancePolicy, {
        minHealthyPercentage: 100,
        maxHealthyPercentage: 200,
      });
      assert.equal(group.inputs.launchTemplate.id, one(deployed.resources, T.lt).id);
      assert.deepEqual([group.inputs.minSize, group.inputs.maxSize], [1, 3]);
      assert.deepEqual(group.inputs.vpcZoneIdentifiers, SUBNETS);
    });

    it("starts no instance before the role's policy, the log group and the boot log stream exist", () => {
      const group = one(deployed.resources, T.asg);
      for (const needed of [
        `${T.policy}::${name}-instance`,
        `${T.logGroup}::${name}-logs`,
        `${T.logStream}::${name}-boot`,
        `${T.lt}::${name}-agents`,
      ]) {
        assert.ok(
          group.dependsOn.includes(needed),
          `the group does not wait for ${needed}: ${group.dependsOn.join(", ")}`,
        );
      }
      assert.deepEqual(one(deployed.resources, T.logStream).inputs.name, "boot");
    });

    it("alarms on no connected agent (the runtimes' own metric) and on runtime errors", () => {
      assert.equal(one(deployed.resources, T.logGroup).inputs.retentionInDays, 30);
      const alarms = byType(deployed.resources, T.alarm);
      assert.deepEqual(alarms.map((a) => a.name.slice(name.length + 1)).sort(), [
        "never-connect",
        "no-agents",
        "runtime-errors",
      ]);
      const never = alarms.find((a) => a.name.endsWith("-never-connect"))!.inputs;
      assert.deepEqual(
        [never.namespace, never.metricName, never.statistic, never.dimensions, never.evaluationPeriods],
        ["AWS/AutoScaling", "GroupPendingInstances", "Minimum", { [POOL_DIMENSION]: deployed.outputs.group }, 20],
      );
      const unserved = alarms.find((a) => a.name.endsWith("-no-agents"));
      const queries = unserved?.inputs.metricQueries as {
        id: string;
        expression?: string;
        metric?: Record<string, any>;
      }[];
      const connected = queries.find((q) => q.id === "connected")?.metric;
      assert.deepEqual(
        [connected?.namespace, connected?.metricName, connected?.dimensions, connected?.stat],
        [METRICS_NAMESPACE, METRICS.connected, { [POOL_DIMENSION]: deployed.outputs.group }, "Sum"],
      );
      assert.equal(queries.find((q) => q.expression)?.expression, "IF(desired > 0 AND FILL(connected, 0) < 1, 1, 0)");
      assert.equal(one(deployed.resources, T.filter).inputs.pattern, '{ $.level = "error" }');
    });

    it("scales on the pool's busy share (target tracking, metric math AWS takes) and shows the pool on a dashboard", () => {
      const policy = one(deployed.resources, T.scalingPolicy).inputs;
      assert.deepEqual(
        [policy.policyType, policy.autoscalingGroupName, policy.targetTrackingConfiguration.targetValue],
        ["TargetTrackingScaling", deployed.outputs.group, DEFAULT_TARGET_BUSY_PERCENT],
      );
      const metrics = policy.targetTrackingConfiguration.customizedMetricSpecification.metrics;
      const busy = metrics.find((m: { id: string }) => m.id === "busy").metricStat;
      assert.deepEqual(busy, {
        stat: "Average",
        metric: {
          namespace: METRICS_NAMESPACE,
          metricName: METRICS.busy,
          dimensions: [{ name: POOL_DIMENSION, value: deployed.outputs.group }],
        },
      });
      const asQueries = metrics.map(
        (m: { metricStat?: { stat: string; metric: { namespace: string; metricName: string } } }) =>
          m.metricStat ? { ...m, metricStat: { ...m.metricStat.metric, dimensions: {}, stat: m.metricStat.stat } } : m,
      );
      assert.deepEqual(metricQueryProblems(asQueries as MetricQuery[]), []);
      assert.equal(
        byType(deployed.resources, T.alarm).filter((a) => a.name.endsWith("-work-queued")).length,
        0,
        "no start from zero without a demand metric",
      );
      const dashboard = one(deployed.resources, T.dashboard).inputs;
      assert.match(dashboard.dashboardName, /^[A-Za-z0-9_-]{1,255}$/);
      const widgets = JSON.parse(dashboard.dashboardBody).widgets;
      assert.deepEqual(
        widgets.map((w: { properties: { title: string } }) => w.properties.title),
        [
          "Agents: connected, busy, draining",
          "Busy share (%)",
          "Group size and scaling activity",
          "Boot phases (seconds from launch)",
          "Runtime errors",
          "Alarms",
        ],
      );
      assert.equal(widgets.at(-1).properties.alarms.length, 3);
    });
  });
}

describe("README promises (AWS)", () => {
  // Each kind deployed once with its defaults: the promises below only read what was registered.
  let everyKind: ({ k: (typeof kinds)[number] } & Awaited<ReturnType<typeof deploy>>)[];
  before(async () => {
    everyKind = [];
    for (const k of kinds)
      everyKind.push({ k, ...(await deploy(() => k.make(`promise-${k.role}`), `promise-${k.role}`)) });
  });

  it("no credential is ever in user-data", async () => {
    for (const { k, resources } of everyKind) {
      const { raw, decoded } = userDataOf(resources);
      const text = [decoded.script, ...[...decoded.files.values()].map((f) => f.content)].join("\n");
      for (const value of Object.values(k.secrets)) {
        assert.ok(
          !text.includes(value) && !raw.includes(Buffer.from(value).toString("base64")),
          `${k.kind}: a secret value is in user-data`,
        );
      }
    }
  });

  it("no credential is ever in plain state: only in a Pulumi secret, written to Secrets Manager", async () => {
    for (const { k, resources } of everyKind) {
      const version = one(resources, T.secretVersion);
      assert.ok(isSecretInput(version.inputs.secretString), "secretString is a Pulumi secret");
      assert.deepEqual(JSON.parse(version.inputs.secretString.value), k.secrets);
      const clear = plainState(resources);
      for (const value of Object.values(k.secrets))
        assert.ok(!clear.includes(value), `${k.kind}: a credential is in the plain state`);
    }
    // Given as an Output (config.requireSecret), too.
    const { resources } = await deploy(
      () => new VcsAgentPool("promise-output", vcsArgs({ token: pulumi.secret(TOKENS.vcs) })),
      "promise-output",
    );
    assert.ok(isSecretInput(one(resources, T.secretVersion).inputs.secretString));
    assert.ok(!plainState(resources).includes(TOKENS.vcs));
  });

  it("the instance role may read this pool's secret, write this pool's logs, complete its own lifecycle actions, report itself unhealthy and protect itself while busy: nothing else", async () => {
    for (const { resources, outputs } of everyKind) {
      const policy = JSON.parse(one(resources, T.policy).inputs.policy);
      const group = `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/${outputs.group}`;
      assert.deepEqual(
        policy.Statement.map((s: { Action: string | string[]; Resource: string }) => [
          [s.Action].flat().sort().join(","),
          s.Resource,
        ]),
        [
          ["secretsmanager:GetSecretValue", outputs.secret],
          [
            "logs:CreateLogStream,logs:PutLogEvents",
            `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${outputs.logs}:log-stream:*`,
          ],
          ["autoscaling:CompleteLifecycleAction,autoscaling:RecordLifecycleActionHeartbeat", group],
          ["autoscaling:SetInstanceHealth", group],
          ["autoscaling:SetInstanceProtection", group],
          // A pool whose configuration is in its parameter (over the user-data budget) reads that one parameter only.
          ...(byType(resources, T.parameter).length > 0
            ? [["ssm:GetParameter", [`arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/agentpools/${outputs.group}/config`]]]
            : []),
        ],
      );
      assert.ok(policy.Statement.every((s: { Effect: string }) => s.Effect === "Allow"));
      const trust = JSON.parse(one(resources, T.role).inputs.assumeRolePolicy);
      assert.deepEqual(trust.Statement, [
        { Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" },
      ]);
      assert.equal(byType(resources, T.attachment).length, 0, "no SSM access unless asked");
    }
  });

  it("the runtime's log (its unit's output, stderr too) reaches this pool's log group through the CloudWatch agent, with only the calls the role allows", async () => {
    for (const { resources, outputs } of everyKind) {
      const { files, script } = userDataOf(resources).decoded;
      const unit = [...files.values()].find((f) => f.path.startsWith("/etc/systemd/system/agentpools-"))!.content;
      const [, logFile] = /^StandardOutput=append:(\/var\/log\/agentpools\/[a-z-]+\.log)$/m.exec(unit) ?? [];
      assert.ok(logFile, "the unit appends its output to a file");
      assert.doesNotMatch(unit, /^StandardError=/m, "stderr (a crash's trace) goes where stdout goes");
      assert.match(
        unit,
        /^After=.* amazon-cloudwatch-agent\.service$/m,
        "stopped before the agent, its last lines sent",
      );
      const agent = JSON.parse(files.get("/etc/agentpools/cloudwatch-agent.json")!.content);
      // Only file_path, the group and the stream: retention_in_days would call DescribeLogGroups and PutRetentionPolicy,
      // and a group it could not find, CreateLogGroup; the role grants none of them.
      assert.deepEqual(agent, {
        logs: {
          logs_collected: {
            files: {
              collect_list: [{ file_path: logFile, log_group_name: outputs.logs, log_stream_name: "{instance_id}" }],
            },
          },
        },
      });
      const lines = script.split("\n");
      const at = (pattern: RegExp) => lines.findIndex((line) => pattern.test(line));
      const folder = at(/^install -d -m 0700 \/var\/log\/agentpools$/);
      const started = at(
        /^\/opt\/aws\/amazon-cloudwatch-agent\/bin\/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:\/etc\/agentpools\/cloudwatch-agent\.json$/,
      );
      const runtime = at(/^systemctl enable --now .*agentpools-[a-z-]+\.service$/);
      assert.ok(at(/^retry dnf install -y .*\bamazon-cloudwatch-agent\b/) >= 0, "the agent is installed");
      assert.ok(
        0 <= folder && folder < started && started < runtime,
        "a root-only folder, the agent, then the runtime",
      );
    }
  });
});

describe("AWS pools: scaling options", () => {
  it("a queued-work metric joins the busy share through metric math, and a pool at zero starts when work is queued", async () => {
    const demandMetric = { namespace: "Spacelift", metricName: "QueuedRuns", dimensions: { WorkerPool: "01ABC" } };
    const { resources, outputs } = await deploy(
      () =>
        new WorkerPool(
          "demand",
          workerArgs({ minSize: 0, maxSize: 10, scaling: { targetBusyPercent: 50, demandMetric } }),
        ),
      "demand",
    );
    const [tracking, fromZero] = ["busy-share", "from-zero"].map(
      (n) => resources.find((r) => r.type === T.scalingPolicy && r.name === `demand-${n}`)!.inputs,
    );
    assert.equal(tracking.targetTrackingConfiguration.targetValue, 50);
    const metrics = tracking.targetTrackingConfiguration.customizedMetricSpecification.metrics;
    assert.deepEqual(metrics.find((m: { id: string }) => m.id === "demand").metricStat, {
      stat: "Maximum",
      metric: {
        namespace: "Spacelift",
        metricName: "QueuedRuns",
        dimensions: [{ name: "WorkerPool", value: "01ABC" }],
      },
    });
    assert.match(
      metrics.find((m: { returnData: boolean }) => m.returnData).expression,
      /FILL\(demand, 0\) \/ MAX\(\[FILL\(inservice, 0\), 1\]\)/,
    );
    assert.deepEqual(
      [fromZero.policyType, fromZero.adjustmentType, fromZero.stepAdjustments],
      ["StepScaling", "ChangeInCapacity", [{ metricIntervalLowerBound: "0", scalingAdjustment: 1 }]],
    );
    const alarm = one(
      resources.filter((r) => r.name === "demand-work-queued"),
      T.alarm,
    ).inputs;
    assert.equal(alarm.alarmActions.length, 1, "the alarm's one action is the step policy");
    assert.deepEqual(
      alarm.metricQueries.map((q: { id: string }) => q.id),
      ["demand", "desired", "start"],
    );
    assert.equal(alarm.metricQueries[1].metric.dimensions[POOL_DIMENSION], outputs.group);
    assert.equal(one(resources, T.asg).inputs.minSize, 0);
  });

  it("a fixed-size pool (scaling.enabled false) has no policy, and Pulumi keeps its desired capacity", async () => {
    const { resources } = await deploy(
      () =>
        new VcsAgentPool("fixed", vcsArgs({ minSize: 2, maxSize: 2, desiredCapacity: 2, scaling: { enabled: false } })),
      "fixed",
    );
    assert.equal(byType(resources, T.scalingPolicy).length, 0);
    assert.deepEqual(one(resources, T.asg).ignoreChanges, ["initialLifecycleHooks"]);
    assert.equal(one(resources, T.asg).inputs.desiredCapacity, 2);
  });

  it("a warm pool of stopped instances, and a maximum instance lifetime in seconds as AWS takes it", async () => {
    const { resources } = await deploy(
      () => new FlowsAgentPool("warm", flowsArgs({ warmPool: { minSize: 1 }, maxInstanceLifetimeDays: 7 })),
      "warm",
    );
    const group = one(resources, T.asg).inputs;
    assert.deepEqual(group.warmPool, {
      minSize: 1,
      poolState: "Stopped",
      instanceReusePolicy: { reuseOnScaleIn: false },
    });
    assert.equal(group.maxInstanceLifetime, 604_800);
    assert.ok(group.maxInstanceLifetime >= 86_400 && group.maxInstanceLifetime <= 31_536_000);
  });
});

describe("AWS pools: options", () => {
  it("mixed instances: spot above an on-demand base, overrides listing every type", async () => {
    const { resources } = await deploy(
      () =>
        new WorkerPool(
          "mixed",
          workerArgs({
            mixedInstances: {
              instanceTypes: ["m6i.large", "m7a.large"],
              onDemandBaseCapacity: 1,
              onDemandPercentageAboveBaseCapacity: 0,
            },
          }),
        ),
      "mixed",
    );
    const group = one(resources, T.asg);
    assert.equal(group.inputs.launchTemplate, undefined);
    assert.deepEqual(
      group.inputs.mixedInstancesPolicy.launchTemplate.overrides.map((o: { instanceType: string }) => o.instanceType),
      ["m7i.large", "m6i.large", "m7a.large"],
    );
    assert.deepEqual(group.inputs.mixedInstancesPolicy.instancesDistribution, {
      onDemandBaseCapacity: 1,
      onDemandPercentageAboveBaseCapacity: 0,
      spotAllocationStrategy: "price-capacity-optimized",
    });
    assert.equal(group.inputs.capacityRebalance, true);
  });

  it("an existing secret: no secret is created and the policy names that one", async () => {
    const arn = `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:corp/vcs-agent-AbCdEf`;
    const { resources, outputs } = await deploy(
      () => new VcsAgentPool("reuse", vcsArgs({ token: undefined, existingSecretArn: arn })),
      "reuse",
    );
    assert.equal(byType(resources, T.secret).length, 0);
    assert.equal(byType(resources, T.secretVersion).length, 0);
    assert.equal(outputs.secret, arn);
    assert.equal(JSON.parse(one(resources, T.policy).inputs.policy).Statement[0].Resource, arn);
  });

  it("KMS keys, SSM, a permissions boundary, extra statements (a Deny guard-rail among them) and a Graviton type", async () => {
    const key = `arn:aws:kms:${REGION}:${ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
    const alias = `arn:aws:kms:${REGION}:${ACCOUNT}:alias/aws/ebs`;
    const boundary = `arn:aws:iam::${ACCOUNT}:policy/agent-boundary`;
    const guardRail = {
      Sid: "NoSecretsOutsideTheVpc",
      Effect: "Deny" as const,
      Action: "*",
      Resource: "*",
      Condition: { StringNotEquals: { "aws:SourceVpc": VPC } },
    };
    const { resources } = await deploy(
      () =>
        new FlowsAgentPool(
          "keys",
          flowsArgs({
            instanceType: "c7g.xlarge",
            secretKmsKeyArn: key,
            logKmsKeyArn: key,
            volumeKmsKeyArn: alias,
            ssmSessionManager: true,
            permissionsBoundaryArn: boundary,
            extraPolicyStatements: [
              { Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::flows-assets/*" },
              guardRail,
            ],
            logRetentionDays: 365,
          }),
        ),
      "keys",
    );
    const policy = JSON.parse(one(resources, T.policy).inputs.policy);
    const decrypt = policy.Statement.find((s: { Sid?: string }) => s.Sid === "DecryptPoolSecret");
    assert.deepEqual(decrypt, {
      Sid: "DecryptPoolSecret",
      Effect: "Allow",
      Action: "kms:Decrypt",
      Resource: key,
      Condition: { StringEquals: { "kms:ViaService": `secretsmanager.${REGION}.amazonaws.com` } },
    });
    assert.ok(policy.Statement.some((s: { Action: string }) => s.Action === "s3:GetObject"));
    assert.deepEqual(policy.Statement.at(-1), guardRail);
    assert.equal(one(resources, T.role).inputs.permissionsBoundary, boundary);
    // Session Manager's channels only: no managed policy, whose ssm:GetParameter on "*" reads every pool's parameters.
    assert.equal(byType(resources, T.attachment).length, 0, "no managed policy attached");
    assert.deepEqual(
      policy.Statement.filter((s: { Action: string | string[] }) => [s.Action].flat().some((a) => a.startsWith("ssm"))),
      [
        {
          Sid: "SessionManagerChannels",
          Effect: "Allow",
          Action: [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
          ],
          Resource: "*",
        },
      ],
    );
    assert.ok(
      one(resources, T.asg).dependsOn.includes(`${T.policy}::keys-instance`),
      "the Session Manager permission exists before an instance starts",
    );
    assert.equal(one(resources, T.secret).inputs.kmsKeyId, key);
    assert.equal(one(resources, T.logGroup).inputs.kmsKeyId, key);
    assert.equal(one(resources, T.logGroup).inputs.retentionInDays, 365);
    const lt = one(resources, T.lt);
    assert.equal(lt.inputs.blockDeviceMappings[0].ebs.kmsKeyId, alias);
    assert.equal(lt.inputs.imageId, "ami-0aaaaaaaaaaaaaaa1", "the arm64 image for a Graviton type");
  });

  it("a drain of 7200 seconds: the termination hook stays within AWS's limits and the runtime renews it every 200 seconds", async () => {
    const { resources } = await deploy(
      () => new WorkerPool("long-drain", workerArgs({ drainTimeoutSeconds: 7200, runTimeout: "2h" })),
      "long-drain",
    );
    const hook = byType(resources, T.hook).find((h) => h.inputs.name === "agent-drained");
    assert.equal(hook?.inputs.heartbeatTimeout, 600);
    const config = JSON.parse(
      userDataOf(resources).decoded.files.get("/etc/agentpools/launcher.json")?.content as string,
    );
    assert.equal(config.aws.heartbeatSeconds, 200);
    assert.equal(config.drainTimeoutSeconds, 7200);
  });

  it("a later change of drain or launch time reaches the hook resources (the group's own hooks apply at creation only)", async () => {
    await deploy(
      () => new VcsAgentPool("hook-update", vcsArgs({ drainTimeoutSeconds: 60, launchTimeoutSeconds: 600 })),
      "hook-update",
    );
    await deploy(
      () => new VcsAgentPool("hook-update", vcsArgs({ drainTimeoutSeconds: 300, launchTimeoutSeconds: 1200 })),
      "hook-update",
    );
    const timeouts = (hook: string) =>
      recorded
        .filter((r) => r.type === T.hook && r.name === `hook-update-${hook}`)
        .map((r) => r.inputs.heartbeatTimeout);
    assert.deepEqual(timeouts("agent-drained"), [120, 360]);
    assert.deepEqual(timeouts("agent-connected"), [600, 1200]);
  });

  it("a proxy: the AWS APIs of the pool's region and the metadata service go around it, unless the VPC reaches AWS through it", async () => {
    const proxy = { httpsProxy: "http://proxy.corp.example.com:3128", noProxy: ".corp.example.com" };
    const direct = userDataOf(
      (await deploy(() => new VcsAgentPool("proxy-direct", vcsArgs(proxy)), "proxy-direct")).resources,
    ).decoded;
    const unit = (decoded: typeof direct) =>
      decoded.files.get("/etc/systemd/system/agentpools-vcs-agent.service")?.content as string;
    assert.match(
      unit(direct),
      new RegExp(
        `^Environment="NO_PROXY=\\.corp\\.example\\.com,\\.${REGION}\\.amazonaws\\.com,169\\.254\\.169\\.254"$`,
        "m",
      ),
    );
    const via = userDataOf(
      (await deploy(() => new VcsAgentPool("proxy-via", vcsArgs({ ...proxy, awsApisViaProxy: true })), "proxy-via"))
        .resources,
    ).decoded;
    assert.match(unit(via), /^Environment="NO_PROXY=\.corp\.example\.com,169\.254\.169\.254"$/m);
    assert.match(
      via.script,
      /export HTTPS_PROXY='http:\/\/proxy.corp.example.com:3128' NO_PROXY=169.254.169.254$/m,
      "the boot script's AWS calls take the proxy too",
    );
  });

  for (const place of [
    { partition: "aws-cn", dnsSuffix: "amazonaws.com.cn", region: "cn-north-1" },
    { partition: "aws-us-gov", dnsSuffix: "amazonaws.com", region: "us-gov-west-1" },
  ]) {
    it(`another partition (${place.partition}): ARNs, service principal, kms:ViaService and NO_PROXY follow it`, async () => {
      const key = `arn:${place.partition}:kms:${place.region}:${ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
      const name = `part-${place.partition}`;
      const { resources } = await inPartition(place, () =>
        deploy(
          () =>
            new VcsAgentPool(
              name,
              vcsArgs({
                secretKmsKeyArn: key,
                httpsProxy: "http://proxy.corp.example.com:3128",
                ssmSessionManager: true,
              }),
            ),
          name,
        ),
      );
      // (The secret's, log group's and config parameter's ARNs are the mock provider's; those the component builds
      // follow the partition.)
      const policy = JSON.parse(one(resources, T.policy).inputs.policy);
      const built = policy.Statement.filter(
        (s: { Sid: string }) =>
          !["ReadPoolSecret", "WritePoolLogs", "ReadPoolParameters", "SessionManagerChannels"].includes(s.Sid),
      );
      assert.equal(built.length, 4);
      assert.ok(
        built.every(
          (s: { Resource: string }) =>
            s.Resource.startsWith(`arn:${place.partition}:`) && s.Resource.includes(`:${place.region}:`),
        ),
        JSON.stringify(policy),
      );
      assert.equal(
        policy.Statement.find((s: { Sid: string }) => s.Sid === "DecryptPoolSecret").Condition.StringEquals[
          "kms:ViaService"
        ],
        `secretsmanager.${place.region}.${place.dnsSuffix}`,
      );
      assert.equal(
        JSON.parse(one(resources, T.role).inputs.assumeRolePolicy).Statement[0].Principal.Service,
        `ec2.${place.dnsSuffix}`,
      );
      assert.ok(
        policy.Statement.some((s: { Sid: string }) => s.Sid === "SessionManagerChannels"),
        "Session Manager's channels, in any partition",
      );
      const { decoded } = userDataOf(resources);
      assert.ok(
        (decoded.files.get("/etc/systemd/system/agentpools-vcs-agent.service")?.content as string).includes(
          `.${place.region}.${place.dnsSuffix},`,
        ),
      );
      assert.ok(
        !JSON.stringify([...decoded.files.values()]).includes(".eu-west-1."),
        "nothing of the mocks' own region",
      );
    });
  }

  it("CA certificates too large for user-data come from an SSM parameter only this pool can read", async () => {
    // Seven real certificates (each with its own key, so incompressible), as many as the parameter holds (8 KB):
    // inline, they cannot fit beside this configuration (`npm run bench:userdata` says how many do).
    const certificates = (await caCertificates(7)).join("");
    assert.throws(
      () =>
        new WorkerPool("ca-inline", {
          ...LARGEST.worker,
          customCaCertificates: certificates,
          customCaCertificatesDelivery: "userData",
        }),
      UserDataTooLargeError,
    );
    const { resources, outputs } = await deploy(
      () =>
        new WorkerPool(
          "ca-ssm",
          pastUserData({
            ...LARGEST.worker,
            customCaCertificates: certificates,
            customCaCertificatesDelivery: "ssmParameter",
          }),
        ),
      "ca-ssm",
    );
    const parameter = one(
      resources.filter((r) => r.name === "ca-ssm-ca-certificates"),
      T.parameter,
    );
    const name = `/agentpools/${outputs.group}/ca-certificates`;
    assert.deepEqual(
      { name: parameter.inputs.name, type: parameter.inputs.type, tier: parameter.inputs.tier },
      { name, type: "String", tier: "Advanced" },
    );
    // The provider marks every parameter value secret; the certificates arrive whole.
    assert.ok(isSecretInput(parameter.inputs.value));
    assert.equal(parameter.inputs.value.value, certificates);
    const policy = JSON.parse(one(resources, T.policy).inputs.policy);
    const read = policy.Statement.filter((s: { Action: string }) => String(s.Action).startsWith("ssm:"));
    // This pool's two parameters, named (its certificates, and its configuration, which no longer fits beside them).
    const arn = (leaf: string) => `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/agentpools/${outputs.group}/${leaf}`;
    assert.deepEqual(read, [
      {
        Sid: "ReadPoolParameters",
        Effect: "Allow",
        Action: "ssm:GetParameter",
        Resource: [arn("ca-certificates"), arn("config")],
      },
    ]);
    assert.ok(
      one(resources, T.asg).dependsOn.includes(`${T.parameter}::ca-ssm-ca-certificates`),
      "the parameter exists before an instance reads it",
    );
    const { decoded, raw } = userDataOf(resources);
    assert.ok(Buffer.from(raw, "base64").length <= USER_DATA_LIMIT);
    assert.ok(
      !decoded.files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"),
      "the certificates are not in user-data",
    );
    const lines = decoded.script.split("\n");
    const fetch = lines.indexOf(
      `retry aws ssm get-parameter --name '${name}' --query Parameter.Value --output text > /etc/pki/ca-trust/source/anchors/agentpools.pem`,
    );
    assert.ok(fetch > 0, decoded.script);
    assert.ok(
      fetch < lines.indexOf("update-ca-trust extract") &&
        lines.indexOf("update-ca-trust extract") < lines.findIndex((l) => l.startsWith("retry dnf install")),
      "trusted before anything is downloaded",
    );
    // Smaller bundles take the free tier, counted in bytes.
    assert.deepEqual(
      [ssmParameterTier("a".repeat(4096)), ssmParameterTier("é".repeat(2049))],
      ["Standard", "Advanced"],
    );
    assert.match(
      decoded.files.get("/etc/systemd/system/agentpools-launcher.service")?.content as string,
      /Environment="NODE_EXTRA_CA_CERTS=\/etc\/pki\/ca-trust\/source\/anchors\/agentpools.pem"/,
    );
  });

  it("a CA bundle in the cacert.pem layout (titles and comments between certificates) is accepted and delivered whole", async () => {
    const { resources } = await deploy(
      () => new VcsAgentPool("ca-layout", vcsArgs({ customCaCertificates: CA_BUNDLE })),
      "ca-layout",
    );
    assert.equal(
      userDataOf(resources).decoded.files.get("/etc/pki/ca-trust/source/anchors/agentpools.pem")?.content,
      CA_BUNDLE,
    );
  });

  it("the same inputs give the same user-data bytes", async () => {
    // Registered twice under one name, as two runs of one program would.
    await deploy(() => new VcsAgentPool("same", vcsArgs({ parallelism: 7 })), "same");
    await deploy(() => new VcsAgentPool("same", vcsArgs({ parallelism: 7 })), "same");
    const renders = recorded.filter((r) => r.type === T.lt && r.name === "same-agents").map((r) => r.inputs.userData);
    assert.equal(renders.length, 2);
    assert.equal(renders[0], renders[1]);
  });

  it("two pools of each kind in one stack do not collide", async () => {
    const pools = [
      new WorkerPool("twin-w1", workerArgs()),
      new WorkerPool("twin-w2", workerArgs()),
      new VcsAgentPool("twin-v1", vcsArgs()),
      new VcsAgentPool("twin-v2", vcsArgs()),
      new FlowsAgentPool("twin-f1", flowsArgs()),
      new FlowsAgentPool("twin-f2", flowsArgs()),
    ];
    const groups = await Promise.all(pools.map((p) => valueOf(p.autoScalingGroupName)));
    const logs = await Promise.all(pools.map((p) => valueOf(p.logGroupName)));
    assert.equal(new Set(groups).size, 6);
    assert.equal(new Set(logs).size, 6);
    const resources = await settled("twin");
    const keys = resources.map((r) => `${r.type}::${r.name}`);
    assert.equal(new Set(keys).size, keys.length, "a resource name repeats");
  });

  it("a pool in a new Network's subnets waits for their NAT gateways and route table associations", async () => {
    const network = new Network("wait-net");
    await deploy(
      () => new VcsAgentPool("wait-net-pool", vcsArgs({ vpcId: network.vpcId, subnetIds: network.privateSubnetIds })),
      "wait-net",
    );
    const group = one(await settled("wait-net-pool"), T.asg);
    for (const needed of [
      "aws:ec2/natGateway:NatGateway::wait-net-nat-0",
      "aws:ec2/routeTableAssociation:RouteTableAssociation::wait-net-private-0",
      "aws:ec2/routeTableAssociation:RouteTableAssociation::wait-net-private-1",
    ]) {
      assert.ok(group.dependsOn.includes(needed), `the group does not wait for ${needed}`);
    }
  });

  for (const [kind, make, prefix, role, secrets] of [
    [
      "WorkerPool",
      () => new WorkerPool("largest-w", pastUserData(LARGEST.worker)),
      "largest-w",
      "launcher",
      [TOKENS.worker, PRIVATE_KEY_B64],
    ],
    [
      "FlowsAgentPool",
      () => new FlowsAgentPool("largest-f", pastUserData(LARGEST.flows)),
      "largest-f",
      "flows-agent",
      [TOKENS.flows],
    ],
  ] as const) {
    it(`${kind}: the largest configuration (past what user-data holds) fits, its configuration read at boot from a parameter only this pool reads, at a pinned version`, async () => {
      const { resources, outputs } = await deploy(make, prefix);
      const { raw, decoded } = userDataOf(resources);
      assert.ok(Buffer.from(raw, "base64").length <= USER_DATA_LIMIT, `${Buffer.from(raw, "base64").length} bytes`);
      const parameter = resources.find(
        (r) => r.type === T.parameter && r.name === `${prefix}-config`,
      ) as RecordedResource;
      const name = `/agentpools/${outputs.group}/config`;
      assert.deepEqual(
        { name: parameter.inputs.name, type: parameter.inputs.type, tier: parameter.inputs.tier },
        // The free tier while the value fits in it.
        { name, type: "String", tier: ssmParameterTier(parameter.inputs.value.value) },
      );
      const files = new Map(unpackFiles(parameter.inputs.value.value).map((f) => [f.path, f.content]));
      // The configuration as the runtime reads it: this pool's own resources, every setting.
      const config = JSON.parse(files.get(`/etc/agentpools/${role}.json`) as string);
      assert.deepEqual(
        [config.role, config.pool, config.aws.secretArn, config.aws.autoScalingGroupName],
        [role, prefix, outputs.secret, outputs.group],
      );
      const shipped = JSON.parse(files.get("/etc/agentpools/cloudwatch-agent.json") as string);
      assert.equal(shipped.logs.logs_collected.files.collect_list[0].log_group_name, outputs.logs);
      assert.ok(
        [...files.keys()].every((path) => !decodeUserData(raw).files.has(path)),
        "each file travels once",
      );
      assert.ok(files.has(`/etc/systemd/system/agentpools-${role}.service`) && files.has("/etc/docker/daemon.json"));
      if (kind === "WorkerPool") {
        assert.match(config.settings.maskedEnvVars.at(-1), /MASKED_SECRET_VARIABLE_29$/);
        assert.equal(
          files.get(config.settings.runInitializationPolicyFile),
          policyFileContent(LARGEST.worker.runInitializationPolicy),
        );
      }
      // Nothing secret: the credentials stay in Secrets Manager.
      for (const secret of secrets)
        assert.ok(![...files.values()].some((content) => content.includes(secret)), "a credential is in the parameter");
      // Pinned to the version the provider reports (2 in the mocks), before the services start.
      const lines = decoded.script.split("\n");
      const fetch = lines.indexOf(
        `retry aws ssm get-parameter --name '${name}:2' --query Parameter.Value --output text >/run/agentpools-config`,
      );
      assert.ok(fetch > 0 && fetch < lines.findIndex((l) => l.startsWith("systemctl enable")), decoded.script);
      const read = JSON.parse(one(resources, T.policy).inputs.policy).Statement.filter((st: { Action: string }) =>
        String(st.Action).startsWith("ssm:"),
      );
      assert.deepEqual(
        read.map((st: { Resource: string[] }) => st.Resource.at(-1)),
        [`arn:aws:ssm:${REGION}:${ACCOUNT}:parameter${name}`],
      );
      assert.ok(
        one(resources, T.asg).dependsOn.includes(`${T.parameter}::${prefix}-config`),
        "the parameter exists before an instance reads it",
      );
    });
  }

  it("a configuration within the user-data budget keeps it in user-data: no parameter, no SSM permission (the VCS and Flows defaults)", async () => {
    for (const [make, prefix, role] of [
      [() => new VcsAgentPool("inline-v", vcsArgs()), "inline-v", "vcs-agent"],
      [() => new FlowsAgentPool("inline-f", flowsArgs()), "inline-f", "flows-agent"],
    ] as const) {
      const { resources } = await deploy(make, prefix);
      const { raw, decoded } = userDataOf(resources);
      assert.ok(Buffer.from(raw, "base64").length <= USER_DATA_BUDGET, prefix);
      assert.ok(decoded.files.has(`/etc/agentpools/${role}.json`), prefix);
      assert.ok(!decoded.script.includes("ssm get-parameter"), prefix);
      assert.equal(byType(resources, T.parameter).length, 0, prefix);
      assert.ok(!one(resources, T.policy).inputs.policy.includes("ssm:"), prefix);
    }
  });

  it("a configuration over the user-data budget, though within EC2's limit, goes to its parameter (the largest Flows agent pool)", async () => {
    const spec = preparePool(
      "FlowsAgentPool",
      "flows-agent",
      "over-budget-f",
      flowsAgentPoolArgs,
      LARGEST.flows,
      flowsAgentPoolKind,
    );
    const inline = checkUserDataSize("over-budget-f", { ...spec, configDelivery: "userData" });
    assert.ok(inline > USER_DATA_BUDGET && inline <= USER_DATA_LIMIT, `${inline} bytes inline`);
    const { resources } = await deploy(() => new FlowsAgentPool("over-budget-f", LARGEST.flows), "over-budget-f");
    const { raw, decoded } = userDataOf(resources);
    assert.ok(Buffer.from(raw, "base64").length <= USER_DATA_BUDGET, `${Buffer.from(raw, "base64").length} bytes`);
    assert.ok(decoded.script.includes("ssm get-parameter --name '/agentpools/"), "read from its parameter at boot");
    assert.ok(decoded.files.has("/etc/agentpools/flows-agent.json"), "every file still reaches the instance");
    assert.equal(byType(resources, T.parameter).length, 1);
  });
});
