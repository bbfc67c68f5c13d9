// The Kubernetes components, as `kubernetes.VcsAgent`, `kubernetes.FlowsAgent`, `kubernetes.WorkerPool`.
export {
  KubernetesVcsAgent as VcsAgent,
  kubernetesVcsAgentArgs as vcsAgentArgs,
  type KubernetesVcsAgentArgs as VcsAgentArgs,
} from "./vcs-agent";
export {
  KubernetesFlowsAgent as FlowsAgent,
  kubernetesFlowsAgentArgs as flowsAgentArgs,
  type KubernetesFlowsAgentArgs as FlowsAgentArgs,
} from "./flows-agent";
export {
  KubernetesWorkerPool as WorkerPool,
  kubernetesWorkerPoolArgs as workerPoolArgs,
  type KubernetesWorkerPoolArgs as WorkerPoolArgs,
} from "./worker-pool";
export { admittingLevel, DEFAULT_NODE_IMAGE } from "./workload";
export type { PodSecurityLevel } from "./workload";
