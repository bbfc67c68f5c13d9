import assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";
import { InvalidArgumentsError, kubernetes } from "../components";
import { runtimeBundle } from "../components/shared/bundles";
import { byType, isSecretInput, one, recorded, settled, valueOf, type RecordedResource } from "../devkit/pulumi-mocks";
import { PRIVATE_KEY_B64, TOKENS } from "../devkit/fixtures";

const T = {
  configMap: "kubernetes:core/v1:ConfigMap",
  secret: "kubernetes:core/v1:Secret",
  account: "kubernetes:core/v1:ServiceAccount",
  deployment: "kubernetes:apps/v1:Deployment",
  statefulSet: "kubernetes:apps/v1:StatefulSet",
  pdb: "kubernetes:policy/v1:PodDisruptionBudget",
  policy: "kubernetes:networking.k8s.io/v1:NetworkPolicy",
};

async function deploy(make: () => kubernetes.VcsAgent | kubernetes.FlowsAgent | kubernetes.WorkerPool, prefix: string) {
  const agent = make();
  await valueOf(agent.workloadName);
  return settled(prefix);
}

const podSpec = (resources: RecordedResource[]) => (byType(resources, T.deployment)[0] ?? one(resources, T.statefulSet)).inputs.spec.template.spec;
const envOf = (container: { env: { name: string; value?: string; valueFrom?: unknown }[] }) => Object.fromEntries(container.env.map((e) => [e.name, e.value ?? e.valueFrom]));

describe("Kubernetes components (mocks)", () => {
  it("VcsAgent: the shipped bundle in a ConfigMap, run non-root, read-only, without capabilities or a token", async () => {
    const resources = await deploy(
      () => new kubernetes.VcsAgent("k-git", { namespace: "agents", token: TOKENS.vcs, targetBaseEndpoint: "https://gitlab.corp:8443", vendor: "gitlab", tolerations: [{ key: "agents", operator: "Exists", effect: "NoSchedule" }], nodeSelector: { pool: "agents" } }),
      "k-git",
    );
    assert.equal(one(resources, T.configMap).inputs.data["vcs-agent.js"], runtimeBundle("vcs-agent"));
    const spec = podSpec(resources);
    const [container] = spec.containers;
    assert.deepEqual(container.command, ["node", "--max-semi-space-size=1", "--no-concurrent-recompilation", "/opt/agentpools/vcs-agent.js"]);
    assert.equal(container.image, "node:24.21.0-alpine");
    assert.deepEqual(container.securityContext, {
      runAsNonRoot: true,
      runAsUser: 1000,
      runAsGroup: 1000,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    assert.deepEqual(spec.securityContext.seccompProfile, { type: "RuntimeDefault" });
    assert.equal(spec.automountServiceAccountToken, false);
    assert.equal(one(resources, T.account).inputs.automountServiceAccountToken, false);
    assert.deepEqual(container.readinessProbe.exec.command, ["test", "-f", "/tmp/agentpools/ready"]);
    assert.match(container.livenessProbe.exec.command[2], /heartbeat/);
    assert.equal(spec.terminationGracePeriodSeconds, 90);
    assert.deepEqual(spec.tolerations, [{ key: "agents", operator: "Exists", effect: "NoSchedule" }]);
    assert.deepEqual(spec.nodeSelector, { pool: "agents" });
    assert.equal(spec.topologySpreadConstraints[0].topologyKey, "kubernetes.io/hostname");

    const env = envOf(container);
    assert.equal(env.SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT, "https://gitlab.corp:8443");
    assert.equal(env.SPACELIFT_VCS_AGENT_PARALLELISM, "4");
    assert.deepEqual(env.SPACELIFT_VCS_AGENT_POOL_TOKEN, { secretKeyRef: { name: "k-git-credentials", key: "SPACELIFT_VCS_AGENT_POOL_TOKEN" } });
    assert.deepEqual(env.SPACELIFT_METADATA_pod, { fieldRef: { fieldPath: "metadata.name" } });

    const secret = one(resources, T.secret);
    assert.ok(isSecretInput(secret.inputs.stringData));
    assert.deepEqual(secret.inputs.stringData.value, { SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKENS.vcs });
    const elsewhere = JSON.stringify(resources.filter((r) => r !== secret).map((r) => r.inputs));
    assert.ok(!elsewhere.includes(TOKENS.vcs), "the token appears outside the Secret");

    const labels = one(resources, T.deployment).inputs.metadata.labels;
    assert.deepEqual(
      [labels["app.kubernetes.io/name"], labels["app.kubernetes.io/instance"], labels["app.kubernetes.io/component"], labels["app.kubernetes.io/part-of"], labels["app.kubernetes.io/managed-by"]],
      ["agentpools-vcs-agent", "k-git", "vcs-agent", "agentpools", "pulumi"],
    );
    assert.deepEqual(one(resources, T.pdb).inputs.spec.maxUnavailable, 1);
    const policy = one(resources, T.policy).inputs.spec;
    assert.deepEqual(policy.policyTypes, ["Ingress", "Egress"]);
    assert.deepEqual(policy.ingress, []);
    assert.deepEqual(policy.egress[1].ports.map((p: { port: number }) => p.port), [443, 8443], "the gateway and the VCS only");
    assert.ok(resources.every((r) => r.type.startsWith("agentpools:") || r.inputs.metadata?.namespace === "agents"));
  });

  it("VcsAgent with an existing Secret: none is created and the keys are mapped", async () => {
    const resources = await deploy(
      () => new kubernetes.VcsAgent("k-reuse", { targetBaseEndpoint: "https://git.corp", vendor: "github_enterprise", existingSecret: { name: "vcs-agent", keys: { SPACELIFT_VCS_AGENT_POOL_TOKEN: "token" } } }),
      "k-reuse",
    );
    assert.equal(byType(resources, T.secret).length, 0);
    assert.deepEqual(envOf(podSpec(resources).containers[0]).SPACELIFT_VCS_AGENT_POOL_TOKEN, { secretKeyRef: { name: "vcs-agent", key: "token" } });
  });

  it("FlowsAgent: runtimes as processes in the pod, with their own scratch volume", async () => {
    const resources = await deploy(
      () => new kubernetes.FlowsAgent("k-flows", { poolId: "01POOL", poolToken: pulumi.secret(TOKENS.flows), gatewayEndpoint: "https://gateway.useflows.eu", backendEndpoint: "https://useflows.eu", customCaCertificates: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" }),
      "k-flows",
    );
    const [container] = podSpec(resources).containers;
    const env = envOf(container);
    assert.equal(env.FLOWS_EXECUTOR, "process");
    assert.equal(env.NODE_EXTRA_CA_CERTS, "/etc/agentpools/ca/ca.pem");
    assert.ok(container.volumeMounts.some((m: { mountPath: string }) => m.mountPath === "/var/lib/agentpools/flows-mounts"));
    assert.ok(isSecretInput(one(resources, T.secret).inputs.stringData));
    assert.equal(one(resources, T.policy).inputs.spec.egress[1].ports, undefined, "flow code may reach any port unless narrowed");
  });

  it("WorkerPool: a privileged Docker-in-Docker sidecar only; the launcher stays unprivileged", async () => {
    const resources = await deploy(() => new kubernetes.WorkerPool("k-workers", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64 }), "k-workers");
    const spec = podSpec(resources);
    const [launcher, docker] = spec.containers;
    assert.equal(launcher.securityContext.runAsNonRoot, true);
    assert.equal(launcher.securityContext.privileged, undefined);
    assert.equal(envOf(launcher).DOCKER_HOST, "unix:///var/run/dind/docker.sock");
    assert.equal(envOf(launcher).SPACELIFT_LAUNCHER_RUN_TIMEOUT, "70m");
    assert.equal(docker.securityContext.privileged, true);
    assert.deepEqual(docker.args, ["--host=unix:///var/run/dind/docker.sock", "--group=1000"]);
    assert.equal(spec.terminationGracePeriodSeconds, 4530);
    assert.equal(byType(resources, T.statefulSet).length, 0);
    // The engine bind-mounts each run's workspace: both containers see the runs volume at one path.
    const runsMount = (c: { volumeMounts: { name: string; mountPath: string }[] }) => c.volumeMounts.find((m) => m.name === "runs")?.mountPath;
    assert.equal(runsMount(launcher), "/var/lib/agentpools/runs");
    assert.equal(runsMount(docker), runsMount(launcher));
    assert.equal(envOf(launcher).AGENTPOOLS_WORKER_EXECUTOR, "docker");
  });

  it("WorkerPool: a run initialization policy given as an object reaches the launcher as a file", async () => {
    const policy = { allowedImages: ["public.ecr.aws/spacelift/*"], deniedCommands: ["terraform\\s+destroy"] };
    const resources = await deploy(() => new kubernetes.WorkerPool("k-policy", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64, runInitializationPolicy: policy }), "k-policy");
    const spec = podSpec(resources);
    const [launcher] = spec.containers;
    const file = envOf(launcher).SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY;
    assert.equal(file, "/etc/agentpools/policy/run-initialization-policy.json");
    const mount = launcher.volumeMounts.find((m: { name: string }) => m.name === "policy");
    assert.equal(`${mount.mountPath}/run-initialization-policy.json`, file);
    const volume = spec.volumes.find((v: { name: string }) => v.name === "policy");
    const key = volume.configMap.items[0].key;
    assert.deepEqual(JSON.parse(one(resources, T.configMap).inputs.data[key]), policy);
  });

  it("WorkerPool as a StatefulSet keeps the engine's data on a volume per pod", async () => {
    const resources = await deploy(() => new kubernetes.WorkerPool("k-sts", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64, statefulSet: true, storage: { size: "80Gi", storageClassName: "gp3" } }), "k-sts");
    const sts = one(resources, T.statefulSet);
    assert.deepEqual(sts.inputs.spec.volumeClaimTemplates[0].spec.resources.requests, { storage: "80Gi" });
    assert.equal(sts.inputs.spec.volumeClaimTemplates[0].spec.storageClassName, "gp3");
    assert.ok(!sts.inputs.spec.template.spec.volumes.some((v: { name: string }) => v.name === "docker-data"), "the claim, not an emptyDir");
  });

  const bad: [string, () => unknown, string][] = [
    ["namespace with capitals", () => new kubernetes.VcsAgent("kb-1", { namespace: "Agents", token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab" }), "namespace"],
    ["negative replicas", () => new kubernetes.VcsAgent("kb-2", { replicas: -1, token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab" }), "replicas"],
    ["memory in words", () => new kubernetes.VcsAgent("kb-3", { resources: { limits: { memory: "lots" } }, token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab" }), "resources.limits.memory"],
    ["unknown toleration operator", () => new kubernetes.VcsAgent("kb-4", { tolerations: [{ operator: "Maybe" as never }], token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab" }), "tolerations[0].operator"],
    ["missing token", () => new kubernetes.VcsAgent("kb-5", { targetBaseEndpoint: "https://g", vendor: "gitlab" }), "token"],
    ["Docker executor on Kubernetes", () => new kubernetes.FlowsAgent("kb-6", { executor: "docker" as never, poolId: "p", poolToken: "t", gatewayEndpoint: "https://g", backendEndpoint: "https://b" }), "executor"],
    ["storage size without a unit", () => new kubernetes.WorkerPool("kb-7", { token: "t", poolPrivateKey: PRIVATE_KEY_B64, storage: { size: "50" } }), "storage.size"],
    ["egress to a bad block", () => new kubernetes.VcsAgent("kb-8", { egress: { cidrBlocks: ["10.0.0.0"] }, token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab" }), "egress.cidrBlocks[0]"],
    ["the process executor for workers", () => new kubernetes.WorkerPool("kb-9", { token: "t", poolPrivateKey: PRIVATE_KEY_B64, executor: "process" }), "executor"],
    ["a policy with an unknown rule", () => new kubernetes.WorkerPool("kb-10", { token: "t", poolPrivateKey: PRIVATE_KEY_B64, runInitializationPolicy: { allowedImage: ["x"] } as never }), "runInitializationPolicy.allowedImage"],
  ];
  for (const [description, make, field] of bad) {
    it(`refuses ${description} before anything is created, naming ${field}`, () => {
      const before = recorded.length;
      assert.throws(make, (error: InvalidArgumentsError) => error instanceof InvalidArgumentsError && error.problems.some((p) => p.startsWith(`${field}:`)));
      assert.equal(recorded.length, before);
    });
  }

  it("examples/kubernetes runs under the mocks", async () => {
    const secrets = { "agentpools:vcsAgentToken": "ex-vcs-token-1234", "agentpools:workerToken": "ex-worker-token-1234", "agentpools:workerPrivateKey": PRIVATE_KEY_B64, "agentpools:flowsPoolToken": "ex-flows-token-1234" };
    pulumi.runtime.setAllConfig(
      { "agentpools:namespace": "agentpools", "agentpools:gitEndpoint": "https://gitlab.corp.example.com", "agentpools:flowsPoolId": "01JEXAMPLE", "agentpools:flowsGatewayEndpoint": "https://gateway.useflows.eu", "agentpools:flowsBackendEndpoint": "https://useflows.eu", ...secrets },
      Object.keys(secrets),
    );
    const program = await import("../examples/kubernetes");
    assert.deepEqual(await valueOf(program.workloads), { git: "git", workers: "workers", flows: "flows" });
    const resources = [...(await settled("git")), ...(await settled("workers")), ...(await settled("flows"))].filter((r) => r.type.startsWith("kubernetes:"));
    assert.ok(byType(resources, T.secret).every((s) => isSecretInput(s.inputs.stringData)));
    const plain = JSON.stringify(resources.filter((r) => r.type !== T.secret).map((r) => r.inputs));
    for (const value of Object.values(secrets)) assert.ok(!plain.includes(value));
    assert.equal(byType(resources, T.statefulSet).length, 1);
  });
});
