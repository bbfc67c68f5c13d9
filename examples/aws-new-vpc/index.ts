// All three pools in a new VPC: private subnets in two zones, one NAT gateway, and VPC
// endpoints so the agents reach AWS's own APIs without the NAT.
import * as pulumi from "@pulumi/pulumi";
import { FlowsAgentPool, Network, VcsAgentPool, WorkerPool } from "../../components";

const config = new pulumi.Config("agentpools");
const gitEndpoint = config.require("gitEndpoint");

const network = new Network("agents", {
  availabilityZoneCount: 2,
  natGateways: "single",
  endpoints: ["secretsmanager", "logs", "autoscaling", "s3"],
});
const placement = { vpcId: network.vpcId, subnetIds: network.privateSubnetIds };

const vcs = new VcsAgentPool("git", {
  ...placement,
  token: config.requireSecret("vcsAgentToken"),
  targetBaseEndpoint: gitEndpoint,
  vendor: config.require("gitVendor") as "gitlab",
  allowedProjects: config.get("allowedProjects"),
  minSize: 2,
});

const workers = new WorkerPool("workers", {
  ...placement,
  token: config.requireSecret("workerToken"),
  poolPrivateKey: config.requireSecret("workerPrivateKey"),
  // Workers clone straight from the VCS the agents front.
  vcsAgents: [{ name: "git", baseEndpoint: gitEndpoint }],
  maxSize: 6,
});

const flows = new FlowsAgentPool("flows", {
  ...placement,
  poolId: config.require("flowsPoolId"),
  poolToken: config.requireSecret("flowsPoolToken"),
  gatewayEndpoint: config.require("flowsGatewayEndpoint"),
  backendEndpoint: config.require("flowsBackendEndpoint"),
});

export const vpcId = network.vpcId;
export const privateSubnetIds = network.privateSubnetIds;
export const pools = {
  git: { group: vcs.autoScalingGroupName, logs: vcs.logGroupName, role: vcs.roleArn },
  workers: { group: workers.autoScalingGroupName, logs: workers.logGroupName, role: workers.roleArn },
  flows: { group: flows.autoScalingGroupName, logs: flows.logGroupName, role: flows.roleArn },
};
