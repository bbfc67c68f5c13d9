// The three pools as workloads in an existing cluster, in a namespace of their own.
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { kubernetes } from "../../components";

const config = new pulumi.Config("agentpools");
const namespaceName = config.get("namespace") ?? "agentpools";
const gitEndpoint = config.require("gitEndpoint");

const namespace = new k8s.core.v1.Namespace("agentpools", {
  metadata: { name: namespaceName, labels: { "pod-security.kubernetes.io/enforce": "baseline" } },
});
const opts = { dependsOn: [namespace] };

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

const workers = new kubernetes.WorkerPool(
  "workers",
  {
    namespace: namespaceName,
    token: config.requireSecret("workerToken"),
    poolPrivateKey: config.requireSecret("workerPrivateKey"),
    vcsAgents: [{ name: "git", baseEndpoint: gitEndpoint }],
    statefulSet: true,
    storage: { size: "100Gi" },
  },
  opts,
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
