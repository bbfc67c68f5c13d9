export { Network, networkArgs, planSubnets, ENDPOINT_SERVICES, type NetworkArgs } from "./network";
export { WorkerPool, workerPoolArgs, type WorkerPoolArgs } from "./worker-pool";
export { VcsAgentPool, vcsAgentPoolArgs, type VcsAgentPoolArgs } from "./vcs-agent-pool";
export { FlowsAgentPool, flowsAgentPoolArgs, type FlowsAgentPoolArgs } from "./flows-agent-pool";
export { AgentPool } from "./agent-pool";
export { InvalidArgumentsError } from "./validation";
export { renderUserData, decodeUserData, UserDataTooLargeError, USER_DATA_LIMIT } from "./userdata";
export { isBurstable, architectureOf, instanceTypeProblem } from "./instance-types";
export { poolPolicyDocument } from "./pool-core";
