// `npm run preview`: runs the top-level program (examples/aws-new-vpc) offline, on an embedded
// default configuration, against the same AWS stand-in the tests use, and prints what a
// `pulumi up` would create: per pool its scaling settings, lifecycle hooks, security settings,
// what its instance role may do, and its user-data size.
import * as pulumi from "@pulumi/pulumi";
import { recorded, settled, valueOf, type RecordedResource } from "../devkit/pulumi-mocks";
import { decodeUserData, USER_DATA_LIMIT } from "../components/aws/userdata";
import { TOKENS, PRIVATE_KEY_B64 } from "../devkit/fixtures";

const DEFAULT_CONFIG = {
  "agentpools:gitEndpoint": "https://gitlab.corp.example.com",
  "agentpools:gitVendor": "gitlab",
  "agentpools:allowedProjects": "^(infrastructure|platform)/.*$",
  "agentpools:flowsPoolId": "01JDEMOPOOLID",
  "agentpools:flowsGatewayEndpoint": "https://gateway.useflows.eu",
  "agentpools:flowsBackendEndpoint": "https://useflows.eu",
};
// Demonstration credentials: they show where secrets go, and that they go nowhere else.
const DEMO_SECRETS = {
  "agentpools:vcsAgentToken": TOKENS.vcs,
  "agentpools:workerToken": TOKENS.worker,
  "agentpools:workerPrivateKey": PRIVATE_KEY_B64,
  "agentpools:flowsPoolToken": TOKENS.flows,
};

const find = (type: string, name: string) => recorded.find((r) => r.type === type && r.name === name);
const list = (items: unknown[]) => items.map(String).join(", ");

function describePool(lt: RecordedResource): string[] {
  const pool = lt.name.replace(/-agents$/, "");
  const groupResource = find("aws:autoscaling/group:Group", lt.name);
  const group = groupResource?.inputs ?? {};
  const sg = find("aws:ec2/securityGroup:SecurityGroup", lt.name)?.inputs ?? {};
  const policy = JSON.parse(find("aws:iam/rolePolicy:RolePolicy", `${pool}-instance`)?.inputs.policy ?? "{}");
  const hooks = recorded
    .filter((r) => r.type === "aws:autoscaling/lifecycleHook:LifecycleHook" && r.name.startsWith(`${pool}-agent-`))
    .map((r) => r.inputs);
  const gzipped = Buffer.from(lt.inputs.userData, "base64");
  // The pool's config parameter, when its configuration did not fit in user-data.
  const parameter = find("aws:ssm/parameter:Parameter", `${pool}-config`)?.inputs;
  const decoded = decodeUserData(gzipped, parameter?.value.value);
  const text = [decoded.script, ...[...decoded.files.values()].map((f) => f.content)].join("\n");
  const leaked = Object.values(DEMO_SECRETS).some((secret) => text.includes(secret));
  const pinned = / aws ssm get-parameter --name '[^']*:(\d+)'/.exec(decoded.script)?.[1];
  const config = JSON.parse(
    [...decoded.files.values()].find((f) => /^\/etc\/agentpools\/[a-z-]+\.json$/.test(f.path))?.content ?? "{}",
  );
  const unit = [...decoded.files.values()].find((f) => f.path.startsWith("/etc/systemd/system/"))?.content ?? "";
  const daemon = decoded.files.get("/etc/docker/daemon.json")?.content;
  const runsc = /releases\/release\/([^/]+)\/[^/]+\/runsc/.exec(decoded.script)?.[1];
  const refresh = group.instanceRefresh?.preferences ?? {};
  const env = config.env ?? {};
  const tracking = find("aws:autoscaling/policy:Policy", `${pool}-busy-share`)?.inputs;
  const load = tracking?.targetTrackingConfiguration.customizedMetricSpecification.metrics.find(
    (m: { returnData: boolean }) => m.returnData,
  );
  const fromZero = find("aws:autoscaling/policy:Policy", `${pool}-from-zero`);
  const dashboard = find("aws:cloudwatch/dashboard:Dashboard", `${pool}-dashboard`)?.inputs;
  return [
    `  ${pool}: ${config.role} on ${lt.inputs.instanceType}, group ${group.name}`,
    `    scaling: ${group.minSize}..${group.maxSize} instances${group.desiredCapacity === undefined ? "" : `, ${group.desiredCapacity} wanted`}; health ${group.healthCheckType} (grace ${group.healthCheckGracePeriod} s) and the runtime's own: unhealthy after ${config.aws?.unhealthyAfterSeconds} s disconnected`,
    `    policy: ${tracking ? `target tracking keeps ${load.expression} at ${tracking.targetTrackingConfiguration.targetValue}% (warm-up ${tracking.estimatedInstanceWarmup} s)${fromZero ? "; a step starts one instance when work is queued at zero" : ""}; Pulumi leaves the desired capacity to it (ignoreChanges ${list(groupResource?.ignoreChanges ?? [])})` : "none (fixed size)"}`,
    `    protection: the runtime protects its instance from scale-in while busy (at most ${config.aws?.protectSeconds} s a stretch, kept ${config.aws?.lingerSeconds} s after); refresh of protected instances: ${refresh.scaleInProtectedInstances}, through the drain; spot rebalancing ${group.capacityRebalance ? "on" : "off"}${group.warmPool ? `; warm pool ${group.warmPool.poolState}, min ${group.warmPool.minSize}` : ""}${group.maxInstanceLifetime ? `; replaced after ${group.maxInstanceLifetime} s` : ""}`,
    `    dashboard: ${dashboard?.dashboardName} (${JSON.parse(dashboard?.dashboardBody ?? '{"widgets":[]}')
      .widgets.map((w: { properties: { title: string } }) => w.properties.title)
      .join("; ")})`,
    `    replacement: instance refresh and maintenance keep ${refresh.minHealthyPercentage}..${refresh.maxHealthyPercentage}% of capacity (launch before terminate); metrics ${list(group.enabledMetrics ?? [])} every ${group.metricsGranularity}`,
    ...hooks.map(
      (h) =>
        `    hook ${h.name}: ${h.lifecycleTransition.replace("autoscaling:EC2_INSTANCE_", "").toLowerCase()}, ${h.heartbeatTimeout} s per heartbeat, then ${h.defaultResult}`,
    ),
    `    drain: up to ${config.drainTimeoutSeconds} s (termination hook renewed every ${config.aws?.heartbeatSeconds} s; systemd stop timeout ${/TimeoutStopSec=(\d+)/.exec(unit)?.[1]} s)`,
    `    instance: IMDSv2 ${lt.inputs.metadataOptions.httpTokens}, hop limit ${lt.inputs.metadataOptions.httpPutResponseHopLimit}; root volume gp3 encrypted=${lt.inputs.blockDeviceMappings[0].ebs.encrypted}; public IP ${lt.inputs.networkInterfaces[0].associatePublicIpAddress}; inbound rules ${sg.ingress?.length}; egress ${list(sg.egress?.[0]?.cidrBlocks ?? [])}`,
    ...(daemon
      ? [
          `    containers: Docker logging driver ${JSON.parse(daemon)["log-driver"]}; ${runsc ? `gVisor runsc ${runsc} (SHA-512 pinned)` : "no gVisor"}; ${
            config.role === "flows-agent"
              ? `executor ${env.FLOWS_EXECUTOR ?? "docker"}, network ${env.FLOWS_DOCKER_NETWORK ?? "bridge"}`
              : `runs on network ${env.SPACELIFT_WORKER_NETWORK ?? "bridge"}, runtime ${env.SPACELIFT_WORKER_RUNTIME ?? "runc"}`
          }`,
        ]
      : []),
    `    proxy: ${/HTTPS_PROXY=([^"]+)/.exec(unit)?.[1] ?? "none"}${/NO_PROXY=([^"]+)/.test(unit) ? `; around it: ${/NO_PROXY=([^"]+)/.exec(unit)?.[1]}` : ""}`,
    ...(policy.Statement ?? []).map(
      (s: { Effect: string; Action?: string | string[]; Resource?: string }) =>
        `    role may ${s.Effect === "Allow" ? "" : "not "}${list([s.Action ?? []].flat())} on ${s.Resource}`,
    ),
    `    configuration: ${parameter ? `from SSM parameter ${parameter.name} (${parameter.tier}, String), read at boot at version ${pinned}, the one this launch template pins` : "in user-data"}`,
    `    user-data ${gzipped.length} of ${USER_DATA_LIMIT} bytes gzipped (${((gzipped.length / USER_DATA_LIMIT) * 100).toFixed(1)}%); credentials in user-data: ${leaked ? "YES (bug)" : "none"}`,
  ];
}

async function main(): Promise<void> {
  pulumi.runtime.setAllConfig({ ...DEFAULT_CONFIG, ...DEMO_SECRETS }, Object.keys(DEMO_SECRETS));
  const program = await import("../examples/aws-new-vpc");
  await valueOf(program.pools, 10_000);
  await settled("", 10_000);

  console.log("agentpools: offline preview of examples/aws-new-vpc (no AWS account, nothing is created)\n");
  const counts = new Map<string, number>();
  for (const r of recorded) counts.set(r.type, (counts.get(r.type) ?? 0) + 1);
  console.log(`${recorded.length} resources would be created:`);
  for (const [type, count] of [...counts].sort()) console.log(`  ${String(count).padStart(3)}  ${type}`);

  console.log("\npools:");
  for (const lt of recorded.filter((r) => r.type === "aws:ec2/launchTemplate:LaunchTemplate"))
    console.log(describePool(lt).join("\n"));
  console.log('\nTo deploy for real: see README.md, "Deploy an example".');
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
