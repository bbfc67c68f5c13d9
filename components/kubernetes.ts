// The Kubernetes components, as `kubernetes.VcsAgent`, `kubernetes.FlowsAgent`, `kubernetes.WorkerPool`.
export { KubernetesVcsAgent as VcsAgent, kubernetesVcsAgentArgs as vcsAgentArgs, type KubernetesVcsAgentArgs as VcsAgentArgs } from "./k8s-vcs-agent";
export { KubernetesFlowsAgent as FlowsAgent, kubernetesFlowsAgentArgs as flowsAgentArgs, type KubernetesFlowsAgentArgs as FlowsAgentArgs } from "./k8s-flows-agent";
export { KubernetesWorkerPool as WorkerPool, kubernetesWorkerPoolArgs as workerPoolArgs, type KubernetesWorkerPoolArgs as WorkerPoolArgs } from "./k8s-worker-pool";
export { DEFAULT_NODE_IMAGE } from "./k8s-workload";
