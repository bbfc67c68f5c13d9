import type { FlowsAgentPoolArgs, VcsAgentPoolArgs, WorkerPoolArgs } from "../components";
import { encodeToken } from "../protocol/token";

export const VPC = "vpc-0123456789abcdef0";
export const SUBNETS = ["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"];
export const PRIVATE_KEY_B64 = Buffer.from(
  "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
).toString("base64");

/** Real X.509 CA certificates (public halves only; made for these tests): an RSA 2048 root and an EC P-256 one. */
export const CA_RSA = `-----BEGIN CERTIFICATE-----
MIIDWzCCAkOgAwIBAgIUdtx2nVBTinZqmmbX7PSVMpyHTsAwDQYJKoZIhvcNAQEL
BQAwNTEZMBcGA1UECgwQYWdlbnRwb29scyB0ZXN0czEYMBYGA1UEAwwPQ29ycCBS
b290IENBIFIxMB4XDTI2MTEzMDAxMjEwMFoXDTQ2MTEyNTAxMjEwMFowNTEZMBcG
A1UECgwQYWdlbnRwb29scyB0ZXN0czEYMBYGA1UEAwwPQ29ycCBSb290IENBIFIx
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvuDA/Z+1zbwJPTH0ZtuH
NdekTX/dmMDiNoFSyqxf8BqZGgWY5PXOJx++Tr65Gxpxk1BNXqI1w23KsWOuGITY
1u5R5jIO0/OkNcpZ73DX/DpfX0OAIhfKGfZJFrlc9huQ5cZkWO/Zg+7YGF0vsqRr
n0x5cB7TelOXoVljwnqtVthtj7bZgioDBxrgay0rEyCIpgvxZUokM3l9BD3zkawm
DHFtw73/Tzl9EJfPEJg6PVFZabcPE5PVhpGzMzPF0fFrJzcheyU8lwGaxgpLGVrW
pyoObc/34yFApGpTEJipFKpPdo1ixDJREckyS2A/vy6hS/MSEq9Lwz7XGus5auOD
LwIDAQABo2MwYTAdBgNVHQ4EFgQUgml2SzJVs9Wmq1DxWrz0HHt/AEowHwYDVR0j
BBgwFoAUgml2SzJVs9Wmq1DxWrz0HHt/AEowDwYDVR0TAQH/BAUwAwEB/zAOBgNV
HQ8BAf8EBAMCAQYwDQYJKoZIhvcNAQELBQADggEBAKMB9OMuFFmS9BxLTEKlF9q0
HYD/uHTGtJWAyvHatrv+aViKKUscA/Vc3HLVSHcHwKRHOgkxjdO+C/OMgsrBvcNU
4YsurVHW3OKme1GlcRsVnpvC0WGdQP+cL6jTGKe1D3fp5SzzUlaQf/7vkHe0OYiL
ZmfUBaIxqbgB4AIo1+3d7bDZCrPVzzI4RcifA9hykC5qtCMkfV+1pUmrwPXF7CKf
4He08KvLRykePi9E6sybi1mFNqM+1YPSNjD0VP3y1JVK4dC89mH58TVok8+hhdpI
VYN8VrlCfZqx0f78n63YmGFEYMDmW2DP6WaVZFdxYhMzrM8NiKELUJRrMA1Xs24=
-----END CERTIFICATE-----
`;
export const CA_EC = `-----BEGIN CERTIFICATE-----
MIIB0TCCAXegAwIBAgIUYWguKZ4k1Ez23WUJYlK+SE60gkgwCgYIKoZIzj0EAwIw
NjEZMBcGA1UECgwQYWdlbnRwb29scyB0ZXN0czEZMBcGA1UEAwwQQ29ycCBQcm94
eSBDQSBFMTAeFw0yNjExMzAwMTIxMDBaFw00NjExMjUwMTIxMDBaMDYxGTAXBgNV
BAoMEGFnZW50cG9vbHMgdGVzdHMxGTAXBgNVBAMMEENvcnAgUHJveHkgQ0EgRTEw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASQprx13/Od77Hk3HM1xa7p71FDjwC0
rvlwTQewpv8ATLOAbPLZ1mRpc2WLgri/I/cHcVS+kU3Y9AkidbNdYR8Po2MwYTAd
BgNVHQ4EFgQU/vFR7Z8P632LHufzmLU5ZkrNET4wHwYDVR0jBBgwFoAU/vFR7Z8P
632LHufzmLU5ZkrNET4wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
CgYIKoZIzj0EAwIDSAAwRQIgdRdsF4SWsNYdvEUlwqrPXBoNg8rOoV/DiF+Ixs2v
u+MCIQCn0eicsYlxIO0UfdoH1CieHVDf/TQwGnWYTztKwO+LNA==
-----END CERTIFICATE-----
`;
/** A bundle in the cacert.pem layout: comment and title lines between the certificates. */
export const CA_BUNDLE = `## Certificates the agents trust besides the system's
## (the layout of curl's cacert.pem)

Corp Root CA R1
===============
${CA_RSA}
Corp Proxy CA E1
================
${CA_EC}`;

/** Pool tokens shaped as the gateway issues them (protocol/token.ts); the Flows one is a bare secret. */
export const TOKENS = {
  worker: encodeToken({
    gateway: "https://gateway.example.com",
    pool: "workers",
    secret: "wkr-secret-5f0c1d2e3a4b5c6d",
    certificate: CA_EC,
  }),
  vcs: encodeToken({ gateway: "https://gateway.example.com", pool: "git", secret: "vcs-secret-9a8b7c6d5e4f3a2b" }),
  flows: "flw-token-1a2b3c4d5e6f",
};

export const workerArgs = (overrides: Partial<WorkerPoolArgs> = {}): WorkerPoolArgs => ({
  vpcId: VPC,
  subnetIds: SUBNETS,
  token: TOKENS.worker,
  poolPrivateKey: PRIVATE_KEY_B64,
  ...overrides,
});

export const vcsArgs = (overrides: Partial<VcsAgentPoolArgs> = {}): VcsAgentPoolArgs => ({
  vpcId: VPC,
  subnetIds: SUBNETS,
  token: TOKENS.vcs,
  targetBaseEndpoint: "https://gitlab.internal.example",
  vendor: "gitlab",
  ...overrides,
});

export const flowsArgs = (overrides: Partial<FlowsAgentPoolArgs> = {}): FlowsAgentPoolArgs => ({
  vpcId: VPC,
  subnetIds: SUBNETS,
  poolId: "01HXPOOL",
  poolToken: TOKENS.flows,
  gatewayEndpoint: "https://gateway.useflows.eu",
  backendEndpoint: "https://useflows.eu",
  ...overrides,
});

/** A good value other than the default for each Flows setting only the Docker executor reads. */
export const DOCKER_ONLY_VALUES = {
  runtimeImage: "node:22-alpine",
  gvisor: false,
  extraDockerParams: ["--dns=10.0.0.2"],
  registryMirror: "https://mirror.internal",
  runtimeNetwork: "none",
} as const;

/** Every argument of each kind set, at realistic lengths: the largest configurations. */
export const LARGEST = {
  worker: workerArgs({
    dockerConfigDir: "/var/lib/agentpools/docker-config",
    maskedEnvVars: Array.from({ length: 30 }, (_, i) => `MASKED_SECRET_VARIABLE_${i}`),
    whitelistedEnvVars: Array.from({ length: 30 }, (_, i) => `PASSED_THROUGH_VARIABLE_${i}`),
    workerNetwork: "agentpools-runs",
    extraMounts: Array.from({ length: 10 }, (_, i) => `/var/lib/agentpools/cache/${i}:/mnt/cache/${i}:ro`),
    workerRuntime: "runsc",
    logsTimeout: "15m",
    runTimeout: "110m",
    runInitializationPolicy: {
      allowedImages: [
        "public.ecr.aws/spacelift/runner-terraform:*",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/platform/runners/*",
      ],
      deniedImages: ["*:latest"],
      deniedCommands: ["curl [^|]*\\|\\s*(ba)?sh", "terraform\\s+destroy\\b", "rm\\s+-rf\\s+/($|\\s)"],
      requiredEnvironment: ["TF_VAR_environment", "TF_VAR_cost_center"],
      maxRunTimeout: "110m",
    },
    vcsAgents: Array.from({ length: 5 }, (_, i) => ({
      name: `internal-vcs-${i}`,
      baseEndpoint: `https://git-${i}.corp.internal.example.com`,
    })),
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.2,169.254.169.254",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    // A worker pool's user-data has no room for real certificates beside everything else: they come from SSM.
    customCaCertificates: CA_BUNDLE,
    customCaCertificatesDelivery: "ssmParameter",
    mixedInstances: {
      instanceTypes: ["m7i.large", "m6i.large", "m7a.large", "m6a.large"],
      onDemandBaseCapacity: 1,
      onDemandPercentageAboveBaseCapacity: 25,
    },
    drainTimeoutSeconds: 7200,
    tags: { team: "platform", "cost-center": "4242" },
  }),
  vcs: vcsArgs({
    vendor: "bitbucket_datacenter",
    allowedProjects: "^(infrastructure|platform|security|networking)/[a-z0-9-]+$",
    parallelism: 64,
    debugPrintAll: true,
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.2",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_EC,
  }),
  flows: flowsArgs({
    executor: "docker",
    mountsDir: "/var/lib/agentpools/flows-mounts",
    runtimeImage: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/flows/node-runtime:24-alpine",
    extraDockerParams: ["--dns=10.0.0.2", "--pids-limit=256", "--ulimit=nofile=4096:8192", "--label=team=platform"],
    runtimePoolSize: 16,
    runtimeMemoryMb: 1024,
    registryMirror: "https://registry-mirror.corp.internal.example.com",
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.2",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_EC,
  }),
  /** The process executor's: every setting it reads (the Docker-only ones it refuses), at realistic lengths. */
  flowsProcess: flowsArgs({
    executor: "process",
    mountsDir: "/var/lib/agentpools/flows-mounts",
    runtimePoolSize: 16,
    runtimeMemoryMb: 1024,
    runtimeDiskMb: 256,
    runtimeOpenFiles: 256,
    runtimeUids: "1900000000-1900000255",
    defaultRunTimeout: "15m",
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.2",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_EC,
  }),
};
