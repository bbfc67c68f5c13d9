import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as pulumi from "@pulumi/pulumi";
import { FlowsAgentPool, VcsAgentPool, WorkerPool, decodeUserData, USER_DATA_LIMIT, UserDataTooLargeError } from "../components";
import { runtimeBundle } from "../components/shared/bundles";
import type { AgentPool } from "../components/aws/agent-pool";
import { ssmParameterTier } from "../components/aws/pool-args";
import { ACCOUNT, REGION, byType, recorded, isSecretInput, one, settled, valueOf, type RecordedResource } from "../devkit/pulumi-mocks";
import { LARGEST, PRIVATE_KEY_B64, SUBNETS, TOKENS, VPC, flowsArgs, vcsArgs, workerArgs } from "../devkit/fixtures";

const T = {
  sg: "aws:ec2/securityGroup:SecurityGroup",
  lt: "aws:ec2/launchTemplate:LaunchTemplate",
  asg: "aws:autoscaling/group:Group",
  secret: "aws:secretsmanager/secret:Secret",
  secretVersion: "aws:secretsmanager/secretVersion:SecretVersion",
  role: "aws:iam/role:Role",
  policy: "aws:iam/rolePolicy:RolePolicy",
  attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
  logGroup: "aws:cloudwatch/logGroup:LogGroup",
  alarm: "aws:cloudwatch/metricAlarm:MetricAlarm",
  filter: "aws:cloudwatch/logMetricFilter:LogMetricFilter",
  parameter: "aws:ssm/parameter:Parameter",
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
  return { raw: lt.inputs.userData as string, decoded: decodeUserData(lt.inputs.userData) };
}

const kinds = [
  { kind: "WorkerPool", role: "launcher", make: (n: string) => new WorkerPool(n, workerArgs()), secrets: { SPACELIFT_TOKEN: TOKENS.worker, SPACELIFT_POOL_PRIVATE_KEY: PRIVATE_KEY_B64 }, type: "m7i.large", docker: true },
  { kind: "VcsAgentPool", role: "vcs-agent", make: (n: string) => new VcsAgentPool(n, vcsArgs()), secrets: { SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKENS.vcs }, type: "c7i.large", docker: false },
  { kind: "FlowsAgentPool", role: "flows-agent", make: (n: string) => new FlowsAgentPool(n, flowsArgs()), secrets: { FLOWS_AGENT_POOL_TOKEN: TOKENS.flows }, type: "c7i.xlarge", docker: true },
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

    it("launches with IMDSv2 required (hop limit 1), an encrypted gp3 root volume and no public IP", () => {
      const lt = one(deployed.resources, T.lt);
      assert.equal(lt.inputs.metadataOptions.httpTokens, "required");
      assert.equal(lt.inputs.metadataOptions.httpPutResponseHopLimit, 1);
      assert.equal(lt.inputs.blockDeviceMappings[0].ebs.encrypted, "true");
      assert.equal(lt.inputs.blockDeviceMappings[0].ebs.volumeType, "gp3");
      assert.equal(lt.inputs.networkInterfaces[0].associatePublicIpAddress, "false");
      assert.deepEqual(lt.inputs.networkInterfaces[0].securityGroups, [one(deployed.resources, T.sg).id]);
      assert.equal(lt.inputs.instanceType, k.type);
      assert.equal(lt.inputs.imageId, "ami-0bbbbbbbbbbbbbbb2", "AL2023 x86_64 from the public SSM parameter");
    });

    it("keeps its credentials in Secrets Manager as a Pulumi secret, and out of user-data", () => {
      const version = one(deployed.resources, T.secretVersion);
      assert.ok(isSecretInput(version.inputs.secretString), "secretString is a Pulumi secret");
      assert.deepEqual(JSON.parse(version.inputs.secretString.value), k.secrets);
      const { raw, decoded } = userDataOf(deployed.resources);
      const text = decoded.parts.map((p) => p.body).join("\n");
      for (const value of Object.values(k.secrets)) {
        assert.ok(!text.includes(value) && !raw.includes(Buffer.from(value).toString("base64")), "a secret value is in user-data");
      }
    });

    it("renders user-data that decodes to the role's bundle and its configuration", () => {
      const { decoded } = userDataOf(deployed.resources);
      assert.equal(decoded.files.get(`/opt/agentpools/${k.role}.js`)?.content, runtimeBundle(k.role));
      const config = JSON.parse(decoded.files.get(`/etc/agentpools/${k.role}.json`)?.content as string);
      assert.equal(config.role, k.role);
      assert.equal(config.pool, name);
      assert.deepEqual(config.aws, {
        secretArn: deployed.outputs.secret,
        autoScalingGroupName: deployed.outputs.group,
        launchHookName: "agent-connected",
        terminationHookName: "agent-drained",
        logGroupName: deployed.outputs.logs,
      });
      for (const variable of Object.keys(k.secrets)) assert.equal(config.env[variable], undefined);
      assert.equal(decoded.files.has("/etc/docker/daemon.json"), k.docker);
    });

    it("grants the instance role only this pool's secret, log group and Auto Scaling group", () => {
      const policy = JSON.parse(one(deployed.resources, T.policy).inputs.policy);
      const resources = policy.Statement.flatMap((s: { Resource: string | string[] }) => [s.Resource].flat());
      assert.deepEqual(resources.sort(), [
        `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/${deployed.outputs.group}`,
        `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${deployed.outputs.logs}:log-stream:*`,
        deployed.outputs.secret,
      ].sort());
      const actions = policy.Statement.flatMap((s: { Action: string | string[] }) => [s.Action].flat()).sort();
      assert.deepEqual(actions, ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat", "logs:CreateLogStream", "logs:PutLogEvents", "secretsmanager:GetSecretValue"]);
      const trust = JSON.parse(one(deployed.resources, T.role).inputs.assumeRolePolicy);
      assert.deepEqual(trust.Statement[0].Principal, { Service: "ec2.amazonaws.com" });
      assert.equal(byType(deployed.resources, T.attachment).length, 0, "no SSM access unless asked");
    });

    it("runs an Auto Scaling group with lifecycle hooks from creation and instance refresh", () => {
      const group = one(deployed.resources, T.asg);
      assert.deepEqual(group.inputs.vpcZoneIdentifiers, SUBNETS);
      assert.equal(group.inputs.name, deployed.outputs.group);
      assert.deepEqual(
        group.inputs.initialLifecycleHooks.map((h: Record<string, unknown>) => [h.name, h.lifecycleTransition, h.defaultResult]),
        [["agent-connected", "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"], ["agent-drained", "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"]],
      );
      assert.equal(group.inputs.instanceRefresh.strategy, "Rolling");
      assert.equal(group.inputs.launchTemplate.id, one(deployed.resources, T.lt).id);
      assert.deepEqual([group.inputs.minSize, group.inputs.maxSize], [1, 3]);
    });

    it("logs to its own group and raises alarms on no connected agent and on runtime errors", () => {
      assert.equal(one(deployed.resources, T.logGroup).inputs.retentionInDays, 30);
      const alarms = byType(deployed.resources, T.alarm);
      assert.equal(alarms.length, 2);
      const unserved = alarms.find((a) => a.name.endsWith("-no-agents"));
      assert.match(unserved?.inputs.metricQueries[2].expression, /IF\(desired > 0 AND inservice < 1, 1, 0\)/);
      assert.equal(unserved?.inputs.metricQueries[0].metric.dimensions.AutoScalingGroupName, deployed.outputs.group);
      assert.equal(one(deployed.resources, T.filter).inputs.pattern, '{ $.level = "error" }');
    });
  });
}

describe("AWS pools: options", () => {
  it("mixed instances: spot above an on-demand base, overrides listing every type", async () => {
    const { resources } = await deploy(() => new WorkerPool("mixed", workerArgs({ mixedInstances: { instanceTypes: ["m6i.large", "m7a.large"], onDemandBaseCapacity: 1, onDemandPercentageAboveBaseCapacity: 0 } })), "mixed");
    const group = one(resources, T.asg);
    assert.equal(group.inputs.launchTemplate, undefined);
    assert.deepEqual(group.inputs.mixedInstancesPolicy.launchTemplate.overrides.map((o: { instanceType: string }) => o.instanceType), ["m7i.large", "m6i.large", "m7a.large"]);
    assert.deepEqual(group.inputs.mixedInstancesPolicy.instancesDistribution, { onDemandBaseCapacity: 1, onDemandPercentageAboveBaseCapacity: 0, spotAllocationStrategy: "price-capacity-optimized" });
    assert.equal(group.inputs.capacityRebalance, true);
  });

  it("an existing secret: no secret is created and the policy names that one", async () => {
    const arn = `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:corp/vcs-agent-AbCdEf`;
    const { resources, outputs } = await deploy(() => new VcsAgentPool("reuse", vcsArgs({ token: undefined, existingSecretArn: arn })), "reuse");
    assert.equal(byType(resources, T.secret).length, 0);
    assert.equal(byType(resources, T.secretVersion).length, 0);
    assert.equal(outputs.secret, arn);
    assert.equal(JSON.parse(one(resources, T.policy).inputs.policy).Statement[0].Resource, arn);
  });

  it("KMS keys, SSM, a permissions boundary, extra statements and a Graviton type", async () => {
    const key = `arn:aws:kms:${REGION}:${ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
    const boundary = `arn:aws:iam::${ACCOUNT}:policy/agent-boundary`;
    const { resources } = await deploy(
      () =>
        new FlowsAgentPool(
          "keys",
          flowsArgs({
            instanceType: "c7g.xlarge",
            secretKmsKeyArn: key,
            logKmsKeyArn: key,
            volumeKmsKeyArn: key,
            ssmSessionManager: true,
            permissionsBoundaryArn: boundary,
            extraPolicyStatements: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::flows-assets/*" }],
            logRetentionDays: 365,
          }),
        ),
      "keys",
    );
    const policy = JSON.parse(one(resources, T.policy).inputs.policy);
    const decrypt = policy.Statement.find((s: { Sid?: string }) => s.Sid === "DecryptPoolSecret");
    assert.deepEqual(decrypt, { Sid: "DecryptPoolSecret", Effect: "Allow", Action: "kms:Decrypt", Resource: key, Condition: { StringEquals: { "kms:ViaService": `secretsmanager.${REGION}.amazonaws.com` } } });
    assert.ok(policy.Statement.some((s: { Action: string }) => s.Action === "s3:GetObject"));
    assert.equal(one(resources, T.role).inputs.permissionsBoundary, boundary);
    assert.equal(one(resources, T.attachment).inputs.policyArn, "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore");
    assert.equal(one(resources, T.secret).inputs.kmsKeyId, key);
    assert.equal(one(resources, T.logGroup).inputs.kmsKeyId, key);
    assert.equal(one(resources, T.logGroup).inputs.retentionInDays, 365);
    const lt = one(resources, T.lt);
    assert.equal(lt.inputs.blockDeviceMappings[0].ebs.kmsKeyId, key);
    assert.equal(lt.inputs.imageId, "ami-0aaaaaaaaaaaaaaa1", "the arm64 image for a Graviton type");
  });

  it("CA certificates too large for user-data come from an SSM parameter only this pool can read", async () => {
    // Five certificates of realistic size (random, so incompressible): inline, they cannot fit beside this configuration.
    const certificates = Array.from({ length: 5 }, () => `-----BEGIN CERTIFICATE-----\n${randomBytes(1000).toString("base64").match(/.{1,64}/g)?.join("\n")}\n-----END CERTIFICATE-----\n`).join("");
    assert.throws(() => new WorkerPool("ca-inline", { ...LARGEST.worker, customCaCertificates: certificates }), UserDataTooLargeError);
    const { resources, outputs } = await deploy(() => new WorkerPool("ca-ssm", { ...LARGEST.worker, customCaCertificates: certificates, customCaCertificatesDelivery: "ssmParameter" }), "ca-ssm");
    const parameter = one(resources, T.parameter);
    const name = `/agentpools/${outputs.group}/ca-certificates`;
    assert.deepEqual({ name: parameter.inputs.name, type: parameter.inputs.type, tier: parameter.inputs.tier }, { name, type: "String", tier: "Advanced" });
    // The provider marks every parameter value secret; the certificates arrive whole.
    assert.ok(isSecretInput(parameter.inputs.value));
    assert.equal(parameter.inputs.value.value, certificates);
    const policy = JSON.parse(one(resources, T.policy).inputs.policy);
    const read = policy.Statement.filter((s: { Action: string }) => String(s.Action).startsWith("ssm:"));
    assert.deepEqual(read, [{ Sid: "ReadPoolCaCertificates", Effect: "Allow", Action: "ssm:GetParameter", Resource: `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter${name}` }]);
    const { decoded, raw } = userDataOf(resources);
    assert.ok(Buffer.from(raw, "base64").length <= USER_DATA_LIMIT);
    assert.ok(!decoded.files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"), "the certificates are not in user-data");
    const lines = decoded.script.split("\n");
    const fetch = lines.indexOf(`aws ssm get-parameter --region '${REGION}' --name '${name}' --query Parameter.Value --output text > /etc/pki/ca-trust/source/anchors/agentpools.pem`);
    assert.ok(fetch > 0, decoded.script);
    assert.ok(fetch < lines.indexOf("update-ca-trust extract") && lines.indexOf("update-ca-trust extract") < lines.findIndex((l) => l.startsWith("dnf install")), "trusted before anything is downloaded");
    // Smaller bundles take the free tier, counted in bytes.
    assert.deepEqual([ssmParameterTier("a".repeat(4096)), ssmParameterTier("é".repeat(2049))], ["Standard", "Advanced"]);
    assert.match(decoded.files.get("/etc/systemd/system/agentpools-launcher.service")?.content as string, /Environment="NODE_EXTRA_CA_CERTS=\/etc\/pki\/ca-trust\/source\/anchors\/agentpools.pem"/);
  });

  it("secrets given as Outputs stay secret", async () => {
    const { resources } = await deploy(() => new VcsAgentPool("from-config", vcsArgs({ token: pulumi.secret(TOKENS.vcs) })), "from-config");
    const version = one(resources, T.secretVersion);
    assert.ok(isSecretInput(version.inputs.secretString));
    assert.ok(!decodeUserData(one(resources, T.lt).inputs.userData).parts.some((p) => p.body.includes(TOKENS.vcs)));
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

  for (const [kind, make] of [
    ["WorkerPool", () => new WorkerPool("largest-w", LARGEST.worker)],
    ["VcsAgentPool", () => new VcsAgentPool("largest-v", LARGEST.vcs)],
    ["FlowsAgentPool", () => new FlowsAgentPool("largest-f", LARGEST.flows)],
  ] as const) {
    it(`${kind}: the largest configuration fits in user-data`, async () => {
      const prefix = kind === "WorkerPool" ? "largest-w" : kind === "VcsAgentPool" ? "largest-v" : "largest-f";
      const { resources } = await deploy(make, prefix);
      const gzipped = Buffer.from(one(resources, T.lt).inputs.userData, "base64");
      assert.ok(gzipped.length <= USER_DATA_LIMIT, `${gzipped.length} bytes`);
      assert.ok(decodeUserData(gzipped).files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"));
    });
  }
});
