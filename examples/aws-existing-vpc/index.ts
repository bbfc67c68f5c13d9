// Pools in subnets you already have: the Network component checks the subnets belong to
// the VPC and adds the endpoints the agents need; the agents go out through your proxy.
import * as pulumi from "@pulumi/pulumi";
import { Network, VcsAgentPool, WorkerPool } from "../../components";

const config = new pulumi.Config("agentpools");
const gitEndpoint = config.require("gitEndpoint");
// A TLS-inspecting proxy's CA: its certificates come from an SSM parameter at boot (read
// through the ssm endpoint, before the proxy is used), so their size does not count against user-data.
const proxyCa = config.get("proxyCaCertificates");
const proxy = {
  httpsProxy: config.get("httpsProxy"),
  noProxy: config.get("noProxy"),
  ...(proxyCa ? { customCaCertificates: proxyCa, customCaCertificatesDelivery: "ssmParameter" as const } : {}),
};

const network = new Network("existing", {
  existingVpcId: config.require("vpcId"),
  existingSubnetIds: config.requireObject<string[]>("subnetIds"),
  endpoints: ["secretsmanager", "logs", "autoscaling", "ssm"],
});
const placement = { vpcId: network.vpcId, subnetIds: network.privateSubnetIds };

const vcs = new VcsAgentPool("bitbucket", {
  ...placement,
  ...proxy,
  token: config.requireSecret("vcsAgentToken"),
  targetBaseEndpoint: gitEndpoint,
  vendor: config.require("gitVendor") as "bitbucket_datacenter",
  parallelism: 8,
});

const workerSecretArn = config.get("workerSecretArn");
const workers = new WorkerPool("runners", {
  ...placement,
  ...proxy,
  ...(workerSecretArn
    ? { existingSecretArn: workerSecretArn }
    : { token: config.requireSecret("workerToken"), poolPrivateKey: config.requireSecret("workerPrivateKey") }),
  vcsAgents: [{ name: "bitbucket", baseEndpoint: gitEndpoint }],
  maskedEnvVars: ["TF_VAR_db_password"],
  mixedInstances: {
    instanceTypes: ["m6i.large", "m7a.large"],
    onDemandBaseCapacity: 1,
    onDemandPercentageAboveBaseCapacity: 50,
  },
});

export const vcsAgentGroup = vcs.autoScalingGroupName;
export const workerGroup = workers.autoScalingGroupName;
export const workerLogs = workers.logGroupName;
