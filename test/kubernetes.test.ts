import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { utimesSync, writeFileSync } from "node:fs";
import * as pulumi from "@pulumi/pulumi";
import { InvalidArgumentsError, kubernetes } from "../components";
import { flowsRunnerBundle, runtimeBundle } from "../components/shared/bundles";
import { byType, isSecretInput, one, recorded, settled, valueOf, type RecordedResource } from "../devkit/pulumi-mocks";
import { CA_EC, DOCKER_ONLY_VALUES, PRIVATE_KEY_B64, TOKENS } from "../devkit/fixtures";
import { scratchDir } from "../devkit/helpers";
import { renderMetrics } from "../gateway/metrics";
import { quantityValue } from "../components/kubernetes/api-rules";
import {
  admissionProblems,
  apiServerProblems,
  autoscalerProblems,
  enforcedLevel,
  manifestOf,
  podSecurityProblems,
  podTemplateOf,
  schemaProblems,
  type Level,
} from "./kubernetes-admission";

const T = {
  configMap: "kubernetes:core/v1:ConfigMap",
  secret: "kubernetes:core/v1:Secret",
  account: "kubernetes:core/v1:ServiceAccount",
  deployment: "kubernetes:apps/v1:Deployment",
  statefulSet: "kubernetes:apps/v1:StatefulSet",
  pdb: "kubernetes:policy/v1:PodDisruptionBudget",
  policy: "kubernetes:networking.k8s.io/v1:NetworkPolicy",
  scaledObject: "kubernetes:keda.sh/v1alpha1:ScaledObject",
  hpa: "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
};

/** Each deployed component's resource name and the Pod Security level its namespace must enforce. */
const deployed = new Map<string, Level>();

async function deploy(make: () => kubernetes.VcsAgent | kubernetes.FlowsAgent | kubernetes.WorkerPool, prefix: string) {
  const agent = make();
  await valueOf(agent.workloadName);
  deployed.set(prefix, agent.podSecurityLevel);
  return settled(prefix);
}

const podSpec = (resources: RecordedResource[]) =>
  (byType(resources, T.deployment)[0] ?? one(resources, T.statefulSet)).inputs.spec.template.spec;
const envOf = (container: { env: { name: string; value?: string; valueFrom?: unknown }[] }) =>
  Object.fromEntries(container.env.map((e) => [e.name, e.value ?? e.valueFrom]));

describe("Kubernetes components (mocks)", () => {
  it("VcsAgent: the shipped bundle in a ConfigMap, run non-root, read-only, without capabilities or a token", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.VcsAgent("k-git", {
          namespace: "agents",
          token: TOKENS.vcs,
          targetBaseEndpoint: "https://gitlab.corp:8443",
          vendor: "gitlab",
          tolerations: [{ key: "agents", operator: "Exists", effect: "NoSchedule" }],
          nodeSelector: { pool: "agents" },
        }),
      "k-git",
    );
    assert.equal(one(resources, T.configMap).inputs.data["vcs-agent.js"], runtimeBundle("vcs-agent"));
    const spec = podSpec(resources);
    const [container] = spec.containers;
    assert.deepEqual(container.command, [
      "node",
      "--disable-sigusr1",
      "--max-semi-space-size=1",
      "--no-concurrent-recompilation",
      "/opt/agentpools/vcs-agent.js",
    ]);
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
    assert.equal(spec.securityContext.sysctls, undefined, "a VCS agent's pod leaves the node's sysctls alone");
    assert.equal(spec.automountServiceAccountToken, false);
    assert.equal(one(resources, T.account).inputs.automountServiceAccountToken, false);
    assert.deepEqual(container.readinessProbe.exec.command, ["test", "-f", "/run/agentpools/ready"]);
    // The rendered liveness command: a heartbeat of the last minute passes; a stale one, or one dated in the future
    // (as a planted file could be), fails.
    const status = scratchDir("liveness-");
    const [sh, ...args] = container.livenessProbe.exec.command.map((arg: string) =>
      arg.replace("/run/agentpools", status),
    );
    const alive = (mtime: Date) => {
      writeFileSync(`${status}/heartbeat`, "");
      utimesSync(`${status}/heartbeat`, mtime, mtime);
      return spawnSync(sh, args).status === 0;
    };
    assert.deepEqual([new Date(), new Date(Date.now() - 120_000), new Date("2099-01-01")].map(alive), [
      true,
      false,
      false,
    ]);
    assert.equal(spec.terminationGracePeriodSeconds, 90);
    assert.deepEqual(spec.tolerations, [{ key: "agents", operator: "Exists", effect: "NoSchedule" }]);
    assert.deepEqual(spec.nodeSelector, { pool: "agents" });
    assert.equal(spec.topologySpreadConstraints[0].topologyKey, "kubernetes.io/hostname");

    const env = envOf(container);
    assert.equal(env.SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT, "https://gitlab.corp:8443");
    assert.equal(env.SPACELIFT_VCS_AGENT_PARALLELISM, "4");
    assert.deepEqual(env.SPACELIFT_VCS_AGENT_POOL_TOKEN, {
      secretKeyRef: { name: "k-git-credentials", key: "SPACELIFT_VCS_AGENT_POOL_TOKEN" },
    });
    assert.deepEqual(env.SPACELIFT_METADATA_pod, { fieldRef: { fieldPath: "metadata.name" } });

    const secret = one(resources, T.secret);
    assert.ok(isSecretInput(secret.inputs.stringData));
    assert.deepEqual(secret.inputs.stringData.value, { SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKENS.vcs });
    const elsewhere = JSON.stringify(resources.filter((r) => r !== secret).map((r) => r.inputs));
    assert.ok(!elsewhere.includes(TOKENS.vcs), "the token appears outside the Secret");

    const labels = one(resources, T.deployment).inputs.metadata.labels;
    assert.deepEqual(
      [
        labels["app.kubernetes.io/name"],
        labels["app.kubernetes.io/instance"],
        labels["app.kubernetes.io/component"],
        labels["app.kubernetes.io/part-of"],
        labels["app.kubernetes.io/managed-by"],
      ],
      ["agentpools-vcs-agent", "k-git", "vcs-agent", "agentpools", "pulumi"],
    );
    assert.deepEqual(one(resources, T.pdb).inputs.spec.maxUnavailable, 1);
    const policy = one(resources, T.policy).inputs.spec;
    assert.deepEqual(policy.policyTypes, ["Ingress", "Egress"]);
    assert.deepEqual(policy.ingress, []);
    assert.deepEqual(
      policy.egress[1].ports.map((p: { port: number }) => p.port),
      [443, 8443],
      "the gateway and the VCS only",
    );
    assert.ok(resources.every((r) => r.type.startsWith("agentpools:") || r.inputs.metadata?.namespace === "agents"));
  });

  it("VcsAgent with an existing Secret: none is created and the keys are mapped", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.VcsAgent("k-reuse", {
          targetBaseEndpoint: "https://git.corp",
          vendor: "github_enterprise",
          existingSecret: { name: "vcs-agent", keys: { SPACELIFT_VCS_AGENT_POOL_TOKEN: "token" } },
        }),
      "k-reuse",
    );
    assert.equal(byType(resources, T.secret).length, 0);
    assert.deepEqual(envOf(podSpec(resources).containers[0]).SPACELIFT_VCS_AGENT_POOL_TOKEN, {
      secretKeyRef: { name: "vcs-agent", key: "token" },
    });
  });

  it("FlowsAgent: runtimes as processes in the pod, with their own scratch volume", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.FlowsAgent("k-flows", {
          poolId: "01POOL",
          poolToken: pulumi.secret(TOKENS.flows),
          gatewayEndpoint: "https://gateway.useflows.eu",
          backendEndpoint: "https://useflows.eu",
          customCaCertificates: CA_EC,
        }),
      "k-flows",
    );
    const [container] = podSpec(resources).containers;
    const env = envOf(container);
    assert.equal(env.FLOWS_EXECUTOR, "process");
    assert.equal(env.NODE_EXTRA_CA_CERTS, "/etc/agentpools/ca/ca.pem");
    assert.ok(
      container.volumeMounts.some((m: { mountPath: string }) => m.mountPath === "/var/lib/agentpools/flows-mounts"),
    );
    assert.ok(isSecretInput(one(resources, T.secret).inputs.stringData));
    assert.equal(
      one(resources, T.policy).inputs.spec.egress[1].ports,
      undefined,
      "flow code may reach any port unless narrowed",
    );
    // Runtimes start on the runner's own bundle, mounted beside the agent's.
    const { data } = one(resources, T.configMap).inputs;
    assert.deepEqual(
      [data["flows-agent.js"], data["flows-runner.js"]],
      [runtimeBundle("flows-agent"), flowsRunnerBundle()],
    );
    const runtimeVolume = podSpec(resources).volumes.find((v: { name: string }) => v.name === "runtime");
    assert.deepEqual(
      runtimeVolume.configMap.items.map((i: { path: string }) => i.path),
      ["flows-agent.js", "flows-runner.js", "config.json"],
    );
    // Runtimes' uids write nowhere in the pod but their scratch volume: no /tmp to fill or plant files in, the status
    // files on a volume of their own, every emptyDir capped.
    const mounts = Object.fromEntries(
      container.volumeMounts.map((m: { mountPath: string; name: string }) => [m.mountPath, m.name]),
    );
    assert.equal(mounts["/tmp"], undefined);
    assert.equal(mounts["/run/agentpools"], "status");
    assert.equal(env.AGENTPOOLS_STATUS_DIR, "/run/agentpools");
    const emptyDirs = podSpec(resources).volumes.filter((v: { emptyDir?: unknown }) => v.emptyDir);
    assert.deepEqual(
      emptyDirs.map((v: { name: string; emptyDir: { sizeLimit?: string } }) => [v.name, v.emptyDir.sizeLimit]),
      [
        ["status", "1Mi"],
        ["runtimes", "2Gi"],
      ],
    );
    // SysV shared memory a runtime leaves goes with its last process (a safe sysctl, admitted at baseline).
    assert.deepEqual(podSpec(resources).securityContext.sysctls, [{ name: "kernel.shm_rmid_forced", value: "1" }]);
  });

  it("WorkerPool: a privileged Docker-in-Docker sidecar only; the launcher is root with two capabilities", async () => {
    const resources = await deploy(
      () => new kubernetes.WorkerPool("k-workers", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64 }),
      "k-workers",
    );
    const spec = podSpec(resources);
    const [launcher] = spec.containers;
    const [docker] = spec.initContainers;
    assert.deepEqual(
      spec.containers.map((c: { name: string }) => c.name),
      ["launcher"],
    );
    // What removing a root container's leftovers takes, no more: no escalation, read-only, the default seccomp.
    assert.deepEqual(launcher.securityContext, {
      runAsNonRoot: false,
      runAsUser: 0,
      runAsGroup: 0,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"], add: ["DAC_OVERRIDE", "FOWNER"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    // Baseline's rules for the launcher (capabilities within its list, no privilege): only the engine needs more.
    assert.deepEqual(
      podSecurityProblems({ spec: { ...spec, initContainers: [] } }, "baseline"),
      [],
      "the launcher alone meets baseline",
    );
    assert.equal(envOf(launcher).DOCKER_HOST, "unix:///var/run/dind/docker.sock");
    assert.equal(envOf(launcher).SPACELIFT_LAUNCHER_RUN_TIMEOUT, "70m");
    assert.equal(docker.securityContext.privileged, true);
    assert.equal(spec.terminationGracePeriodSeconds, 4530);
    assert.equal(byType(resources, T.statefulSet).length, 0);
    // The engine bind-mounts each run's workspace: both containers see the runs volume at one path.
    const runsMount = (c: { volumeMounts: { name: string; mountPath: string }[] }) =>
      c.volumeMounts.find((m) => m.name === "runs")?.mountPath;
    assert.equal(runsMount(launcher), "/var/lib/agentpools/runs");
    assert.equal(runsMount(docker), runsMount(launcher));
    assert.equal(envOf(launcher).AGENTPOOLS_WORKER_EXECUTOR, "docker");
    assert.equal(
      spec.volumes.some((v: Record<string, unknown>) => v.hostPath),
      false,
    );
  });

  it("WorkerPool: the engine is a native sidecar that outlives the launcher and listens on the pod's socket only", async () => {
    const resources = await deploy(
      () => new kubernetes.WorkerPool("k-engine", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64 }),
      "k-engine",
    );
    const spec = podSpec(resources);
    const [docker] = spec.initContainers;
    // An init container with restartPolicy Always is a sidecar (Kubernetes 1.29+): the kubelet
    // starts it before the regular containers and, on termination, signals it only after every
    // regular container has exited (the sidecar containers page of the Kubernetes docs).
    assert.equal(docker.restartPolicy, "Always");
    assert.equal(
      spec.containers.some((c: { name: string }) => c.name === "docker"),
      false,
      "not a regular container, signalled at once",
    );
    assert.deepEqual(
      docker.startupProbe.exec.command,
      ["docker", "--host=unix:///var/run/dind/docker.sock", "version"],
      "the launcher starts once the engine answers",
    );
    // The docker image's entrypoint adds --host=tcp://0.0.0.0:2376 (or 2375 without TLS) when
    // its first argument starts with "-": the first argument is the daemon itself instead.
    assert.equal(docker.args[0], "dockerd");
    assert.equal(docker.command, undefined, "the image's entrypoint still sets up the nested cgroups");
    const hosts = docker.args.filter((a: string) => a.startsWith("--host") || a === "-H");
    assert.deepEqual(hosts, ["--host=unix:///var/run/dind/docker.sock"]);
    assert.ok(!JSON.stringify(docker).includes("tcp://"));
    // The launcher drains for as long as the pool says (the runtime reads it from its configuration).
    const [launcher] = spec.containers;
    const configPath = envOf(launcher).AGENTPOOLS_CONFIG;
    assert.equal(configPath, "/opt/agentpools/config.json");
    const config = JSON.parse(one(resources, T.configMap).inputs.data["config.json"]);
    assert.deepEqual(config, { role: "launcher", pool: "k-engine", settings: {}, drainTimeoutSeconds: 4500 });
    assert.equal(
      spec.terminationGracePeriodSeconds,
      config.drainTimeoutSeconds + 30,
      "the grace period covers the drain",
    );
    const runtimeVolume = spec.volumes.find((v: { name: string }) => v.name === "runtime");
    assert.ok(runtimeVolume.configMap.items.some((i: { path: string }) => i.path === "config.json"));
  });

  it("WorkerPool: a run initialization policy given as an object reaches the launcher as a file", async () => {
    const policy = { allowedImages: ["public.ecr.aws/spacelift/*"], deniedCommands: ["terraform\\s+destroy"] };
    const resources = await deploy(
      () =>
        new kubernetes.WorkerPool("k-policy", {
          token: TOKENS.worker,
          poolPrivateKey: PRIVATE_KEY_B64,
          runInitializationPolicy: policy,
        }),
      "k-policy",
    );
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

  it("WorkerPool: the disk a pod may fill is bounded, volume by volume and container by container, as the kubelet counts it", async () => {
    const quantity = (text: string) => quantityValue(text) as number;
    const check = (spec: any, runs: string, engine: string | undefined) => {
      const volume = (name: string) => spec.volumes.find((v: { name: string }) => v.name === name);
      assert.equal(volume("runs").emptyDir.sizeLimit, runs);
      assert.equal(volume("docker-data")?.emptyDir.sizeLimit, engine);
      // Every container has an ephemeral-storage limit: only then has the pod one, their sum (a native sidecar's
      // included), which its containers' writable layers, logs and emptyDir volumes count against together.
      const containers = [...spec.initContainers, ...spec.containers];
      for (const c of containers) {
        const { requests, limits } = c.resources;
        assert.ok(limits["ephemeral-storage"] && requests["ephemeral-storage"], `${c.name}: both set`);
        assert.ok(quantity(requests["ephemeral-storage"]) <= quantity(limits["ephemeral-storage"]), c.name);
      }
      const podLimit = containers.reduce((sum, c) => sum + quantity(c.resources.limits["ephemeral-storage"]), 0);
      // Each volume can reach its own limit (the kubelet then evicts this pod), never the node's disk.
      for (const v of spec.volumes.filter((v: any) => v.emptyDir))
        assert.ok(v.emptyDir.sizeLimit && quantity(v.emptyDir.sizeLimit) <= podLimit, `${v.name}: a sizeLimit within`);
      return Object.fromEntries(containers.map((c) => [c.name, c.resources]));
    };
    const defaults = check(
      podSpec(
        await deploy(
          () => new kubernetes.WorkerPool("k-disk", { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64 }),
          "k-disk",
        ),
      ),
      "10Gi",
      "30Gi",
    );
    assert.deepEqual(defaults, {
      docker: {
        requests: { cpu: "1", memory: "2Gi", "ephemeral-storage": "5Gi" },
        limits: { memory: "4Gi", "ephemeral-storage": "30Gi" },
      },
      launcher: {
        requests: { cpu: "100m", memory: "128Mi", "ephemeral-storage": "1Gi" },
        limits: { memory: "256Mi", "ephemeral-storage": "10Gi" },
      },
    });
    const set = check(
      podSpec(
        await deploy(
          () =>
            new kubernetes.WorkerPool("k-disk-sts", {
              token: TOKENS.worker,
              poolPrivateKey: PRIVATE_KEY_B64,
              statefulSet: true,
              disk: { runs: { request: "2Gi", limit: "40Gi" }, engine: { request: "1Gi", limit: "2Gi" } },
            }),
          "k-disk-sts",
        ),
      ),
      "40Gi",
      undefined,
    );
    assert.deepEqual(
      [set.launcher.limits["ephemeral-storage"], set.launcher.requests["ephemeral-storage"]],
      ["40Gi", "2Gi"],
    );
    assert.deepEqual(
      set.docker.limits["ephemeral-storage"],
      "2Gi",
      "the engine's own layer and logs: its data is claimed",
    );
  });

  it("WorkerPool as a StatefulSet keeps the engine's data on a volume per pod", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.WorkerPool("k-sts", {
          token: TOKENS.worker,
          poolPrivateKey: PRIVATE_KEY_B64,
          statefulSet: true,
          storage: { size: "80Gi", storageClassName: "gp3" },
        }),
      "k-sts",
    );
    const sts = one(resources, T.statefulSet);
    assert.deepEqual(sts.inputs.spec.volumeClaimTemplates[0].spec.resources.requests, { storage: "80Gi" });
    assert.equal(sts.inputs.spec.volumeClaimTemplates[0].spec.storageClassName, "gp3");
    assert.ok(
      !sts.inputs.spec.template.spec.volumes.some((v: { name: string }) => v.name === "docker-data"),
      "the claim, not an emptyDir",
    );
  });

  const PROMETHEUS = "http://prometheus.monitoring.svc:9090";

  it("WorkerPool with KEDA: a ScaledObject on the gateway's queue, and the replicas left to it", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.WorkerPool("k-keda", {
          token: TOKENS.worker,
          poolPrivateKey: PRIVATE_KEY_B64,
          autoscaling: {
            kind: "keda",
            serverAddress: PROMETHEUS,
            pool: "team_a-workers",
            minReplicas: 0,
            maxReplicas: 20,
          },
        }),
      "k-keda",
    );
    const deployment = one(resources, T.deployment);
    assert.equal(deployment.inputs.spec.replicas, undefined, "Pulumi must not own spec.replicas: the autoscaler does");
    const scaler = one(resources, T.scaledObject);
    assert.equal(scaler.inputs.metadata.namespace, deployment.inputs.metadata.namespace);
    assert.deepEqual(scaler.inputs.spec.scaleTargetRef, {
      apiVersion: "apps/v1",
      kind: "Deployment",
      name: deployment.inputs.metadata.name,
    });
    assert.deepEqual(
      [
        scaler.inputs.spec.minReplicaCount,
        scaler.inputs.spec.maxReplicaCount,
        scaler.inputs.spec.pollingInterval,
        scaler.inputs.spec.cooldownPeriod,
      ],
      [0, 20, 15, 300],
    );
    const [trigger] = scaler.inputs.spec.triggers;
    assert.equal(trigger.type, "prometheus");
    assert.equal(trigger.metricType, "AverageValue");
    assert.deepEqual(trigger.metadata, {
      serverAddress: PROMETHEUS,
      query: 'sum(agentpools_queued{pool="team_a-workers"}) + sum(agentpools_busy_agents{pool="team_a-workers"})',
      threshold: "0.7",
      activationThreshold: "0",
      ignoreNullValues: "false",
    });
    assert.equal(trigger.authenticationRef, undefined);
    // Every series the query selects is one the gateway serves for that pool, and no other pool's.
    const served = renderMetrics([
      { name: "team_a-workers", kind: "worker", connections: 2, queued: 3, agents: [{ active: 1 }, { active: 0 }] },
      { name: "other", kind: "worker", connections: 1, queued: 9, agents: [{ active: 1 }] },
    ]).split("\n");
    const selectors = [...trigger.metadata.query.matchAll(/([a-z_]+)\{pool="([^"]+)"\}/g)];
    assert.equal(selectors.length, 2);
    const value = selectors
      .map(([, metric, pool]) => served.filter((line) => line.startsWith(`${metric}{pool="${pool}",`)))
      .map((lines) => (assert.equal(lines.length, 1), Number(lines[0].split(" ").at(-1))))
      .reduce((a, b) => a + b);
    assert.equal(value, 4, "3 queued + 1 busy: ceil(4 / 0.7) = 6 pods, so two stand idle for the next runs");
    // A busy pod that the ReplicaSet removes drains: its grace period covers a whole run.
    assert.equal(deployment.inputs.spec.template.spec.terminationGracePeriodSeconds, 4530);
  });

  it("WorkerPool as a StatefulSet with a HorizontalPodAutoscaler on an External metric", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.WorkerPool("k-hpa", {
          token: TOKENS.worker,
          poolPrivateKey: PRIVATE_KEY_B64,
          statefulSet: true,
          autoscaling: {
            kind: "hpa",
            minReplicas: 2,
            maxReplicas: 8,
            metric: {
              type: "External",
              name: "agentpools_queued",
              matchLabels: { pool: "workers" },
              averageValue: "500m",
            },
            scaleDownStabilizationSeconds: 600,
          },
        }),
      "k-hpa",
    );
    assert.equal(one(resources, T.statefulSet).inputs.spec.replicas, undefined);
    assert.deepEqual(one(resources, T.hpa).inputs.spec, {
      scaleTargetRef: { apiVersion: "apps/v1", kind: "StatefulSet", name: "k-hpa" },
      minReplicas: 2,
      maxReplicas: 8,
      metrics: [
        {
          type: "External",
          external: {
            metric: { name: "agentpools_queued", selector: { matchLabels: { pool: "workers" } } },
            target: { type: "AverageValue", averageValue: "500m" },
          },
        },
      ],
      behavior: { scaleDown: { stabilizationWindowSeconds: 600 } },
    });
    assert.equal(byType(resources, T.scaledObject).length, 0);
  });

  it("without autoscaling, the replicas are Pulumi's and no autoscaler exists", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.VcsAgent("k-fixed", {
          token: "t",
          targetBaseEndpoint: "https://g",
          vendor: "gitlab",
          replicas: 3,
        }),
      "k-fixed",
    );
    assert.equal(one(resources, T.deployment).inputs.spec.replicas, 3);
    assert.equal(byType(resources, T.scaledObject).length + byType(resources, T.hpa).length, 0);
  });

  it("the autoscaler checks are not blind: bounds, targets and triggers out of the rules are found", async () => {
    // The schemas: KEDA's generated from its API types, Kubernetes' from the OpenAPI definitions.
    const rendered = manifestOf(one(await settled("k-keda"), T.scaledObject));
    assert.deepEqual(await schemaProblems(rendered), []);
    const wrongTypes = { ...rendered, spec: { ...rendered.spec, maxReplicaCount: "20", triggers: [{ metadata: {} }] } };
    assert.match((await schemaProblems(wrongTypes)).join(), /maxReplicaCount must be integer.*type/s);
    const hpaManifest = manifestOf(one(await settled("k-hpa"), T.hpa));
    assert.match(
      (await schemaProblems({ ...hpaManifest, spec: { ...hpaManifest.spec, maxReplicas: undefined } })).join(),
      /maxReplicas/,
    );
    const hpa = {
      kind: "HorizontalPodAutoscaler",
      spec: {
        scaleTargetRef: { kind: "Deployment", name: "a" },
        minReplicas: 0,
        maxReplicas: 0,
        metrics: [{ type: "Pods", pods: { metric: { name: "a/b" }, target: { type: "Value", value: "0" } } }],
        behavior: { scaleDown: { stabilizationWindowSeconds: 3601 } },
      },
    };
    assert.deepEqual(autoscalerProblems(hpa), [
      "minReplicas must be at least 1",
      "maxReplicas must be greater than 0",
      "metric name a/b is not a path segment",
      "target value must be positive",
      "a Pods metric needs averageValue",
      "stabilizationWindowSeconds must be 0-3600",
    ]);
    const scaled = {
      kind: "ScaledObject",
      spec: {
        minReplicaCount: 5,
        maxReplicaCount: 2,
        idleReplicaCount: 5,
        triggers: [
          {
            type: "prometheus",
            metricType: "Utilization",
            metadata: { serverAddress: "http://p", authModes: "bearer" },
          },
        ],
      },
    };
    assert.deepEqual(autoscalerProblems(scaled), [
      "MinReplicaCount=5 must be less than MaxReplicaCount=2",
      "IdleReplicaCount must be less than MinReplicaCount",
      "the prometheus trigger needs query",
      "the prometheus trigger needs threshold",
      "authModes without an authenticationRef",
      "Utilization is for the cpu and memory scalers only",
    ]);
  });

  const vcs = (name: string, overrides: Partial<kubernetes.VcsAgentArgs> = {}) =>
    new kubernetes.VcsAgent(name, { token: "t", targetBaseEndpoint: "https://g", vendor: "gitlab", ...overrides });
  const workers = (name: string, overrides: Partial<kubernetes.WorkerPoolArgs> = {}) =>
    new kubernetes.WorkerPool(name, { token: "t", poolPrivateKey: PRIVATE_KEY_B64, ...overrides });

  const KEDA = { kind: "keda" as const, serverAddress: "http://prometheus:9090", pool: "workers" };

  // [what, make, the field the problem names, text the problem shows (the value, what is allowed)]
  const bad: [string, () => unknown, string, string?][] = [
    ["namespace with capitals", () => vcs("kb-1", { namespace: "Agents" }), "namespace", "RFC 1123 label"],
    ["negative replicas", () => vcs("kb-2", { replicas: -1 }), "replicas"],
    [
      "memory in words",
      () => vcs("kb-3", { resources: { limits: { memory: "lots" } } }),
      "resources.limits.memory",
      '"lots"',
    ],
    [
      "unknown toleration operator",
      () => vcs("kb-4", { tolerations: [{ operator: "Maybe" as never }] }),
      "tolerations[0].operator",
    ],
    [
      "missing token",
      () => new kubernetes.VcsAgent("kb-5", { targetBaseEndpoint: "https://g", vendor: "gitlab" }),
      "token",
    ],
    [
      "Docker executor on Kubernetes",
      () =>
        new kubernetes.FlowsAgent("kb-6", {
          executor: "docker" as never,
          poolId: "p",
          poolToken: "t",
          gatewayEndpoint: "https://g",
          backendEndpoint: "https://b",
        }),
      "executor",
    ],
    [
      "storage size in gigabytes spelt GB",
      () => workers("kb-7", { storage: { size: "50GB" } }),
      "storage.size",
      '"50GB"',
    ],
    [
      "egress to a bad block",
      () => vcs("kb-8", { egress: { cidrBlocks: ["10.0.0.0"] } }),
      "egress.cidrBlocks[0]",
      '"10.0.0.0"',
    ],
    ["the process executor for workers", () => workers("kb-9", { executor: "process" }), "executor"],
    [
      "a DNS peer with an ipBlock and a selector (the API server takes one or the other)",
      () =>
        vcs("kb-dns-1", {
          egress: { dns: [{ ipBlock: { cidr: "10.0.0.10/32" }, podSelector: { matchLabels: { a: "b" } } }] },
        }),
      "egress.dns[0]",
    ],
    ["no DNS peer at all", () => vcs("kb-dns-2", { egress: { dns: [] } }), "egress.dns"],
    ["a DNS peer that names nothing", () => vcs("kb-dns-3", { egress: { dns: [{}] } }), "egress.dns[0]"],
    [
      "a DNS peer's bad label",
      () => vcs("kb-dns-4", { egress: { dns: [{ podSelector: { matchLabels: { "k8s app": "dns" } } }] } }),
      "egress.dns[0].podSelector.matchLabels.k8s app",
    ],
    // Port 53 is a channel out: a DNS peer is a resolver's address or subnet, or pods named by label.
    ...(
      [
        ["every IPv4 address", "0.0.0.0/0"],
        ["every IPv6 address", "::/0"],
        ["IPv4 wider than /16", "10.0.0.0/15"],
        ["IPv6 wider than /48", "2001:db8::/47"],
      ] as const
    ).map(([what, cidr], i): (typeof bad)[number] => [
      `DNS at ${what}`,
      () => vcs(`kb-dns-wide-${i}`, { egress: { dns: [{ ipBlock: { cidr } }] } }),
      "egress.dns[0].ipBlock.cidr",
      `is wider than a DNS server's subnet: at most IPv4 /16 or IPv6 /48 (got "${cidr}")`,
    ]),
    [
      "DNS at every address in two halves",
      () =>
        vcs("kb-dns-halves", {
          egress: { dns: [{ ipBlock: { cidr: "0.0.0.0/1" } }, { ipBlock: { cidr: "128.0.0.0/1" } }] },
        }),
      "egress.dns[1].ipBlock.cidr",
      '"128.0.0.0/1"',
    ],
    [
      "DNS at every pod of every namespace",
      () => vcs("kb-dns-all-pods", { egress: { dns: [{ namespaceSelector: {} }] } }),
      "egress.dns[0].namespaceSelector",
      "selects every namespace's pods",
    ],
    [
      "DNS at every pod of every namespace, by two empty selectors",
      () =>
        vcs("kb-dns-all-pods-2", { egress: { dns: [{ namespaceSelector: {}, podSelector: { matchLabels: {} } }] } }),
      "egress.dns[0].namespaceSelector",
    ],
    [
      "DNS at every pod of the pool's namespace",
      () => vcs("kb-dns-own-pods", { egress: { dns: [{ podSelector: {} }] } }),
      "egress.dns[0].podSelector",
      "name the DNS pods by label",
    ],
    // Blocks the API server's CIDR parsers refuse or read two ways, in dns and in cidrBlocks alike.
    ...(
      [
        ["egress.dns[0].ipBlock.cidr", "an IPv6 block with a zone", "fe80::1%eth0/64", "without a zone"],
        ["egress.cidrBlocks[0]", "an IPv6 block with a zone", "fe80::%eth0/64", "without a zone"],
        ["egress.dns[0].ipBlock.cidr", "an IPv4-mapped IPv6 block", "::ffff:10.0.0.0/104", "in IPv4"],
        ["egress.cidrBlocks[0]", "a block with bits after its prefix", "10.0.0.10/8", "no bits set after its prefix"],
        ["egress.dns[0].ipBlock.cidr", "a prefix with a leading zero", "10.0.0.0/032", "CIDR block"],
      ] as const
    ).map(([field, what, cidr, shows], i): (typeof bad)[number] => [
      `${what} in ${field}`,
      () =>
        vcs(`kb-cidr-${i}`, {
          egress: field.startsWith("egress.dns") ? { dns: [{ ipBlock: { cidr } }] } : { cidrBlocks: [cidr] },
        }),
      field,
      shows,
    ]),
    [
      "a disk request above its limit",
      () => workers("kb-disk-1", { disk: { runs: { request: "20Gi" } } }),
      "disk.runs.request",
      "must not exceed limit (10Gi)",
    ],
    ["a disk limit of nothing", () => workers("kb-disk-2", { disk: { engine: { limit: "0" } } }), "disk.engine.limit"],
    // A pod's runtimes are processes: what only the Docker executor reads is refused, not ignored.
    ...Object.entries(DOCKER_ONLY_VALUES).map(([key, value], i): (typeof bad)[number] => [
      `${key}, which only the Docker executor reads`,
      () =>
        new kubernetes.FlowsAgent(`kb-docker-${i}`, {
          poolId: "p",
          poolToken: "t",
          gatewayEndpoint: "https://g",
          backendEndpoint: "https://b",
          [key]: value,
        }),
      key,
      "Docker executor only",
    ]),
    [
      "a policy with an unknown rule",
      () => workers("kb-10", { runInitializationPolicy: { allowedImage: ["x"] } as never }),
      "runInitializationPolicy.allowedImage",
    ],
    // The API server's own rules, refused here before any object exists.
    [
      "a label key with a space",
      () => vcs("kb-11", { labels: { "team name": "infra" } }),
      "labels.team name",
      "a key's name",
    ],
    [
      "a label value longer than 63",
      () => vcs("kb-12", { labels: { team: "x".repeat(64) } }),
      "labels.team",
      "at most 63",
    ],
    [
      "a label key with a bad prefix",
      () => vcs("kb-13", { labels: { "Corp.Example/team": "infra" } }),
      "labels.Corp.Example/team",
      "prefix",
    ],
    [
      "a node selector value with a slash",
      () => vcs("kb-14", { nodeSelector: { pool: "agents/x" } }),
      "nodeSelector.pool",
      '"agents/x"',
    ],
    [
      "a toleration Exists with a value",
      () => vcs("kb-15", { tolerations: [{ key: "agents", operator: "Exists", value: "yes" }] }),
      "tolerations[0].value",
      'operator is "Exists"',
    ],
    [
      "tolerationSeconds without NoExecute",
      () =>
        vcs("kb-16", {
          tolerations: [{ key: "agents", operator: "Exists", effect: "NoSchedule", tolerationSeconds: 60 }],
        }),
      "tolerations[0].tolerationSeconds",
      '"NoExecute"',
    ],
    [
      "a toleration of every key with Equal",
      () => vcs("kb-17", { tolerations: [{ operator: "Equal", value: "x" }] }),
      "tolerations[0].operator",
      "key is empty",
    ],
    [
      "a memory request above its limit",
      () => vcs("kb-18", { resources: { requests: { memory: "1Gi" }, limits: { memory: "512Mi" } } }),
      "resources.requests.memory",
      "limits.memory (512Mi)",
    ],
    [
      "a CPU request above its limit",
      () => vcs("kb-19", { resources: { requests: { cpu: "2" }, limits: { cpu: "1500m" } } }),
      "resources.requests.cpu",
      "(1500m)",
    ],
    [
      "512m of memory (thousandths of a byte)",
      () => vcs("kb-20", { resources: { limits: { memory: "512m" } } }),
      "resources.limits.memory",
      "whole number of bytes",
    ],
    [
      "an engine memory request above its limit",
      () => workers("kb-21", { dockerResources: { requests: { memory: "8Gi" }, limits: { memory: "4Gi" } } }),
      "dockerResources.requests.memory",
    ],
    [
      "an existing-Secret key for another role's variable",
      () =>
        vcs("kb-22", {
          token: undefined,
          existingSecret: { name: "vcs", keys: { SPACELIFT_TOKEN: "token" } as never },
        }),
      "existingSecret.keys.SPACELIFT_TOKEN",
      "SPACELIFT_VCS_AGENT_POOL_TOKEN",
    ],
    [
      "an existing-Secret key Kubernetes refuses",
      () =>
        vcs("kb-23", {
          token: undefined,
          existingSecret: { name: "vcs", keys: { SPACELIFT_VCS_AGENT_POOL_TOKEN: "pool token" } },
        }),
      "existingSecret.keys.SPACELIFT_VCS_AGENT_POOL_TOKEN",
      '"pool token"',
    ],
    [
      "an existing Secret named in capitals",
      () => vcs("kb-24", { token: undefined, existingSecret: { name: "VCS_Secret" } }),
      "existingSecret.name",
      "RFC 1123 subdomain",
    ],
    ["a component name with an underscore", () => vcs("kb_25"), "name", '"kb_25"'],
    ["a component name longer than 63", () => vcs(`kb-26-${"x".repeat(60)}`), "name", "at most 63"],
    [
      "a StatefulSet name longer than 52",
      () => workers(`kb-27-${"x".repeat(50)}`, { statefulSet: true }),
      "name",
      "at most 52",
    ],
    [
      "a storage class with capitals",
      () => workers("kb-28", { statefulSet: true, storage: { size: "10Gi", storageClassName: "GP3" } }),
      "storage.storageClassName",
      '"GP3"',
    ],
    ["an image with an upper-case path", () => vcs("kb-29", { image: "Node:24" }), "image", '"Node:24"'],
    [
      "an image with a space",
      () => workers("kb-30", { dockerImage: "docker:28 dind" }),
      "dockerImage",
      "image reference",
    ],
    ["an image digest that is too short", () => vcs("kb-31", { image: "node@sha256:abc" }), "image"],
    [
      "a drain shorter than a run may last",
      () => workers("kb-32", { drainTimeoutSeconds: 600 }),
      "drainTimeoutSeconds",
      "runTimeout (70m)",
    ],
    [
      "egress to the metadata address alone",
      () => vcs("kb-33", { egress: { cidrBlocks: ["169.254.169.254/32"] } }),
      "egress.cidrBlocks[0]",
      "metadata",
    ],
    [
      "a proxy URL with credentials",
      () => vcs("kb-34", { httpsProxy: "http://user:pass@proxy:3128" }),
      "httpsProxy",
      "credentials",
    ],
    ["an empty storage size", () => workers("kb-35", { storage: { size: "0" } }), "storage.size", "more than zero"],
    [
      "node affinity In without values",
      () =>
        vcs("kb-36", {
          affinity: {
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: {
                nodeSelectorTerms: [{ matchExpressions: [{ key: "zone", operator: "In" }] }],
              },
            },
          },
        }),
      "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
      'operator "In"',
    ],
    [
      "anti-affinity of weight 0",
      () =>
        vcs("kb-37", {
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [
                { weight: 0, podAffinityTerm: { topologyKey: "kubernetes.io/hostname" } },
              ],
            },
          },
        }),
      "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
    ],
    [
      "a misspelt affinity",
      () => vcs("kb-38", { affinity: { nodeAfinity: {} } as never }),
      "affinity.nodeAfinity",
      "not a known argument",
    ],
    // Autoscalers: KEDA's webhook and the API server's HorizontalPodAutoscaler rules.
    [
      "a KEDA minimum above its maximum",
      () => workers("kb-40", { autoscaling: { ...KEDA, minReplicas: 5, maxReplicas: 2 } }),
      "autoscaling.minReplicas",
      "maxReplicas (2)",
    ],
    [
      "a KEDA maximum of zero",
      () => workers("kb-41", { autoscaling: { ...KEDA, minReplicas: 0, maxReplicas: 0 } }),
      "autoscaling.maxReplicas",
    ],
    [
      "both a pool and a query",
      () => workers("kb-42", { autoscaling: { ...KEDA, query: "sum(x)" } }),
      "autoscaling.pool",
      "not both",
    ],
    [
      "neither a pool nor a query",
      () => workers("kb-43", { autoscaling: { kind: "keda", serverAddress: "http://p:9090" } }),
      "autoscaling.pool",
    ],
    [
      "a Prometheus address with credentials",
      () => workers("kb-44", { autoscaling: { ...KEDA, serverAddress: "http://admin:hunter2@prometheus:9090" } }),
      "autoscaling.serverAddress",
      "TriggerAuthentication",
    ],
    [
      "a threshold of zero",
      () => workers("kb-45", { autoscaling: { ...KEDA, threshold: 0 } }),
      "autoscaling.threshold",
    ],
    [
      "a polling interval of zero",
      () => workers("kb-46", { autoscaling: { ...KEDA, pollingIntervalSeconds: 0 } }),
      "autoscaling.pollingIntervalSeconds",
    ],
    [
      "a negative cooldown",
      () => workers("kb-47", { autoscaling: { ...KEDA, cooldownSeconds: -1 } }),
      "autoscaling.cooldownSeconds",
    ],
    [
      "a fractional polling interval",
      () => workers("kb-48", { autoscaling: { ...KEDA, pollingIntervalSeconds: 7.5 } }),
      "autoscaling.pollingIntervalSeconds",
    ],
    [
      "a gateway pool name with a space",
      () => workers("kb-49", { autoscaling: { ...KEDA, pool: "my pool" } }),
      "autoscaling.pool",
      '"my pool"',
    ],
    [
      "a pool name that would break out of the query",
      () => workers("kb-50", { autoscaling: { ...KEDA, pool: 'x"} or vector(99)' } }),
      "autoscaling.pool",
    ],
    [
      "an authentication without modes",
      () => workers("kb-51", { autoscaling: { ...KEDA, authentication: { name: "prometheus", modes: [] } } }),
      "autoscaling.authentication.modes",
    ],
    ["an unknown autoscaler", () => workers("kb-52", { autoscaling: { kind: "vpa" } as never }), "autoscaling.kind"],
    [
      "replicas beside an autoscaler",
      () => workers("kb-53", { replicas: 3, autoscaling: KEDA }),
      "replicas",
      "autoscaling.minReplicas",
    ],
    [
      "an HPA scaling to zero",
      () =>
        vcs("kb-54", {
          autoscaling: { kind: "hpa", minReplicas: 0, metric: { type: "External", name: "q", value: 1 } },
        }),
      "autoscaling.minReplicas",
      "keda",
    ],
    [
      "an HPA Pods metric with a value",
      () => vcs("kb-55", { autoscaling: { kind: "hpa", metric: { type: "Pods", name: "busy", value: "1" } } }),
      "autoscaling.metric.value",
      "averageValue",
    ],
    [
      "an HPA External metric with both targets",
      () =>
        vcs("kb-56", {
          autoscaling: { kind: "hpa", metric: { type: "External", name: "q", value: "1", averageValue: "1" } },
        }),
      "autoscaling.metric.averageValue",
      "not both",
    ],
    [
      "an HPA target of zero",
      () => vcs("kb-57", { autoscaling: { kind: "hpa", metric: { type: "Pods", name: "busy", averageValue: "0" } } }),
      "autoscaling.metric.averageValue",
      "above zero",
    ],
    [
      "an HPA target that is no quantity",
      () => vcs("kb-58", { autoscaling: { kind: "hpa", metric: { type: "Pods", name: "busy", averageValue: "70%" } } }),
      "autoscaling.metric.averageValue",
      '"70%"',
    ],
    [
      "an HPA metric name with a slash",
      () =>
        vcs("kb-59", {
          autoscaling: { kind: "hpa", metric: { type: "External", name: "agentpools/queued", value: 1 } },
        }),
      "autoscaling.metric.name",
      '"agentpools/queued"',
    ],
    [
      "an HPA stabilization window over an hour",
      () =>
        vcs("kb-60", {
          autoscaling: {
            kind: "hpa",
            metric: { type: "External", name: "q", value: 1 },
            scaleDownStabilizationSeconds: 3601,
          },
        }),
      "autoscaling.scaleDownStabilizationSeconds",
    ],
    [
      "an HPA minimum above its maximum",
      () =>
        vcs("kb-61", {
          autoscaling: {
            kind: "hpa",
            minReplicas: 4,
            maxReplicas: 3,
            metric: { type: "External", name: "q", value: 1 },
          },
        }),
      "autoscaling.minReplicas",
      "maxReplicas (3)",
    ],
    [
      "an HPA metric selector with a bad label",
      () =>
        vcs("kb-62", {
          autoscaling: { kind: "hpa", metric: { type: "External", name: "q", value: 1, matchLabels: { pool: "a b" } } },
        }),
      "autoscaling.metric.matchLabels.pool",
    ],
    [
      "a proxy with credentials after an empty host (they would sit in the pod spec)",
      () => vcs("kb-63", { httpsProxy: "http:///user:s3cr3t-pw@proxy:3128" }),
      "httpsProxy",
      "must not contain credentials",
    ],
  ];
  for (const [description, make, field, shows] of bad) {
    it(`refuses ${description} before anything is created, naming ${field}`, () => {
      const before = recorded.length;
      assert.throws(make, (error: InvalidArgumentsError) => {
        assert.ok(error instanceof InvalidArgumentsError, String(error));
        const line = error.problems.find((p) => p.startsWith(`${field}:`));
        assert.ok(line, `no problem names ${field}:\n${error.message}`);
        if (shows) assert.ok(line.includes(shows), `"${line}" does not show ${shows}`);
        assert.ok(
          !error.message.includes(TOKENS.vcs) && !error.message.includes(PRIVATE_KEY_B64),
          "a secret is echoed",
        );
        return true;
      });
      assert.equal(recorded.length, before);
    });
  }

  // Good values, sometimes refused elsewhere: they must pass, and render as given.
  const good: [
    string,
    (name: string) => kubernetes.VcsAgent | kubernetes.WorkerPool,
    (spec: Record<string, any>, resources: RecordedResource[]) => void,
  ][] = [
    [
      "1.5Ti of storage",
      (n) => workers(n, { statefulSet: true, storage: { size: "1.5Ti", storageClassName: "fast.ssd-1" } }),
      (_, r) =>
        assert.equal(
          one(r, T.statefulSet).inputs.spec.volumeClaimTemplates[0].spec.resources.requests.storage,
          "1.5Ti",
        ),
    ],
    [
      "an upper-case image tag and a registry port",
      (n) => vcs(n, { image: "registry.corp.example:5000/platform/node:24-Alpine_LTS" }),
      (spec) => assert.equal(spec.containers[0].image, "registry.corp.example:5000/platform/node:24-Alpine_LTS"),
    ],
    [
      "an image pinned by digest",
      (n) => workers(n, { dockerImage: `docker:28.2.2-dind@sha256:${"a1".repeat(32)}` }),
      (spec) => assert.match(spec.initContainers[0].image, /@sha256:/),
    ],
    [
      "prefixed label and selector keys",
      (n) =>
        vcs(n, {
          labels: { "corp.example/team": "platform_infra", empty: "" },
          nodeSelector: { "node.kubernetes.io/instance-type": "m7i.large" },
        }),
      (spec) => assert.equal(spec.nodeSelector["node.kubernetes.io/instance-type"], "m7i.large"),
    ],
    [
      "tolerations of every documented form",
      (n) =>
        vcs(n, {
          tolerations: [
            { operator: "Exists" },
            { key: "dedicated", value: "agents", effect: "NoSchedule" },
            { key: "node.kubernetes.io/unreachable", operator: "Exists", effect: "NoExecute", tolerationSeconds: 30 },
          ],
        }),
      (spec) => assert.equal(spec.tolerations.length, 3),
    ],
    [
      "quantities in exponent and decimal forms",
      (n) => vcs(n, { resources: { requests: { cpu: "0.25", memory: "128e6" }, limits: { cpu: "1", memory: "1G" } } }),
      (spec) => assert.equal(spec.containers[0].resources.requests.memory, "128e6"),
    ],
    [
      "an existing Secret with dotted keys",
      (n) =>
        vcs(n, {
          token: undefined,
          existingSecret: { name: "vcs.agent-credentials", keys: { SPACELIFT_VCS_AGENT_POOL_TOKEN: "pool.token" } },
        }),
      (spec) =>
        assert.deepEqual(envOf(spec.containers[0]).SPACELIFT_VCS_AGENT_POOL_TOKEN, {
          secretKeyRef: { name: "vcs.agent-credentials", key: "pool.token" },
        }),
    ],
    [
      "node and pod anti-affinity",
      (n) =>
        vcs(n, {
          affinity: {
            nodeAffinity: {
              requiredDuringSchedulingIgnoredDuringExecution: {
                nodeSelectorTerms: [{ matchExpressions: [{ key: "node.corp/cores", operator: "Gt", values: ["3"] }] }],
              },
            },
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [
                {
                  weight: 100,
                  podAffinityTerm: {
                    topologyKey: "topology.kubernetes.io/zone",
                    labelSelector: {
                      matchExpressions: [
                        { key: "app.kubernetes.io/name", operator: "In", values: ["agentpools-vcs-agent"] },
                      ],
                    },
                  },
                },
              ],
            },
          },
        }),
      (spec) =>
        assert.equal(spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight, 100),
    ],
    [
      "a run timeout the drain covers",
      (n) => workers(n, { runTimeout: "2h", drainTimeoutSeconds: 7200 }),
      (spec) => assert.equal(spec.terminationGracePeriodSeconds, 7230),
    ],
    [
      "KEDA to zero, through a ClusterTriggerAuthentication, polling every second",
      (n) =>
        workers(n, {
          autoscaling: {
            ...KEDA,
            minReplicas: 0,
            maxReplicas: 1,
            pollingIntervalSeconds: 1,
            cooldownSeconds: 0,
            activationThreshold: 0.5,
            authentication: {
              name: "prometheus.bearer",
              kind: "ClusterTriggerAuthentication",
              modes: ["bearer", "tls"],
            },
          },
        }),
      (_, r) =>
        assert.deepEqual(
          [
            one(r, T.scaledObject).inputs.spec.triggers[0].authenticationRef,
            one(r, T.scaledObject).inputs.spec.triggers[0].metadata.authModes,
          ],
          [{ name: "prometheus.bearer", kind: "ClusterTriggerAuthentication" }, "bearer,tls"],
        ),
    ],
    [
      "KEDA with a query of your own, HTTPS and a path, one pod per unit",
      (n) =>
        vcs(n, {
          autoscaling: {
            kind: "keda",
            serverAddress: "https://thanos.corp.example:10902/select/0/prometheus",
            query: 'sum(agentpools_queued{job="gw-eu",pool="git"})',
            threshold: 1,
            minReplicas: 3,
            maxReplicas: 3,
          },
        }),
      (_, r) => assert.equal(one(r, T.scaledObject).inputs.spec.triggers[0].metadata.threshold, "1"),
    ],
    [
      "a gateway pool name with capitals and underscores, and a large maximum",
      (n) => workers(n, { autoscaling: { ...KEDA, pool: "Team_A-1", maxReplicas: 5000 } }),
      (_, r) => assert.match(one(r, T.scaledObject).inputs.spec.triggers[0].metadata.query, /pool="Team_A-1"/),
    ],
    [
      "an HPA on a per-pod metric with a value in exponent form",
      (n) =>
        vcs(n, {
          autoscaling: {
            kind: "hpa",
            minReplicas: 1,
            maxReplicas: 1,
            metric: { type: "Pods", name: "agentpools.busy:share", averageValue: "7e-1" },
          },
        }),
      (_, r) =>
        assert.deepEqual(one(r, T.hpa).inputs.spec.metrics[0].pods.target, {
          type: "AverageValue",
          averageValue: "7e-1",
        }),
    ],
    [
      "an HPA External total value given as a number, no stabilization",
      (n) => vcs(n, { autoscaling: { kind: "hpa", metric: { type: "External", name: "queued", value: 0.25 } } }),
      (_, r) =>
        assert.deepEqual(
          [one(r, T.hpa).inputs.spec.metrics[0].external.target, one(r, T.hpa).inputs.spec.behavior],
          [{ type: "Value", value: "0.25" }, undefined],
        ),
    ],
  ];
  good.forEach(([description, make, check], index) => {
    it(`accepts ${description}`, async () => {
      const resources = await deploy(() => make(`kg-${index}`), `kg-${index}`);
      check(podSpec(resources), resources);
    });
  });

  it("egress leaves out the cloud metadata addresses unless told, and takes IPv6 blocks", async () => {
    const resources = await deploy(
      () =>
        new kubernetes.FlowsAgent("k-egress", {
          poolId: "p",
          poolToken: "t",
          gatewayEndpoint: "https://g",
          backendEndpoint: "https://b",
          egress: { cidrBlocks: ["0.0.0.0/0", "::/0", "10.0.0.0/8"] },
        }),
      "k-egress",
    );
    const [dns, rule] = one(resources, T.policy).inputs.spec.egress;
    assert.deepEqual(
      dns.ports.map((p: { port: number }) => p.port),
      [53, 53],
    );
    assert.deepEqual(rule.to, [
      { ipBlock: { cidr: "0.0.0.0/0", except: ["169.254.169.254/32"] } },
      { ipBlock: { cidr: "::/0", except: ["fd00:ec2::254/128"] } },
      { ipBlock: { cidr: "10.0.0.0/8" } },
    ]);
    const defaults = await deploy(() => vcs("k-egress-default"), "k-egress-default");
    assert.deepEqual(one(defaults, T.policy).inputs.spec.egress[1].to, [
      { ipBlock: { cidr: "0.0.0.0/0", except: ["169.254.169.254/32"] } },
    ]);
    const allowed = await deploy(
      () => vcs("k-egress-imds", { egress: { cidrBlocks: ["0.0.0.0/0"], allowMetadataService: true } }),
      "k-egress-imds",
    );
    assert.deepEqual(one(allowed, T.policy).inputs.spec.egress[1].to, [{ ipBlock: { cidr: "0.0.0.0/0" } }]);
  });

  const flows = (name: string, overrides: Partial<kubernetes.FlowsAgentArgs> = {}) =>
    new kubernetes.FlowsAgent(name, {
      ...{ poolId: "p", poolToken: "t", gatewayEndpoint: "https://g", backendEndpoint: "https://b" },
      ...overrides,
    });
  // NetworkPolicy semantics: a rule's `to` left out allows its ports to every destination.
  const dnsRule = (resources: RecordedResource[]) =>
    one(resources, T.policy).inputs.spec.egress.find((rule: { ports?: { port: number }[] }) =>
      rule.ports?.some((p) => p.port === 53),
    );
  it("egress: DNS reaches the cluster's DNS pods only, not port 53 of every address (all three pool kinds)", async () => {
    const narrowed = { egress: { cidrBlocks: ["10.20.0.0/16"], ports: [443] } };
    const kinds = await Promise.all([
      deploy(() => vcs("k-dns-vcs", narrowed), "k-dns-vcs"),
      deploy(() => workers("k-dns-workers", narrowed), "k-dns-workers"),
      deploy(() => flows("k-dns-flows", narrowed), "k-dns-flows"),
    ]);
    for (const resources of kinds) {
      const rules = one(resources, T.policy).inputs.spec.egress;
      assert.ok(
        rules.every((rule: { to?: unknown[] }) => rule.to?.length),
        "no egress rule open to every address",
      );
      assert.deepEqual(dnsRule(resources), {
        to: [
          {
            namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } },
            podSelector: { matchLabels: { "k8s-app": "kube-dns" } },
          },
        ],
        ports: [
          { protocol: "UDP", port: 53 },
          { protocol: "TCP", port: 53 },
        ],
      });
    }
    // Good-but-unusual DNS, as given: a node-local cache (link-local), a VPC resolver, DNS subnets of a /24, /16 and
    // IPv6 /48, a DNS namespace's every pod, DNS pods by label in any namespace.
    const dns: NonNullable<kubernetes.VcsAgentArgs["egress"]>["dns"] = [
      { ipBlock: { cidr: "169.254.20.10/32" } },
      { ipBlock: { cidr: "10.20.0.2/32" } },
      { ipBlock: { cidr: "10.53.1.0/24" } },
      { ipBlock: { cidr: "172.16.0.0/16" } },
      { ipBlock: { cidr: "fd00:53::/48" } },
      { namespaceSelector: { matchLabels: { dns: "yes" } } },
      { namespaceSelector: { matchLabels: { dns: "yes" } }, podSelector: {} },
      { namespaceSelector: {}, podSelector: { matchLabels: { "k8s-app": "kube-dns" } } },
      { podSelector: { matchLabels: { app: "dns-cache" } } },
    ];
    const custom = await deploy(
      () => vcs("k-dns-custom", { egress: { cidrBlocks: ["10.0.0.0/8"], dns } }),
      "k-dns-custom",
    );
    assert.deepEqual(dnsRule(custom).to, dns);
  });

  it("every object these tests rendered passes the API schema, the API server's rules and its namespace's Pod Security level", async () => {
    assert.ok(deployed.size >= 15, `only ${deployed.size} components deployed`);
    const levelOf = (manifest: Record<string, any>) =>
      deployed.get(manifest.metadata.labels["app.kubernetes.io/instance"]) as Level;
    const resources = [...deployed.keys()].flatMap((prefix) =>
      recorded.filter((r) => r.name === prefix || r.name.startsWith(`${prefix}-`)),
    );
    assert.deepEqual(await admissionProblems(resources, levelOf), []);
    assert.deepEqual([...new Set(deployed.values())].sort(), ["baseline", "privileged", "restricted"]);
  });

  it("the admission checks are not blind: the pre-fix worker pod fails them", async () => {
    const resources = await settled("k-workers");
    const manifest = manifestOf(byType(resources, T.deployment)[0]);
    const pod = podTemplateOf(manifest) as Record<string, any>;
    // The engine as a regular container, and a bad quantity: what the schema and PSS must catch.
    const broken = structuredClone(manifest);
    broken.spec.template.spec.containers.push({
      ...pod.spec.initContainers[0],
      resources: { limits: { memory: "lots" } },
    });
    assert.match((await schemaProblems(broken)).join(), /memory must match format "quantity"/);
    assert.match(
      apiServerProblems(broken).join(),
      /two containers are named docker.*restartPolicy is only allowed on init containers/s,
    );
    assert.match(podSecurityProblems(pod, "baseline").join(), /container docker: privileged/);
  });

  it("examples/kubernetes: the pools in namespaces whose Pod Security level admits them, every object valid", async () => {
    const secrets = {
      "agentpools:vcsAgentToken": "ex-vcs-token-1234",
      "agentpools:workerToken": "ex-worker-token-1234",
      "agentpools:workerPrivateKey": PRIVATE_KEY_B64,
      "agentpools:flowsPoolToken": "ex-flows-token-1234",
    };
    pulumi.runtime.setAllConfig(
      {
        "agentpools:namespace": "agentpools",
        "agentpools:prometheusAddress": "http://prometheus.monitoring.svc:9090",
        "agentpools:gitEndpoint": "https://gitlab.corp.example.com",
        "agentpools:flowsPoolId": "01JEXAMPLE",
        "agentpools:flowsGatewayEndpoint": "https://gateway.useflows.eu",
        "agentpools:flowsBackendEndpoint": "https://useflows.eu",
        ...secrets,
      },
      Object.keys(secrets),
    );
    const program = await import("../examples/kubernetes");
    assert.deepEqual(await valueOf(program.workloads), { git: "git", workers: "workers", flows: "flows" });
    const resources = [
      ...(await settled("git")),
      ...(await settled("workers")),
      ...(await settled("flows")),
      ...(await settled("agentpools")),
    ].filter((r) => r.type.startsWith("kubernetes:"));
    assert.ok(byType(resources, T.secret).every((s) => isSecretInput(s.inputs.stringData)));
    const plain = JSON.stringify(resources.filter((r) => r.type !== T.secret).map((r) => r.inputs));
    for (const value of Object.values(secrets)) assert.ok(!plain.includes(value));
    assert.equal(byType(resources, T.statefulSet).length, 1);
    const [scaler] = byType(resources, T.scaledObject);
    assert.deepEqual(scaler?.inputs.spec.scaleTargetRef, {
      apiVersion: "apps/v1",
      kind: "StatefulSet",
      name: "workers",
    });
    assert.equal(one(resources, T.statefulSet).inputs.spec.replicas, undefined);

    // Each pool's pods are held to the level their namespace enforces, as the cluster would.
    const namespaces = new Map(
      byType(resources, "kubernetes:core/v1:Namespace").map((r) => [
        r.inputs.metadata.name as string,
        enforcedLevel(r.inputs),
      ]),
    );
    const levelOf = (manifest: Record<string, any>) => namespaces.get(manifest.metadata.namespace) ?? "privileged";
    const workloadNamespace = (name: string) =>
      [...byType(resources, T.deployment), ...byType(resources, T.statefulSet)].find((r) => r.name === name)?.inputs
        .metadata.namespace;
    assert.deepEqual(
      ["git", "flows", "workers"].map((name) => [name, levelOf({ metadata: { namespace: workloadNamespace(name) } })]),
      [
        ["git", "baseline"],
        ["flows", "baseline"],
        ["workers", "privileged"],
      ],
    );
    assert.deepEqual(await admissionProblems(resources, levelOf), []);
  });
});
