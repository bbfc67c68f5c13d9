import assert from "node:assert/strict";
import { createHash, generateKeyPairSync } from "node:crypto";
import {
  FlowsAgentPool,
  InvalidArgumentsError,
  Network,
  UserDataTooLargeError,
  VcsAgentPool,
  WorkerPool,
} from "../components";
import { caCertificates } from "../devkit/certificates";
import { recorded, settled } from "../devkit/pulumi-mocks";
import { CA_EC, DOCKER_ONLY_VALUES, flowsArgs, vcsArgs, workerArgs, TOKENS } from "../devkit/fixtures";
import { decodeToken, encodeToken } from "../protocol/token";

/** A refusal: what is refused, the field its problem names, what the line shows, and what the whole error must never show. */
type Case = [description: string, make: (name: string) => unknown, field: string, shows?: string, hides?: string[]];

const KEY_NOT_PEM = Buffer.from("just some text").toString("base64");
/** A real private key: pasted where a certificate belongs, not a byte of it may be echoed. */
const PRIVATE_KEY = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({
  type: "pkcs8",
  format: "pem",
}) as string;
const KEY_BODY = PRIVATE_KEY.split("\n")[1];
const A = "123456789012";
const KEY = `arn:aws:kms:eu-west-1:${A}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
const tags = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`tag${i}`, "v"]));
const statement = { Effect: "Allow" as const, Action: "s3:GetObject", Resource: "arn:aws:s3:::bucket/*" };

const cases: Case[] = [
  // WorkerPool
  [
    "burstable instance type",
    (n) => new WorkerPool(n, workerArgs({ instanceType: "t3.large" })),
    "instanceType",
    'such as "m7i.large"',
  ],
  [
    "burstable type among mixed instances",
    (n) => new WorkerPool(n, workerArgs({ mixedInstances: { instanceTypes: ["m7i.large", "t3a.large"] } })),
    "mixedInstances.instanceTypes[1]",
    '"t3a.large"',
  ],
  [
    "mixed instances of another architecture",
    (n) => new WorkerPool(n, workerArgs({ mixedInstances: { instanceTypes: ["m7g.large"] } })),
    "mixedInstances.instanceTypes[0]",
    "arm64",
  ],
  ["minSize above maxSize", (n) => new WorkerPool(n, workerArgs({ minSize: 5, maxSize: 2 })), "minSize", "(got 5)"],
  [
    "desiredCapacity outside min..max",
    (n) => new WorkerPool(n, workerArgs({ desiredCapacity: 10 })),
    "desiredCapacity",
    "(got 10)",
  ],
  ["missing worker token", (n) => new WorkerPool(n, workerArgs({ token: undefined })), "token"],
  [
    "private key that is not base64",
    (n) => new WorkerPool(n, workerArgs({ poolPrivateKey: "not base64!" })),
    "poolPrivateKey",
  ],
  [
    "private key that is not a PEM key",
    (n) => new WorkerPool(n, workerArgs({ poolPrivateKey: KEY_NOT_PEM })),
    "poolPrivateKey",
  ],
  [
    "relative extra mount",
    (n) => new WorkerPool(n, workerArgs({ extraMounts: ["relative:/x"] })),
    "extraMounts[0]",
    '"relative:/x"',
  ],
  [
    "masked variable with a bad name",
    (n) => new WorkerPool(n, workerArgs({ maskedEnvVars: ["BAD-NAME"] })),
    "maskedEnvVars[0]",
    '"BAD-NAME"',
  ],
  [
    "logs timeout in words",
    (n) => new WorkerPool(n, workerArgs({ logsTimeout: "7 minutes" })),
    "logsTimeout",
    '"7 minutes"',
  ],
  ["run timeout without a unit", (n) => new WorkerPool(n, workerArgs({ runTimeout: "70" })), "runTimeout", '"70"'],
  [
    "run timeout past Node's longest timer (a run would be killed at once)",
    (n) => new WorkerPool(n, workerArgs({ runTimeout: "1000h" })),
    "runTimeout",
    "must be shorter than 596h",
  ],
  [
    "worker network with a space",
    (n) => new WorkerPool(n, workerArgs({ workerNetwork: "bad network" })),
    "workerNetwork",
  ],
  [
    "VCS agent mapping without a URL",
    (n) => new WorkerPool(n, workerArgs({ vcsAgents: [{ name: "ghe", baseEndpoint: "not a url" }] })),
    "vcsAgents[0].baseEndpoint",
  ],
  [
    "policy given and as a file",
    (n) =>
      new WorkerPool(
        n,
        workerArgs({
          runInitializationPolicy: { allowedImages: ["alpine:*"] },
          runInitializationPolicyFile: "/etc/policy",
        }),
      ),
    "runInitializationPolicyFile",
  ],
  [
    "policy with an unknown rule",
    (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { allowedImage: ["alpine:*"] } as never })),
    "runInitializationPolicy.allowedImage",
  ],
  [
    "policy with a bad regular expression",
    (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { deniedCommands: ["(unclosed"] } })),
    "runInitializationPolicy.deniedCommands[0]",
    "regular expression",
  ],
  ["the process executor on a pool", (n) => new WorkerPool(n, workerArgs({ executor: "process" })), "executor"],
  [
    "a credential whitelisted to runs",
    (n) => new WorkerPool(n, workerArgs({ whitelistedEnvVars: ["SPACELIFT_TOKEN"] })),
    "whitelistedEnvVars[0]",
    "never passed to runs",
  ],
  [
    "drain shorter than a run",
    (n) => new WorkerPool(n, workerArgs({ drainTimeoutSeconds: 600 })),
    "drainTimeoutSeconds",
    "(got 600)",
  ],
  [
    "runs on the host's network",
    (n) => new WorkerPool(n, workerArgs({ workerNetwork: "host" })),
    "workerNetwork",
    "instance metadata service",
  ],
  [
    "a logs timeout of zero",
    (n) => new WorkerPool(n, workerArgs({ logsTimeout: "0m" })),
    "logsTimeout",
    "longer than zero",
  ],
  [
    "a policy's longest run of zero",
    (n) => new WorkerPool(n, workerArgs({ runInitializationPolicy: { maxRunTimeout: "0h0m" } })),
    "runInitializationPolicy.maxRunTimeout",
    "longer than zero",
  ],
  [
    "a worker token with a trailing line break",
    (n) => new WorkerPool(n, workerArgs({ token: `${TOKENS.worker}\n` })),
    "token",
    "line breaks",
    [TOKENS.worker],
  ],
  [
    "a VCS pool's token for workers",
    (n) => new WorkerPool(n, workerArgs({ token: TOKENS.vcs })),
    "token",
    "carries its certificate",
    [TOKENS.vcs],
  ],
  [
    "a worker token for VCS agents",
    (n) => new VcsAgentPool(n, vcsArgs({ token: TOKENS.worker })),
    "token",
    "belongs to a WorkerPool",
    [TOKENS.worker],
  ],
  [
    "a token of another service",
    (n) => new VcsAgentPool(n, vcsArgs({ token: "spacelift-vcs-token-abcdef" })),
    "token",
    '"ap1."',
    ["spacelift-vcs-token-abcdef"],
  ],
  [
    "a token that names no pool",
    (n) =>
      new VcsAgentPool(n, vcsArgs({ token: encodeToken({ gateway: "https://gw", secret: "x".repeat(20) } as never) })),
    "token",
  ],
  ["misspelt argument", (n) => new WorkerPool(n, { ...workerArgs(), paralelism: 4 } as never), "paralelism"],
  [
    "metadata tag with a dash",
    (n) => new WorkerPool(n, workerArgs({ metadataTags: { "bad-key": "x" } })),
    "metadataTags.bad-key",
    "letters, digits and _",
  ],
  // Scaling (AWS's rules for warm pools, lifetimes, policies and CloudWatch names)
  [
    "a warm pool with mixed instances",
    (n) => new WorkerPool(n, workerArgs({ warmPool: {}, mixedInstances: { instanceTypes: ["m6i.large"] } })),
    "warmPool",
    "mixed instances policy",
  ],
  [
    "a warm pool of hibernated instances",
    (n) => new WorkerPool(n, workerArgs({ warmPool: { poolState: "Hibernated" as never } })),
    "warmPool.poolState",
    '"Hibernated"',
  ],
  [
    "a warm pool's prepared capacity below minSize",
    (n) => new WorkerPool(n, workerArgs({ minSize: 2, warmPool: { maxPreparedCapacity: 1 } })),
    "warmPool.maxPreparedCapacity",
    "(got 1)",
  ],
  [
    "an instance lifetime of zero days",
    (n) => new WorkerPool(n, workerArgs({ maxInstanceLifetimeDays: 0 })),
    "maxInstanceLifetimeDays",
    "(got 0)",
  ],
  [
    "an instance lifetime over a year",
    (n) => new WorkerPool(n, workerArgs({ maxInstanceLifetimeDays: 366 })),
    "maxInstanceLifetimeDays",
    "(got 366)",
  ],
  [
    "a busy target of zero",
    (n) => new WorkerPool(n, workerArgs({ scaling: { targetBusyPercent: 0 } })),
    "scaling.targetBusyPercent",
    "(got 0)",
  ],
  [
    "a busy target over 100%",
    (n) => new WorkerPool(n, workerArgs({ scaling: { targetBusyPercent: 150 } })),
    "scaling.targetBusyPercent",
    "(got 150)",
  ],
  [
    "a demand metric with a misspelt field",
    (n) => new WorkerPool(n, workerArgs({ scaling: { demandMetric: { namespace: "S", metricname: "Q" } as never } })),
    "scaling.demandMetric.metricName",
  ],
  [
    "a demand namespace starting with a colon",
    (n) => new WorkerPool(n, workerArgs({ scaling: { demandMetric: { namespace: ":queue", metricName: "Q" } } })),
    "scaling.demandMetric.namespace",
    '":queue"',
  ],
  [
    "a demand metric with 31 dimensions",
    (n) =>
      new WorkerPool(
        n,
        workerArgs({ scaling: { demandMetric: { namespace: "S", metricName: "Q", dimensions: tags(31) } } }),
      ),
    "scaling.demandMetric.dimensions",
    "at most 30",
  ],
  [
    "a demand statistic CloudWatch lacks",
    (n) =>
      new WorkerPool(
        n,
        workerArgs({ scaling: { demandMetric: { namespace: "S", metricName: "Q", statistic: "Median" as never } } }),
      ),
    "scaling.demandMetric.statistic",
    '"Median"',
  ],
  // VcsAgentPool
  ["unknown VCS vendor", (n) => new VcsAgentPool(n, vcsArgs({ vendor: "gitea" as never })), "vendor", '"gitea"'],
  [
    "target endpoint without a scheme",
    (n) => new VcsAgentPool(n, vcsArgs({ targetBaseEndpoint: "gitlab.internal" })),
    "targetBaseEndpoint",
    '"gitlab.internal"',
  ],
  [
    "allowed projects that do not compile",
    (n) => new VcsAgentPool(n, vcsArgs({ allowedProjects: "(" })),
    "allowedProjects",
    '"("',
  ],
  ["parallelism of zero", (n) => new VcsAgentPool(n, vcsArgs({ parallelism: 0 })), "parallelism", "(got 0)"],
  ["fractional parallelism", (n) => new VcsAgentPool(n, vcsArgs({ parallelism: 2.5 })), "parallelism", "(got 2.5)"],
  ["empty VCS token", (n) => new VcsAgentPool(n, vcsArgs({ token: "" })), "token"],
  [
    "proxy with credentials",
    (n) => new VcsAgentPool(n, vcsArgs({ httpsProxy: "http://user:s3cr3t-pw@proxy:3128" })),
    "httpsProxy",
    "must not contain credentials",
    ["s3cr3t-pw"],
  ],
  [
    "proxy with credentials after an empty host (http:///user:pass@host: a URL reads them all the same)",
    (n) => new VcsAgentPool(n, vcsArgs({ httpsProxy: "http:///user:s3cr3t-pw@proxy:3128" })),
    "httpsProxy",
    "must not contain credentials",
    ["s3cr3t-pw"],
  ],
  [
    "VCS endpoint with credentials",
    (n) => new VcsAgentPool(n, vcsArgs({ targetBaseEndpoint: "https://deploy:glpat-s3cr3t@gitlab.internal" })),
    "targetBaseEndpoint",
    "user-data",
    ["glpat-s3cr3t"],
  ],
  [
    "VCS endpoint with credentials that is no URL either",
    (n) => new VcsAgentPool(n, vcsArgs({ targetBaseEndpoint: "https://deploy:glpat-s3cr3t@gitlab internal" })),
    "targetBaseEndpoint",
    undefined,
    ["glpat-s3cr3t"],
  ],
  [
    "proxy with a vertical tab, which would land as it is in dnf.conf, daemon.json and the unit",
    (n) => new VcsAgentPool(n, vcsArgs({ httpsProxy: "http://proxy.corp:3128/\x0b" })),
    "httpsProxy",
    "must hold no control character",
  ],
  [
    "registry mirror with a token in its query (Docker refuses one, and it would be readable in user-data)",
    (n) => new FlowsAgentPool(n, flowsArgs({ registryMirror: "https://registry.internal/?token=mirror-q-s3cr3t" })),
    "registryMirror",
    "must have no query",
    ["mirror-q-s3cr3t"],
  ],
  [
    "gateway endpoint with a fragment (the agent's paths replace it)",
    (n) => new FlowsAgentPool(n, flowsArgs({ gatewayEndpoint: "https://gateway.corp/#frag-s3cr3t" })),
    "gatewayEndpoint",
    "or fragment",
    ["frag-s3cr3t"],
  ],
  [
    "runtime uids of Amazon Linux's login users (ec2-user is 1000)",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeUids: "1000-1255" })),
    "runtimeUids",
    "must not overlap 1000-65535",
  ],
  [
    "runtime uids of systemd's dynamic service users (61184-65519)",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeUids: "61184-61439" })),
    "runtimeUids",
    "systemd's dynamic users",
  ],
  [
    "runtime uids among ec2-user's subordinate uids (100000-165535)",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeUids: "100000-100255" })),
    "runtimeUids",
    "subordinate uids",
  ],
  [
    "runtime uids that hold nobody (65534), which daemons share",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeUids: "65000-65600" })),
    "runtimeUids",
    "without 65534",
  ],
  [
    "registry mirror with credentials",
    (n) => new FlowsAgentPool(n, flowsArgs({ registryMirror: "https://robot:mirror-s3cr3t@registry.internal" })),
    "registryMirror",
    "user-data",
    ["mirror-s3cr3t"],
  ],
  [
    "a worker's VCS mapping with credentials",
    (n) =>
      new WorkerPool(
        n,
        workerArgs({ vcsAgents: [{ name: "git", baseEndpoint: "https://ci:map-s3cr3t@git.internal" }] }),
      ),
    "vcsAgents[0].baseEndpoint",
    "user-data",
    ["map-s3cr3t"],
  ],
  ["malformed VPC ID", (n) => new VcsAgentPool(n, vcsArgs({ vpcId: "vpc-xyz" })), "vpcId", '"vpc-xyz"'],
  ["no subnets", (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: [] })), "subnetIds"],
  [
    "a subnet twice",
    (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: ["subnet-0123456789abcdef1", "subnet-0123456789abcdef1"] })),
    "subnetIds",
    "twice",
  ],
  ["malformed subnet ID", (n) => new VcsAgentPool(n, vcsArgs({ subnetIds: ["sn-1"] })), "subnetIds[0]", '"sn-1"'],
  [
    "token and an existing secret",
    (n) =>
      new VcsAgentPool(
        n,
        vcsArgs({ existingSecretArn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf" }),
      ),
    "token",
    "not both",
  ],
  [
    "existing secret that is not an ARN",
    (n) => new VcsAgentPool(n, vcsArgs({ token: undefined, existingSecretArn: "my-secret" })),
    "existingSecretArn",
    '"my-secret"',
  ],
  // FlowsAgentPool
  [
    "unknown executor",
    (n) => new FlowsAgentPool(n, flowsArgs({ executor: "kubernetes" as never })),
    "executor",
    '"kubernetes"',
  ],
  [
    "privileged runtime containers",
    (n) => new FlowsAgentPool(n, flowsArgs({ extraDockerParams: ["--privileged"] })),
    "extraDockerParams[0]",
    '"--privileged"',
  ],
  [
    "added capabilities",
    (n) => new FlowsAgentPool(n, flowsArgs({ extraDockerParams: ["--cap-add=SYS_ADMIN"] })),
    "extraDockerParams[0]",
  ],
  ["runtime pool of zero", (n) => new FlowsAgentPool(n, flowsArgs({ runtimePoolSize: 0 })), "runtimePoolSize"],
  [
    "gateway endpoint with a websocket scheme",
    (n) => new FlowsAgentPool(n, flowsArgs({ gatewayEndpoint: "ws://gateway" })),
    "gatewayEndpoint",
  ],
  [
    "gateway endpoint in plain http over a network (the pool's token would cross in clear)",
    (n) => new FlowsAgentPool(n, flowsArgs({ gatewayEndpoint: "http://gateway.useflows.eu" })),
    "gatewayEndpoint",
    '"http://gateway.useflows.eu"',
  ],
  [
    "a worker token whose gateway is plain http over a network",
    (n) =>
      new WorkerPool(
        n,
        workerArgs({
          token: encodeToken({ ...decodeToken(TOKENS.worker), gateway: "http://gateway.example.com:8080" }),
        }),
      ),
    "token",
    "its gateway http://gateway.example.com:8080 is not allowed: use https://, or http:// only to localhost, 127.0.0.0/8 or [::1]",
    ["wkr-secret-5f0c1d2e3a4b5c6d"],
  ],
  [
    "a VCS token whose gateway is plain http over a network",
    (n) =>
      new VcsAgentPool(n, vcsArgs({ token: encodeToken({ ...decodeToken(TOKENS.vcs), gateway: "http://10.1.2.3" }) })),
    "token",
    "its gateway http://10.1.2.3 is not allowed",
    ["vcs-secret-9a8b7c6d5e4f3a2b"],
  ],
  ["pool ID with a space", (n) => new FlowsAgentPool(n, flowsArgs({ poolId: "has space" })), "poolId"],
  [
    "image reference in capitals",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeImage: "UPPER/Case" })),
    "runtimeImage",
  ],
  [
    "image reference with an empty tag",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeImage: "node:" })),
    "runtimeImage",
  ],
  [
    "image reference with a short digest",
    (n) => new FlowsAgentPool(n, flowsArgs({ runtimeImage: "node@sha256:abc" })),
    "runtimeImage",
  ],
  [
    "the process executor on EC2 without namespaces",
    (n) => new FlowsAgentPool(n, flowsArgs({ executor: "process", runtimeIsolation: "user" })),
    "runtimeIsolation",
    "instance metadata service",
  ],
  [
    "the process executor on EC2, isolation that may step down",
    (n) => new FlowsAgentPool(n, flowsArgs({ executor: "process", runtimeIsolation: "auto" })),
    "runtimeIsolation",
    '"auto"',
  ],
  // The process executor refuses what only the Docker executor reads, rather than ignoring it.
  ...Object.entries(DOCKER_ONLY_VALUES).map(([key, value]): Case => [
    `the process executor given ${key}, which only the Docker executor reads`,
    (n) => new FlowsAgentPool(n, flowsArgs({ executor: "process", [key]: value })),
    key,
    "Docker executor only",
  ]),
  [
    "the process executor with fewer uids than twice its runtimes",
    (n) =>
      new FlowsAgentPool(
        n,
        flowsArgs({ executor: "process", runtimePoolSize: 8, runtimeUids: "1900000000-1900000014" }),
      ),
    "runtimeUids",
    '"1900000000-1900000014"',
  ],
  [
    "a run timeout of zero",
    (n) => new FlowsAgentPool(n, flowsArgs({ defaultRunTimeout: "0s" })),
    "defaultRunTimeout",
    "longer than zero",
  ],
  [
    "a Flows token that is a VCS pool's",
    (n) => new FlowsAgentPool(n, flowsArgs({ poolToken: TOKENS.vcs })),
    "poolToken",
    '"ap1." token',
  ],
  [
    "a Flows token with a space",
    (n) => new FlowsAgentPool(n, flowsArgs({ poolToken: "flw token 1a2b3c4d5e6f" })),
    "poolToken",
    "spaces or line breaks",
    ["flw token"],
  ],
  [
    "CA certificates that are not PEM",
    (n) => new FlowsAgentPool(n, flowsArgs({ customCaCertificates: "not a cert" })),
    "customCaCertificates",
    "no PEM certificate",
    ["not a cert"],
  ],
  [
    "a private key pasted for CA certificates",
    (n) => new FlowsAgentPool(n, flowsArgs({ customCaCertificates: PRIVATE_KEY })),
    "customCaCertificates",
    "not shown",
    [KEY_BODY, "PRIVATE KEY-----\nMI"],
  ],
  [
    "a certificate among CAs that does not parse",
    (n) =>
      new FlowsAgentPool(
        n,
        flowsArgs({
          customCaCertificates: `${CA_EC}-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAAAAAA==\n-----END CERTIFICATE-----\n`,
        }),
      ),
    "customCaCertificates",
    "block 2 is not a valid X.509 certificate",
  ],
  [
    "a NUL among CA certificates (bash drops it: a line 'EOF\\0' would end the boot script's heredoc, the rest run as root)",
    (n) =>
      new FlowsAgentPool(
        n,
        flowsArgs({ customCaCertificates: `${CA_EC}\nEOF\0\necho pwned > /tmp/x\ncat >/dev/null <<'EOF'\n` }),
      ),
    "customCaCertificates",
    "has a control character (code 0)",
    ["echo pwned"],
  ],
  [
    "a certificate cut short",
    (n) => new VcsAgentPool(n, vcsArgs({ customCaCertificates: CA_EC.slice(0, 200) })),
    "customCaCertificates",
    "without its pair",
  ],
  [
    "CA certificates from SSM with no certificates",
    (n) =>
      new FlowsAgentPool(
        n,
        flowsArgs({ customCaCertificates: undefined, customCaCertificatesDelivery: "ssmParameter" }),
      ),
    "customCaCertificatesDelivery",
    '"ssmParameter"',
  ],
  [
    "CA delivery not offered",
    (n) => new VcsAgentPool(n, vcsArgs({ customCaCertificatesDelivery: "s3" as never })),
    "customCaCertificatesDelivery",
    '"s3"',
  ],
  ["missing Flows token", (n) => new FlowsAgentPool(n, flowsArgs({ poolToken: undefined })), "poolToken"],
  // Shared AWS arguments
  [
    "log retention CloudWatch does not offer",
    (n) => new VcsAgentPool(n, vcsArgs({ logRetentionDays: 45 as never })),
    "logRetentionDays",
    "(got 45)",
  ],
  ["root volume too small", (n) => new VcsAgentPool(n, vcsArgs({ rootVolumeSizeGiB: 4 })), "rootVolumeSizeGiB"],
  ["malformed AMI ID", (n) => new VcsAgentPool(n, vcsArgs({ amiId: "ami-123" })), "amiId", '"ami-123"'],
  [
    "KMS alias without an ARN",
    (n) => new VcsAgentPool(n, vcsArgs({ secretKmsKeyArn: "alias/foo" })),
    "secretKmsKeyArn",
  ],
  [
    "permissions boundary that is not an ARN",
    (n) => new VcsAgentPool(n, vcsArgs({ permissionsBoundaryArn: "boundary" })),
    "permissionsBoundaryArn",
  ],
  [
    "extra statement granting every action",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ Effect: "Allow", Action: "*", Resource: "*" }] })),
    "extraPolicyStatements[0].Action",
  ],
  [
    "egress to an address without a prefix",
    (n) => new VcsAgentPool(n, vcsArgs({ egressCidrBlocks: ["0.0.0.0"] })),
    "egressCidrBlocks[0]",
  ],
  ["end-of-life Node.js", (n) => new VcsAgentPool(n, vcsArgs({ nodeMajor: 20 as never })), "nodeMajor"],
  [
    "alarm action that is not an ARN",
    (n) => new VcsAgentPool(n, vcsArgs({ alarmActions: ["sns-topic"] })),
    "alarmActions[0]",
  ],
  [
    "tag in AWS's namespace",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: { "aws:owner": "me" } })),
    "tags.aws:owner",
    'may not start with "aws:"',
  ],
  [
    "tag in AWS's namespace, in capitals",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: { "AWS:Owner": "me" } })),
    "tags.AWS:Owner",
    "in any case",
  ],
  [
    "more tags than AWS takes with the kit's own",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: tags(48) })),
    "tags",
    "exceed AWS's 50",
  ],
  [
    "two tags IAM reads as one",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: { Team: "a", team: "b" } })),
    "tags.team",
    "regardless of case",
  ],
  [
    "a tag the kit sets",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: { name: "mine" } })),
    "tags.name",
    'the kit\'s own "Name"',
  ],
  [
    "a tag value IAM refuses",
    (n) => new VcsAgentPool(n, vcsArgs({ tags: { team: "a#b" } })),
    "tags.team",
    "tag values may hold",
  ],
  ["a pool name that cannot be an IAM role name", (n) => new VcsAgentPool(`${n} pool`, vcsArgs()), "name", "IAM"],
  ["a pool name too long for IAM", (n) => new VcsAgentPool(`${n}-${"x".repeat(48)}`, vcsArgs()), "name", "at most 48"],
  [
    "an action without its service",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ ...statement, Action: "GetObject" }] })),
    "extraPolicyStatements[0].Action",
    '"service:Action"',
  ],
  [
    "a statement with no resource",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ ...statement, Resource: [] }] })),
    "extraPolicyStatements[0].Resource",
    "at least one",
  ],
  [
    "a resource that is not an ARN",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ ...statement, Resource: "my-bucket" }] })),
    "extraPolicyStatements[0].Resource",
    "an ARN",
  ],
  [
    "a Sid of the kit's own",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ ...statement, Sid: "ReadPoolSecret" }] })),
    "extraPolicyStatements[0].Sid",
    "kit's own",
  ],
  [
    "a Sid twice",
    (n) =>
      new VcsAgentPool(
        n,
        vcsArgs({
          extraPolicyStatements: [
            { ...statement, Sid: "Assets" },
            { ...statement, Sid: "Assets" },
          ],
        }),
      ),
    "extraPolicyStatements[1].Sid",
    "earlier statement",
  ],
  [
    "everything but some actions allowed",
    (n) =>
      new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ Effect: "Allow", NotAction: "iam:*", Resource: "*" }] })),
    "extraPolicyStatements[0].NotAction",
    "everything but",
  ],
  [
    "both Action and NotAction",
    (n) => new VcsAgentPool(n, vcsArgs({ extraPolicyStatements: [{ ...statement, NotAction: "s3:PutObject" }] })),
    "extraPolicyStatements[0].Action",
    "exactly one",
  ],
  [
    "a policy over IAM's size",
    (n) =>
      new VcsAgentPool(
        n,
        vcsArgs({
          extraPolicyStatements: Array.from({ length: 60 }, (_, i) => ({
            ...statement,
            Resource: `arn:aws:s3:::bucket-${i}/${"p".repeat(120)}`,
          })),
        }),
      ),
    "extraPolicyStatements",
    "10240",
  ],
  [
    "a secret ARN without its six characters",
    (n) =>
      new VcsAgentPool(
        n,
        vcsArgs({ token: undefined, existingSecretArn: `arn:aws:secretsmanager:eu-west-1:${A}:secret:corp/vcs` }),
      ),
    "existingSecretArn",
    "six characters",
  ],
  [
    "a KMS alias where a grant needs a key",
    (n) => new VcsAgentPool(n, vcsArgs({ secretKmsKeyArn: `arn:aws:kms:eu-west-1:${A}:alias/agents` })),
    "secretKmsKeyArn",
    "not an alias",
  ],
  [
    "a KMS alias for log encryption",
    (n) => new VcsAgentPool(n, vcsArgs({ logKmsKeyArn: `arn:aws:kms:eu-west-1:${A}:alias/logs` })),
    "logKmsKeyArn",
    "not an alias",
  ],
  [
    "an EC2 action as an alarm action",
    (n) => new VcsAgentPool(n, vcsArgs({ alarmActions: ["arn:aws:automate:eu-west-1:ec2:stop"] })),
    "alarmActions[0]",
    "an alarm can notify",
  ],
  [
    "an SQS queue as an alarm action",
    (n) => new VcsAgentPool(n, vcsArgs({ alarmActions: [`arn:aws:sqs:eu-west-1:${A}:alerts`] })),
    "alarmActions[0]",
    "an alarm can notify",
  ],
  [
    "ARNs of two partitions",
    (n) =>
      new VcsAgentPool(n, vcsArgs({ secretKmsKeyArn: KEY, alarmActions: [`arn:aws-cn:sns:cn-north-1:${A}:pager`] })),
    "alarmActions[0]",
    'partition "aws-cn"',
  ],
  [
    "ARNs of two regions",
    (n) => new VcsAgentPool(n, vcsArgs({ secretKmsKeyArn: KEY, alarmActions: [`arn:aws:sns:us-east-1:${A}:pager`] })),
    "alarmActions[0]",
    "region us-east-1",
  ],
  [
    "egress to a range with host bits",
    (n) => new VcsAgentPool(n, vcsArgs({ egressCidrBlocks: ["10.0.0.1/8"] })),
    "egressCidrBlocks[0]",
    "network address",
  ],
  [
    "proxy exceptions as a CIDR range",
    (n) => new VcsAgentPool(n, vcsArgs({ noProxy: ".corp,10.0.0.0/8" })),
    "noProxy",
    "CIDR",
  ],
  ["proxy exceptions with an empty entry", (n) => new VcsAgentPool(n, vcsArgs({ noProxy: ".corp,,git" })), "noProxy"],
  [
    "a disconnect never judged",
    (n) => new VcsAgentPool(n, vcsArgs({ unhealthyAfterDisconnectedSeconds: 0 })),
    "unhealthyAfterDisconnectedSeconds",
  ],
  [
    "a regular expression pasted at length is not echoed whole",
    (n) => new VcsAgentPool(n, vcsArgs({ allowedProjects: `(${"a".repeat(5000)}` })),
    "allowedProjects",
    "(5001 characters)",
    ["a".repeat(200)],
  ],
  [
    "secret recovery window under 7 days",
    (n) => new VcsAgentPool(n, vcsArgs({ secretRecoveryWindowDays: 3 })),
    "secretRecoveryWindowDays",
  ],
  // Network
  ["VPC range too wide", (n) => new Network(n, { cidrBlock: "10.0.0.0/8" }), "cidrBlock"],
  ["VPC range with host bits", (n) => new Network(n, { cidrBlock: "10.0.0.1/16" }), "cidrBlock", "network address"],
  [
    "a zone twice",
    (n) => new Network(n, { availabilityZones: ["eu-west-1a", "eu-west-1a"] }),
    "availabilityZones",
    "twice",
  ],
  [
    "zones of two regions",
    (n) => new Network(n, { availabilityZones: ["eu-west-1a", "eu-central-1b"] }),
    "availabilityZones",
    "different regions",
  ],
  ["Network tags over AWS's count", (n) => new Network(n, { tags: tags(50) }), "tags", "exceed AWS's 50"],
  [
    "Network tag in AWS's namespace",
    (n) => new Network(n, { tags: { "Aws:Project": "x" } }),
    "tags.Aws:Project",
    "in any case",
  ],
  ["a Network name no security group takes", (n) => new Network(`${n}/net`, {}), "name"],
  ["four availability zones", (n) => new Network(n, { availabilityZoneCount: 4 as never }), "availabilityZoneCount"],
  [
    "new-VPC argument with an existing VPC",
    (n) =>
      new Network(n, {
        existingVpcId: "vpc-0123456789abcdef0",
        existingSubnetIds: ["subnet-0123456789abcdef1"],
        cidrBlock: "10.1.0.0/16",
      }),
    "cidrBlock",
  ],
  [
    "existing VPC without subnets",
    (n) => new Network(n, { existingVpcId: "vpc-0123456789abcdef0" }),
    "existingSubnetIds",
  ],
  [
    "S3 endpoint without route tables",
    (n) =>
      new Network(n, {
        existingVpcId: "vpc-0123456789abcdef0",
        existingSubnetIds: ["subnet-0123456789abcdef1"],
        endpoints: ["s3"],
      }),
    "existingRouteTableIds",
  ],
  ["endpoint not offered", (n) => new Network(n, { endpoints: ["dynamodb" as never] }), "endpoints[0]"],
  ["NAT layout not offered", (n) => new Network(n, { natGateways: "two" as never }), "natGateways"],
];

describe("bad configuration is refused before anything is created", () => {
  const names: string[] = [];

  it(`has at least 40 distinct cases (${cases.length})`, () => {
    assert.ok(cases.length >= 40);
    assert.equal(new Set(cases.map(([d]) => d)).size, cases.length);
  });

  cases.forEach(([description, make, field, shows, hides], index) => {
    it(`${description}: names ${field}`, () => {
      const name = `bad-${index}`;
      names.push(name);
      assert.throws(
        () => make(name),
        (error: Error) => {
          assert.ok(error instanceof InvalidArgumentsError, `${error.name}: ${error.message}`);
          assert.ok(error.message.includes(`"${name}`), "names the resource");
          const line = error.problems.find((p) => p.startsWith(`${field}:`) || p.startsWith(`${field},`));
          assert.ok(line, `no problem names ${field}:\n${error.message}`);
          if (shows) assert.ok(line.includes(shows), `"${line}" does not include ${shows}`);
          for (const token of Object.values(TOKENS)) assert.ok(!error.message.includes(token), "a secret is echoed");
          for (const hidden of hides ?? [])
            assert.ok(
              !error.message.includes(hidden),
              `the error shows ${JSON.stringify(hidden.slice(0, 40))}:\n${error.message}`,
            );
          assert.ok(
            error.problems.every((p) => p.length < 600),
            "a problem line is short",
          );
          return true;
        },
      );
    });
  });

  it("CA certificates over an SSM parameter's 8 KB are refused, counted in bytes", async () => {
    names.push("bad-ssm-size");
    const bundle = (await caCertificates(8)).join("");
    assert.throws(
      () =>
        new FlowsAgentPool(
          "bad-ssm-size",
          flowsArgs({ customCaCertificates: bundle, customCaCertificatesDelivery: "ssmParameter" }),
        ),
      (error: Error) =>
        error instanceof InvalidArgumentsError &&
        error.problems.some((p) => p.startsWith("customCaCertificates:") && p.includes("at most 8192")),
    );
  });

  it("an oversized configuration is refused with the pool's name and size", async () => {
    names.push("bad-huge");
    const bundle = (await caCertificates(12)).join("");
    assert.throws(
      () => new FlowsAgentPool("bad-huge", flowsArgs({ customCaCertificates: bundle })),
      (error: Error) =>
        error instanceof UserDataTooLargeError &&
        /pool "bad-huge": user-data is [0-9]+ bytes gzipped, over EC2's limit of 16384/.test(error.message) &&
        error.message.includes('customCaCertificatesDelivery "ssmParameter"'),
    );
  });

  it("a configuration too large for user-data and for an SSM parameter is refused, naming both limits", () => {
    names.push("bad-policy");
    // Image patterns as incompressible as real digests: some 12 KB packed.
    const allowedImages = Array.from(
      { length: 160 },
      (_, i) => `registry.corp.example.com/team-${i}@sha256:${createHash("sha256").update(`${i}`).digest("hex")}`,
    );
    assert.throws(
      () => new WorkerPool("bad-policy", workerArgs({ runInitializationPolicy: { allowedImages } })),
      (error: Error) =>
        error instanceof InvalidArgumentsError &&
        error.problems.length === 1 &&
        /does not fit in user-data, and packed it is [0-9]+ bytes, over the 8192 an SSM parameter holds/.test(
          error.problems[0],
        ),
    );
  });

  it("a refused component registered no resource", async () => {
    await settled("bad-none");
    const leaked = recorded.filter((r) => names.some((n) => r.name === n || r.name.startsWith(`${n}-`)));
    assert.deepEqual(
      leaked.map((r) => r.name),
      [],
    );
  });

  it("a secret given as an Output is checked once known, without echoing it", async () => {
    const { secret } = await import("@pulumi/pulumi");
    const pool = new VcsAgentPool("bad-later", vcsArgs({ token: secret("") }));
    const version = (pool as unknown as { secretArn: { promise(): Promise<unknown> } }).secretArn;
    await version.promise(); // the secret itself exists; its version carries the check
    const resources = await settled("bad-later");
    assert.equal(
      resources.filter((r) => r.type === "aws:secretsmanager/secretVersion:SecretVersion").length,
      0,
      "no version written from a bad token",
    );
  });
});
