// The three pools as workloads in an existing cluster. Pod Security admission holds each
// namespace to one level, the strictest its pools' pods meet: "baseline" for the VCS and
// Flows agents (the Flows agent runs as root with CAP_SETUID and CAP_SETGID, to give each runtime
// a uid of its own; the VCS agent alone would meet "restricted"); a worker pool's Docker engine needs a privileged container, so the workers get
// a namespace of their own at "privileged", with nothing else in it.
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { kubernetes } from "../../components";

const config = new pulumi.Config("agentpools");
const namespaceName = config.get("namespace") ?? "agentpools";
const workerNamespaceName = config.get("workerNamespace") ?? `${namespaceName}-workers`;
const gitEndpoint = config.require("gitEndpoint");

/** A namespace whose pods must meet `level`; audit entries at "restricted" show what more a pod needs. */
const namespaceAt = (resourceName: string, name: string, level: kubernetes.PodSecurityLevel) =>
  new k8s.core.v1.Namespace(resourceName, {
    metadata: {
      name,
      labels: {
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
      },
    },
  });

const agentsLevel = kubernetes.admittingLevel(
  kubernetes.VcsAgent.podSecurityLevel,
  kubernetes.FlowsAgent.podSecurityLevel,
);
const agents = namespaceAt("agentpools", namespaceName, agentsLevel);
const workerSpace = namespaceAt("agentpools-workers", workerNamespaceName, kubernetes.WorkerPool.podSecurityLevel);
const opts = { dependsOn: [agents] };

const vcs = new kubernetes.VcsAgent(
  "git",
  {
    namespace: namespaceName,
    token: config.requireSecret("vcsAgentToken"),
    targetBaseEndpoint: gitEndpoint,
    vendor: "gitlab",
    replicas: 2,
  },
  opts,
);

// With a Prometheus that scrapes the gateway's /_agentpools/metrics, KEDA sizes the worker pool
// to its queued and busy runs, down to zero when idle; without one, the pool keeps one pod.
const prometheus = config.get("prometheusAddress");
const workerScaling = prometheus
  ? {
      autoscaling: {
        kind: "keda" as const,
        serverAddress: prometheus,
        pool: config.get("workerGatewayPool") ?? "workers",
        minReplicas: 0,
        maxReplicas: 10,
      },
    }
  : {};

const workers = new kubernetes.WorkerPool(
  "workers",
  {
    namespace: workerNamespaceName,
    token: config.requireSecret("workerToken"),
    poolPrivateKey: config.requireSecret("workerPrivateKey"),
    vcsAgents: [{ name: "git", baseEndpoint: gitEndpoint }],
    statefulSet: true,
    storage: { size: "100Gi" },
    ...workerScaling,
  },
  { dependsOn: [workerSpace] },
);

const flows = new kubernetes.FlowsAgent(
  "flows",
  {
    namespace: namespaceName,
    poolId: config.require("flowsPoolId"),
    poolToken: config.requireSecret("flowsPoolToken"),
    gatewayEndpoint: config.require("flowsGatewayEndpoint"),
    backendEndpoint: config.require("flowsBackendEndpoint"),
  },
  opts,
);

export const workloads = { git: vcs.workloadName, workers: workers.workloadName, flows: flows.workloadName };
