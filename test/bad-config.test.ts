import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { FlowsAgentPool, InvalidArgumentsError, Network, UserDataTooLargeError, VcsAgentPool, WorkerPool } from "../components";
import { recorded, settled } from "../devkit/pulumi-mocks";
import { flowsArgs, vcsArgs, workerArgs, TOKENS } from "../devkit/fixtures";

type Case = [description: string, make: (name: string) => unknown, field: string, shows?: string];

const KEY_NOT_PEM = Buffer.from("just some text").toString("base64");
const HUGE_CA = `-----BEGIN CERTIFICATE-----\n${randomBytes(30_000).toString("base64").match(/.{1,64}/g)?.join("\n")}\n-----END CERTIFICATE-----\n`;

const cases: Case[] = [
  // WorkerPool
  ["burstable instance type", (n) => new WorkerPool(n, workerArgs({ instanceType: "t3.large" })), "instanceType", 'such as "m7i.large"'],
  ["burstable type among mixed instances", (n) => new WorkerPool(n, workerArgs({ mixedInstances: { instanceTypes: ["m7i.large", "t3a.large"] } })), "mixedInstances.instanceTypes[1]", '"t3a.large"'],
  ["mixed instances of another architecture", (n) => new WorkerPool(n, workerArgs({ mixedInstances: { instanceTypes: ["m7g.large"] } })), "mixedInstances.instanceTypes[0]", "arm64"],
  ["minSize above maxSize", (n) => new WorkerPool(n, workerArgs({ minSize: 5, maxSize: 2 })), "minSize", "(got 5)"],
  ["desiredCapacity outside min..max", (n) => new WorkerPool(n, workerArgs({ desiredCapacity: 10 })), "desiredCapacity", "(got 10)"],
  ["missing worker token", (n) => new WorkerPool(n, workerArgs({ token: undefined })), "token"],
  ["private key that is not base64", (n) => new WorkerPool(n, workerArgs({ poolPrivateKey: "not base64!" })), "poolPrivateKey"],
  ["private key that is not a PEM key", (n) => new WorkerPool(n, workerArgs({ poolPrivateKey: KEY_NOT_PEM })), "poolPrivateKey"],
  ["relative extra mount", (n) => new WorkerPool(n, workerArgs({ extraMounts: ["relative:/x"] })), "extraMounts[0]", '"relative:/x"'],
  ["masked variable with a bad name", (n) => new WorkerPool(n, workerArgs({ maskedEnvVars: ["BAD-NAME"] })), "maskedEnvVars[0]", '"BAD-NAME"'],
  ["logs timeout in words", (n) => new WorkerPool(n, workerArgs({ logsTimeout: "7 minutes" })), "logsTimeout", '"7 minutes"'],
  ["run timeout without a unit", (n) => new WorkerPool(n, workerArgs({ runTimeout: "70" })), "runTimeout", '"70"'],
  ["worker network with a space", (n) => new WorkerPool(n, workerArgs({ workerNetwork: "bad network" })), "workerNetwork"],
  ["VCS agent mapping without a URL", (n) => new WorkerPool(n, workerArgs({ vcsAgents: [{ name: "ghe", baseEndpoint: "not a url" }] })), "vcsAgents[0].baseEndpoint"],
  ["policy given and as a file", (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { allowedImages: ["alpine:*"] }, runInitializationPolicyFile: "/etc/policy" })), "runInitializationPolicyFile"],
  ["policy with an unknown rule", (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { allowedImage: ["alpine:*"] } as never })), "runInitializationPolicy.allowedImage"],
  ["policy with a bad regular expression", (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { deniedCommands: ["(unclosed"] } })), "runInitializationPolicy.deniedCommands[0]", "regular expression"],
  ["the process executor on a pool", (n) => new WorkerPool(n, workerArgs({ executor: "process" })), "executor"],
  ["a credential whitelisted to runs", (n) => new WorkerPool(n, workerArgs({ whitelistedEnvVars: ["SPACELIFT_TOKEN"] })), "whitelistedEnvVars[0]", "never passed to runs"],
  ["drain shorter than a run", (n) => new WorkerPool(n, workerArgs({ drainTimeoutSeconds: 600 })), "drainTimeoutSeconds", "(got 600)"],
  ["misspelt argument", (n) => new WorkerPool(n, { ...workerArgs(), paralelism: 4 } as never), "paralelism"],
  ["metadata tag with a dash", (n) => new WorkerPool(n, workerArgs({ metadataTags: { "bad-key": "x" } })), "metadataTags.bad-key", "letters, digits and _"],
  // VcsAgentPool
  ["unknown VCS vendor", (n) => new VcsAgentPool(n, vcsArgs({ vendor: "gitea" as never })), "vendor", '"gitea"'],
  ["target endpoint without a scheme", (n) => new VcsAgentPool(n, vcsArgs({ targetBaseEndpoint: "gitlab.internal" })), "targetBaseEndpoint", '"gitlab.internal"'],
  ["allowed projects that do not compile", (n) => new VcsAgentPool(n, vcsArgs({ allowedProjects: "(" })), "allowedProjects", '"("'],
  ["parallelism of zero", (n) => new VcsAgentPool(n, vcsArgs({ parallelism: 0 })), "parallelism", "(got 0)"],
  ["fractional parallelism", (n) => new VcsAgentPool(n, vcsArgs({ parallelism: 2.5 })), "parallelism", "(got 2.5)"],
  ["empty VCS token", (n) => new VcsAgentPool(n, vcsArgs({ token: "" })), "token"],
  ["proxy with credentials", (n) => new VcsAgentPool(n, vcsArgs({ httpsProxy: "http://user:pw@proxy:3128" })), "httpsProxy", "must not contain credentials"],
  ["malformed VPC ID", (n) => new VcsAgentPool(n, vcsArgs({ vpcId: "vpc-xyz" })), "vpcId", '"vpc-xyz"'],
  ["no subnets", (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: [] })), "subnetIds"],
  ["a subnet twice", (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: ["subnet-0123456789abcdef1", "subnet-0123456789abcdef1"] })), "subnetIds", "twice"],
  ["malformed subnet ID", (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: ["sn-1"] })), "subnetIds[0]", '"sn-1"'],
  ["token and an existing secret", (n) => new VcsAgentPool(n, vcsArgs({ existingSecretArn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf" })), "token", "not both"],
  ["existing secret that is not an ARN", (n) => new VcsAgentPool(n, vcsArgs({ token: undefined, existingSecretArn: "my-secret" })), "existingSecretArn", '"my-secret"'],
  // FlowsAgentPool
  ["unknown executor", (n) => new FlowsAgentPool(n, flowsArgs({ executor: "kubernetes" as never })), "executor", '"kubernetes"'],
  ["privileged runtime containers", (n) => new FlowsAgentPool(n, flowsArgs({ extraDockerParams: ["--privileged"] })), "extraDockerParams[0]", '"--privileged"'],
  ["added capabilities", (n) => new FlowsAgentPool(n, flowsArgs({ extraDockerParams: ["--cap-add=SYS_ADMIN"] })), "extraDockerParams[0]"],
  ["runtime pool of zero", (n) => new FlowsAgentPool(n, flowsArgs({ runtimePoolSize: 0 })), "runtimePoolSize"],
  ["gateway endpoint with a websocket scheme", (n) => new FlowsAgentPool(n, flowsArgs({ gatewayEndpoint: "ws://gateway" })), "gatewayEndpoint"],
  ["pool ID with a space", (n) => new FlowsAgentPool(n, flowsArgs({ poolId: "has space" })), "poolId"],
  ["image reference in capitals", (n) => new FlowsAgentPool(n, flowsArgs({ runtimeImage: "UPPER/Case" })), "runtimeImage"],
  ["CA certificates that are not PEM", (n) => new FlowsAgentPool(n, flowsArgs({ customCaCertificates: "not a cert" })), "customCaCertificates"],
  ["CA certificates from SSM with no certificates", (n) => new FlowsAgentPool(n, flowsArgs({ customCaCertificates: undefined, customCaCertificatesDelivery: "ssmParameter" })), "customCaCertificatesDelivery", '"ssmParameter"'],
  ["CA certificates over an SSM parameter's 8 KB", (n) => new FlowsAgentPool(n, flowsArgs({ customCaCertificates: HUGE_CA, customCaCertificatesDelivery: "ssmParameter" })), "customCaCertificates", "at most 8192"],
  ["CA delivery not offered", (n) => new VcsAgentPool(n, vcsArgs({ customCaCertificatesDelivery: "s3" as never })), "customCaCertificatesDelivery", '"s3"'],
  ["missing Flows token", (n) => new FlowsAgentPool(n, flowsArgs({ poolToken: undefined })), "poolToken"],
  // Shared AWS arguments
  ["log retention CloudWatch does not offer", (n) => new VcsAgentPool(n, vcsArgs({ logRetentionDays: 45 as never })), "logRetentionDays", "(got 45)"],
  ["root volume too small", (n) => new VcsAgentPool(n, vcsArgs({ rootVolumeSizeGiB: 4 })), "rootVolumeSizeGiB"],
  ["malformed AMI ID", (n) => new VcsAgentPool(n, vcsArgs({ amiId: "ami-123" })), "amiId", '"ami-123"'],
  ["KMS alias without an ARN", (n) => new VcsAgentPool(n, vcsArgs({ secretKmsKeyArn: "alias/foo" })), "secretKmsKeyArn"],
  ["permissions boundary that is not an ARN", (n) => new VcsAgentPool(n, vcsArgs({ permissionsBoundaryArn: "boundary" })), "permissionsBoundaryArn"],
  ["extra statement granting every action", (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ Effect: "Allow", Action: "*", Resource: "*" }] })), "extraPolicyStatements[0].Action"],
  ["egress to an address without a prefix", (n) => new VcsAgentPool(n, vcsArgs({ egressCidrBlocks: ["0.0.0.0"] })), "egressCidrBlocks[0]"],
  ["end-of-life Node.js", (n) => new VcsAgentPool(n, vcsArgs({ nodeMajor: 20 as never })), "nodeMajor"],
  ["alarm action that is not an ARN", (n) => new VcsAgentPool(n, vcsArgs({ alarmActions: ["sns-topic"] })), "alarmActions[0]"],
  ["tag in AWS's namespace", (n) => new VcsAgentPool(n, vcsArgs({ tags: { "aws:owner": "me" } })), "tags.aws:owner", 'may not start with "aws:"'],
  ["secret recovery window under 7 days", (n) => new VcsAgentPool(n, vcsArgs({ secretRecoveryWindowDays: 3 })), "secretRecoveryWindowDays"],
  // Network
  ["VPC range too wide", (n) => new Network(n, { cidrBlock: "10.0.0.0/8" }), "cidrBlock"],
  ["four availability zones", (n) => new Network(n, { availabilityZoneCount: 4 as never }), "availabilityZoneCount"],
  ["new-VPC argument with an existing VPC", (n) => new Network(n, { existingVpcId: "vpc-0123456789abcdef0", existingSubnetIds: ["subnet-0123456789abcdef1"], cidrBlock: "10.1.0.0/16" }), "cidrBlock"],
  ["existing VPC without subnets", (n) => new Network(n, { existingVpcId: "vpc-0123456789abcdef0" }), "existingSubnetIds"],
  ["S3 endpoint without route tables", (n) => new Network(n, { existingVpcId: "vpc-0123456789abcdef0", existingSubnetIds: ["subnet-0123456789abcdef1"], endpoints: ["s3"] }), "existingRouteTableIds"],
  ["endpoint not offered", (n) => new Network(n, { endpoints: ["dynamodb" as never] }), "endpoints[0]"],
  ["NAT layout not offered", (n) => new Network(n, { natGateways: "two" as never }), "natGateways"],
];

describe("bad configuration is refused before anything is created", () => {
  const names: string[] = [];

  it(`has at least 40 distinct cases (${cases.length})`, () => {
    assert.ok(cases.length >= 40);
    assert.equal(new Set(cases.map(([d]) => d)).size, cases.length);
  });

  cases.forEach(([description, make, field, shows], index) => {
    it(`${description}: names ${field}`, () => {
      const name = `bad-${index}`;
      names.push(name);
      assert.throws(
        () => make(name),
        (error: Error) => {
          assert.ok(error instanceof InvalidArgumentsError, `${error.name}: ${error.message}`);
          assert.ok(error.message.includes(`"${name}"`), "names the resource");
          const line = error.problems.find((p) => p.startsWith(`${field}:`) || p.startsWith(`${field},`));
          assert.ok(line, `no problem names ${field}:\n${error.message}`);
          if (shows) assert.ok(line.includes(shows), `"${line}" does not include ${shows}`);
          for (const token of Object.values(TOKENS)) assert.ok(!error.message.includes(token), "a secret is echoed");
          return true;
        },
      );
    });
  });

  it("an oversized configuration is refused with the pool's name and size", () => {
    names.push("bad-huge");
    assert.throws(
      () => new FlowsAgentPool("bad-huge", flowsArgs({ customCaCertificates: HUGE_CA })),
      (error: Error) => error instanceof UserDataTooLargeError && /pool "bad-huge": user-data is [0-9]+ bytes gzipped, over EC2's limit of 16384/.test(error.message) && error.message.includes('customCaCertificatesDelivery "ssmParameter"'),
    );
  });

  it("a refused component registered no resource", async () => {
    await settled("bad-none");
    const leaked = recorded.filter((r) => names.some((n) => r.name === n || r.name.startsWith(`${n}-`)));
    assert.deepEqual(leaked.map((r) => r.name), []);
  });

  it("a secret given as an Output is checked once known, without echoing it", async () => {
    const { secret } = await import("@pulumi/pulumi");
    const pool = new VcsAgentPool("bad-later", vcsArgs({ token: secret("") }));
    const version = (pool as unknown as { secretArn: { promise(): Promise<unknown> } }).secretArn;
    await version.promise(); // the secret itself exists; its version carries the check
    const resources = await settled("bad-later");
    assert.equal(resources.filter((r) => r.type === "aws:secretsmanager/secretVersion:SecretVersion").length, 0, "no version written from a bad token");
  });
});
