import type { FlowsAgentPoolArgs, VcsAgentPoolArgs, WorkerPoolArgs } from "../components";

export const VPC = "vpc-0123456789abcdef0";
export const SUBNETS = ["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"];
export const PRIVATE_KEY_B64 = Buffer.from("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n").toString("base64");
export const TOKENS = { worker: "wkr-token-5f0c1d2e3a4b", vcs: "vcs-token-9a8b7c6d5e4f", flows: "flw-token-1a2b3c4d5e6f" };

export const CA_BUNDLE = Array.from({ length: 3 }, (_, i) => `-----BEGIN CERTIFICATE-----\n${"MIIDdzCCAl+gAwIBAgIE".repeat(40).match(/.{1,64}/g)?.join("\n")}${i}A==\n-----END CERTIFICATE-----\n`).join("");

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
      allowedImages: ["public.ecr.aws/spacelift/runner-terraform:*", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/platform/runners/*"],
      deniedImages: ["*:latest"],
      deniedCommands: ["curl [^|]*\\|\\s*(ba)?sh", "terraform\\s+destroy\\b", "rm\\s+-rf\\s+/($|\\s)"],
      requiredEnvironment: ["TF_VAR_environment", "TF_VAR_cost_center"],
      maxRunTimeout: "110m",
    },
    vcsAgents: Array.from({ length: 5 }, (_, i) => ({ name: `internal-vcs-${i}`, baseEndpoint: `https://git-${i}.corp.internal.example.com` })),
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.0/8,169.254.169.254",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_BUNDLE,
    mixedInstances: { instanceTypes: ["m7i.large", "m6i.large", "m7a.large", "m6a.large"], onDemandBaseCapacity: 1, onDemandPercentageAboveBaseCapacity: 25 },
    drainTimeoutSeconds: 7200,
    tags: { team: "platform", "cost-center": "4242" },
  }),
  vcs: vcsArgs({
    vendor: "bitbucket_datacenter",
    allowedProjects: "^(infrastructure|platform|security|networking)/[a-z0-9-]+$",
    parallelism: 64,
    debugPrintAll: true,
    httpsProxy: "http://egress-proxy.corp.internal.example.com:3128",
    noProxy: ".corp.internal.example.com,10.0.0.0/8",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_BUNDLE,
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
    noProxy: ".corp.internal.example.com,10.0.0.0/8",
    metadataTags: Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`tag_${i}`, `value-of-tag-${i}`])),
    customCaCertificates: CA_BUNDLE,
  }),
};
