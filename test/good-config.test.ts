import assert from "node:assert/strict";
import { FlowsAgentPool, Network, VcsAgentPool, WorkerPool, decodeUserData, USER_DATA_LIMIT } from "../components";
import { ACCOUNT, REGION, byType, settled, valueOf } from "../devkit/pulumi-mocks";
import { CA_BUNDLE, CA_EC, flowsArgs, TOKENS, vcsArgs, workerArgs } from "../devkit/fixtures";
import { decodeToken, encodeToken } from "../protocol/token";

const KEY = `arn:aws:kms:${REGION}:${ACCOUNT}:key/mrk-1234abcd12ab34cd56ef1234567890ab`;
const tags = (count: number) =>
  Object.fromEntries(Array.from({ length: count }, (_, i) => [`Équipe ${i}.team/owner`, `alice+${i}@example.com`]));

/**
 * Good but unusual configurations: each is valid for AWS and for the runtime, and must be
 * taken as it is. A validator that refuses one of these is as wrong as one that takes bad input.
 */
const corpus: [string, (name: string) => { autoScalingGroupName?: unknown; vpcId?: unknown }][] = [
  [
    "a worker pool with every unusual-but-valid argument",
    (n) =>
      new WorkerPool(n, {
        ...workerArgs(),
        instanceType: "m7g.large",
        mixedInstances: {
          instanceTypes: ["c7g.large", "m6gd.large", "c7gn.large"],
          spotAllocationStrategy: "capacity-optimized",
        },
        tags: tags(47), // the kit adds three: 50, AWS's maximum
        runTimeout: "1h30m",
        logsTimeout: "500ms",
        drainTimeoutSeconds: 5400,
        runInitializationPolicy: { maxRunTimeout: "90m", allowedImages: ["Registry.Example.com:5000/*"] },
        egressCidrBlocks: ["10.0.0.0/8", "192.168.100.0/22", "0.0.0.0/0"],
        noProxy: "*.corp.example.com:8443,.internal,10.0.0.2,[fd00::1],host_name.lan",
        httpsProxy: "http://proxy.corp.example.com:3128",
        secretKmsKeyArn: KEY,
        logKmsKeyArn: KEY,
        volumeKmsKeyArn: `arn:aws:kms:${REGION}:${ACCOUNT}:alias/aws/ebs`,
        alarmActions: [
          `arn:aws:sns:${REGION}:${ACCOUNT}:pager.fifo`,
          `arn:aws:lambda:${REGION}:${ACCOUNT}:function:notify:live`,
          `arn:aws:ssm:${REGION}:${ACCOUNT}:opsitem:1#CATEGORY=Availability`,
          `arn:aws:ssm-incidents::${ACCOUNT}:response-plan/agents`,
        ],
        permissionsBoundaryArn: "arn:aws:iam::aws:policy/PowerUserAccess",
        extraPolicyStatements: [
          {
            Sid: "1",
            Effect: "Allow",
            Action: ["s3:Get*", "s3:List*"],
            Resource: ["arn:aws:s3:::state-*", "arn:aws:s3:::state-*/*"],
          },
          {
            Effect: "Deny",
            Action: "*",
            Resource: "*",
            Condition: {
              Bool: { "aws:ViaAWSService": false },
              StringNotEqualsIfExists: { "aws:SourceVpc": "vpc-0123456789abcdef0" },
            },
          },
          {
            Effect: "Deny",
            NotAction: ["logs:*", "secretsmanager:GetSecretValue", "autoscaling:*"],
            NotResource: `arn:aws:s3:::state-*`,
          },
        ],
        unhealthyAfterDisconnectedSeconds: 86_400,
      }),
  ],
  [
    "a Flows pool of the process executor that spells out the Docker settings' defaults, and one uid per runtime and spare",
    (n) =>
      new FlowsAgentPool(n, {
        ...flowsArgs({ executor: "process", runtimePoolSize: 8, runtimeUids: "1900000000-1900000015" }),
        runtimeImage: "node:24-alpine",
        gvisor: true,
        extraDockerParams: [],
        runtimeNetwork: "bridge",
      }),
  ],
  [
    "a VCS agent pool under a long name, with a CA bundle in the cacert.pem layout (CRLF) and a proxy for everything",
    (n) =>
      new VcsAgentPool(`${n}-${"v".repeat(48 - n.length - 1)}`, {
        ...vcsArgs(),
        targetBaseEndpoint: "https://git.corp.example.com:8443/gitlab/",
        allowedProjects: "^(infra|platform)/(?!archive-)[a-z0-9._-]+$",
        customCaCertificates: CA_BUNDLE.replace(/\n/g, "\r\n"),
        httpsProxy: "http://10.0.0.5:8080",
        noProxy: "*",
        awsApisViaProxy: true,
        existingSecretArn: `arn:aws:secretsmanager:${REGION}:210987654321:secret:shared/agents/vcs.token-Ab1Cd2`,
        token: undefined,
        // "aws-" is no reserved prefix ("aws:" is); ":" and "." are characters IAM takes.
        tags: { "aws-team": "platform", "cost:center": "42", "a.b": "" },
      }),
  ],
  [
    "a Flows pool with an image by registry, port, upper-case tag and digest, no gVisor, a mirror on a port",
    (n) =>
      new FlowsAgentPool(n, {
        ...flowsArgs(),
        runtimeImage: `Registry.Example.com:5000/flows/node-runtime:24-Alpine@sha256:${"0a".repeat(32)}`,
        registryMirror: "https://mirror.corp.example.com:5000",
        // https with any host, a port and a path: as the reference takes it.
        gatewayEndpoint: "HTTPS://Gateway.Corp.Example.com:8443/flows",
        gvisor: false,
        extraDockerParams: ["--dns=10.0.0.2", "--label=team=platform"],
        defaultRunTimeout: "90s",
        customCaCertificates: CA_EC,
        minSize: 0,
        maxSize: 1000,
        desiredCapacity: 0,
      }),
  ],
  [
    "a worker pool whose token names an https gateway on a port with a path, and a VCS pool whose gateway is loopback",
    (n) => {
      new VcsAgentPool(`${n}-vcs`, {
        ...vcsArgs(),
        token: encodeToken({ ...decodeToken(TOKENS.vcs), gateway: "http://127.0.0.1:8080" }),
      });
      return new WorkerPool(n, {
        ...workerArgs(),
        token: encodeToken({ ...decodeToken(TOKENS.worker), gateway: "https://10.0.0.5:9443/agents" }),
      });
    },
  ],
  [
    "a Network in a Local Zone with a zone of its region, a /24, its own tags up to AWS's count",
    (n) =>
      new Network(n, {
        cidrBlock: "192.168.0.0/24",
        availabilityZones: ["us-west-2a", "us-west-2-lax-1a"],
        natGateways: "perZone",
        tags: tags(49),
      }),
  ],
  [
    "a Network under a long name",
    (n) =>
      new Network(`${n}-${"n".repeat(150)}`, {
        existingVpcId: "vpc-0123456789abcdef0",
        existingSubnetIds: ["subnet-0123456789abcdef1"],
      }),
  ],
];

describe("good but unusual configurations are taken as they are", () => {
  corpus.forEach(([description, make], index) => {
    it(description, async () => {
      const name = `good-${index}`;
      const made = make(name);
      await valueOf((made.autoScalingGroupName ?? made.vpcId) as never);
      const resources = await settled(name);
      for (const lt of byType(resources, "aws:ec2/launchTemplate:LaunchTemplate")) {
        assert.ok(Buffer.from(lt.inputs.userData, "base64").length <= USER_DATA_LIMIT);
        assert.ok(decodeUserData(lt.inputs.userData).script.startsWith("#!/bin/bash"));
      }
      assert.ok(resources.length > 0);
    });
  });
});
