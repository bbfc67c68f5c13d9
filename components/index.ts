export { Network, networkArgs, planSubnets, ENDPOINT_SERVICES, type NetworkArgs } from "./aws/network";
export { WorkerPool, workerPoolArgs, type WorkerPoolArgs } from "./aws/worker-pool";
export { VcsAgentPool, vcsAgentPoolArgs, type VcsAgentPoolArgs } from "./aws/vcs-agent-pool";
export { FlowsAgentPool, flowsAgentPoolArgs, type FlowsAgentPoolArgs } from "./aws/flows-agent-pool";
export { AgentPool } from "./aws/agent-pool";
export { InvalidArgumentsError } from "./shared/validation";
export {
  renderUserData,
  decodeUserData,
  UserDataTooLargeError,
  USER_DATA_BUDGET,
  USER_DATA_LIMIT,
} from "./aws/userdata";
export { isBurstable, architectureOf, instanceTypeProblem } from "./aws/instance-types";
export { poolPolicyDocument } from "./aws/policy";
export * as kubernetes from "./kubernetes";
