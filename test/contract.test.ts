// One contract for both platforms: each setting a pool kind has on AWS and on Kubernetes gets
// the same verdict and the same message from both components, and a valid configuration
// renders the same variables on both.
import assert from "node:assert/strict";
import type { z } from "zod";
import { DOCKER_ONLY_SETTINGS, flowsAgentSettings } from "../agent/config/flows-agent";
import { launcherSettings } from "../agent/config/launcher";
import type { RoleName } from "../agent/config/roles";
import { settingsToEnv } from "../agent/config/env";
import { settingsJsonSchema } from "../agent/config/settings-schema";
import { vcsAgentSettings } from "../agent/config/vcs-agent";
import {
  decodeUserData,
  FlowsAgentPool,
  InvalidArgumentsError,
  kubernetes,
  VcsAgentPool,
  WorkerPool,
} from "../components";
import { sharedPoolShape } from "../components/shared/pool-args";
import { workerPoolExtras } from "../components/shared/worker-args";
import { CA_EC, PRIVATE_KEY_B64, TOKENS, flowsArgs, vcsArgs, workerArgs } from "../devkit/fixtures";
import { byType, settled, valueOf } from "../devkit/pulumi-mocks";
import { admissionProblems } from "./kubernetes-admission";

type Args = Record<string, unknown>;
type Make = (name: string, overrides: Args) => { workloadName?: unknown; autoScalingGroupName?: unknown };

// A real certificate: both platforms parse the bundle as X.509.
const CERT = CA_EC;

/** Settings every kind has: [a value both must refuse, a value both must accept]. */
const common: Record<string, [unknown, unknown]> = {
  httpsProxy: ["http://user:secret@proxy.corp:3128", "http://proxy.corp:3128"],
  // Forms the runtime reads (a CIDR range it would not: refused on both).
  noProxy: [".corp,10.0.0.0/8", ".corp,10.0.0.2,*.internal:8443"],
  metadataTags: [{ "bad-key": "x" }, { team: "platform" }],
  customCaCertificates: ["not a certificate", CERT],
};

const kinds: {
  kind: string;
  role: RoleName;
  /** The Pod Security level the Kubernetes component's pods meet. */
  level: kubernetes.PodSecurityLevel;
  settings: z.ZodObject;
  aws: Make;
  k8s: Make;
  /** Settings only one platform has, or that differ by design, and why. */
  platformOnly: Record<string, string>;
  cases: Record<string, [unknown, unknown]>;
}[] = [
  {
    kind: "worker",
    role: "launcher",
    level: kubernetes.WorkerPool.podSecurityLevel,
    settings: launcherSettings,
    aws: (n, o) => new WorkerPool(n, workerArgs(o as never)),
    k8s: (n, o) => new kubernetes.WorkerPool(n, { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64, ...o }),
    platformOnly: {},
    cases: {
      ...common,
      token: ["", TOKENS.worker],
      poolPrivateKey: ["not base64!", PRIVATE_KEY_B64],
      dockerConfigDir: ["docker-config", "/etc/agentpools/docker"],
      maskedEnvVars: [["BAD-NAME"], ["TF_VAR_password"]],
      whitelistedEnvVars: [["SPACELIFT_POOL_PRIVATE_KEY"], ["TF_VAR_environment"]],
      workerNetwork: ["bad network", "runs"],
      extraMounts: [["relative:/x"], ["/opt/cache:/cache:ro"]],
      workerRuntime: ["run sc", "runsc"],
      logsTimeout: ["7 minutes", "15m"],
      runTimeout: ["70", "75m"],
      runInitializationPolicyFile: ["policy.json", "/etc/agentpools/run-policy.json"],
      runInitializationPolicy: [{ allowedImage: ["alpine:*"] }, { allowedImages: ["alpine:*"], maxRunTimeout: "2h" }],
      executor: ["process", "docker"],
      workDirectory: ["runs", "/var/lib/agentpools/work"],
      maxStateBytes: [0, 64 * 1024 * 1024],
      vcsAgents: [[{ name: "ghe", baseEndpoint: "not a url" }], [{ name: "ghe", baseEndpoint: "https://ghe.corp" }]],
      // Shorter than the 70-minute default run timeout: both refuse it for the same reason.
      drainTimeoutSeconds: [600, 7200],
    },
  },
  {
    kind: "vcs",
    role: "vcs-agent",
    level: kubernetes.VcsAgent.podSecurityLevel,
    settings: vcsAgentSettings,
    aws: (n, o) => new VcsAgentPool(n, vcsArgs(o as never)),
    k8s: (n, o) =>
      new kubernetes.VcsAgent(n, {
        token: TOKENS.vcs,
        targetBaseEndpoint: "https://gitlab.internal.example",
        vendor: "gitlab",
        ...o,
      }),
    platformOnly: {},
    cases: {
      ...common,
      token: ["", TOKENS.vcs],
      targetBaseEndpoint: ["gitlab.internal", "https://gitlab.internal.example:8443"],
      vendor: ["gitea", "github_enterprise"],
      allowedProjects: ["(", "^platform/.*$"],
      parallelism: [0, 16],
      debugPrintAll: ["yes", true],
      upstreamTimeout: ["2 minutes", "90s"],
      drainTimeoutSeconds: [10, 90],
    },
  },
  {
    kind: "flows",
    role: "flows-agent",
    level: kubernetes.FlowsAgent.podSecurityLevel,
    settings: flowsAgentSettings,
    aws: (n, o) => new FlowsAgentPool(n, flowsArgs(o as never)),
    k8s: (n, o) =>
      new kubernetes.FlowsAgent(n, {
        poolId: "01HXPOOL",
        poolToken: TOKENS.flows,
        gatewayEndpoint: "https://gateway.useflows.eu",
        backendEndpoint: "https://useflows.eu",
        ...o,
      }),
    platformOnly: {
      executor:
        'a pod has no Docker engine for sibling containers: Kubernetes takes only "process" (tested in kubernetes.test.ts)',
      runtimeIsolation:
        'each platform asks for what it gives: "namespaces" on EC2 (bubblewrap installed), "user" in a pod, which cannot make user namespaces (tested in bad-config.test.ts and kubernetes.test.ts)',
      ...Object.fromEntries(
        DOCKER_ONLY_SETTINGS.map((setting) => [
          setting,
          "read by the Docker executor only, which a pod does not have: Kubernetes refuses it, as EC2 does for the process executor (tested in kubernetes.test.ts and bad-config.test.ts)",
        ]),
      ),
    },
    cases: {
      ...common,
      poolToken: ["", TOKENS.flows],
      poolId: ["has space", "01JPOOL_2"],
      gatewayEndpoint: ["ws://gateway", "https://gateway.corp"],
      backendEndpoint: ["useflows.eu", "https://flows.corp"],
      mountsDir: ["mounts", "/var/lib/flows"],
      runtimePoolSize: [0, 8],
      runtimeMemoryMb: [32, 512],
      runtimeDiskMb: [0, 128],
      runtimeOpenFiles: [16, 256],
      runtimeUids: ["0-255", "1900001000-1900001999"],
      defaultRunTimeout: ["soon", "90s"],
      drainTimeoutSeconds: [7201, 600],
    },
  },
];

/** The problems a construction reports, or "accepted" once its workload exists. */
async function verdict(make: Make, name: string, overrides: Args): Promise<string[] | "accepted"> {
  try {
    const made = make(name, overrides);
    await valueOf((made.autoScalingGroupName ?? made.workloadName) as never);
    return "accepted";
  } catch (error) {
    if (!(error instanceof InvalidArgumentsError)) throw error;
    return error.problems;
  }
}

/** Problems about `setting` (the argument itself or a field inside it). */
const about = (problems: string[], setting: string) =>
  problems.filter((p) => p.startsWith(`${setting}:`) || p.startsWith(`${setting}.`) || p.startsWith(`${setting}[`));

let counter = 0;

for (const k of kinds) {
  describe(`contract: ${k.kind} pools on AWS and Kubernetes`, () => {
    const shared = [
      ...Object.keys(k.settings.shape),
      ...Object.keys(sharedPoolShape({ drainTimeoutSeconds: 60 })),
      ...(k.kind === "worker" ? Object.keys(workerPoolExtras) : []),
    ];

    it("covers every shared setting", () => {
      const missing = [...new Set(shared)].filter((setting) => !(setting in k.cases) && !(setting in k.platformOnly));
      assert.deepEqual(missing, [], "settings without a contract case");
    });

    for (const [setting, [bad]] of Object.entries(k.cases)) {
      it(`${setting}: ${JSON.stringify(bad)} is refused by both, with the same message`, async () => {
        const n = ++counter;
        const [onAws, onK8s] = [
          await verdict(k.aws, `c-aws-${n}`, { [setting]: bad }),
          await verdict(k.k8s, `c-k8s-${n}`, { [setting]: bad }),
        ];
        assert.notEqual(onAws, "accepted", "AWS accepted it");
        assert.notEqual(onK8s, "accepted", "Kubernetes accepted it");
        const [awsLines, k8sLines] = [about(onAws as string[], setting), about(onK8s as string[], setting)];
        assert.ok(awsLines.length > 0, `AWS names another field: ${onAws}`);
        assert.deepEqual(k8sLines, awsLines);
      });
    }

    // Good values are taken together (one valid configuration per platform keeps this fast); the
    // policy file, exclusive with the policy object, on its own.
    if ("runInitializationPolicyFile" in k.cases) {
      it("runInitializationPolicyFile: an absolute path is accepted by both", async () => {
        const n = ++counter;
        const good = { runInitializationPolicyFile: k.cases.runInitializationPolicyFile[1] };
        assert.equal(await verdict(k.aws, `c-aws-${n}`, good), "accepted");
        assert.equal(await verdict(k.k8s, `c-k8s-${n}`, good), "accepted");
      });
    }

    it("a configuration of every shared setting, each a good value, is accepted by both and renders the same variables", async () => {
      const n = ++counter;
      // The policy goes as an object here; as a file it is covered above (one or the other).
      const all = Object.fromEntries(
        Object.entries(k.cases).flatMap(([setting, [, good]]) =>
          setting === "runInitializationPolicyFile" ? [] : [[setting, good]],
        ),
      );
      assert.equal(await verdict(k.aws, `c-aws-${n}`, all), "accepted");
      assert.equal(await verdict(k.k8s, `c-k8s-${n}`, all), "accepted");
      const [awsResources, k8sResources] = [await settled(`c-aws-${n}`), await settled(`c-k8s-${n}`)];
      // Where the instance gets its configuration: user-data or, for this large one, the pool's config parameter.
      const parameter = byType(awsResources, "aws:ssm/parameter:Parameter").find((r) => r.name.endsWith("-config"));
      const userData = decodeUserData(
        byType(awsResources, "aws:ec2/launchTemplate:LaunchTemplate")[0].inputs.userData,
        parameter?.inputs.value.value,
      );
      const instance = JSON.parse(
        [...userData.files.entries()].find(
          ([path]) => path.startsWith("/etc/agentpools/") && path.endsWith(".json") && !path.includes("policy"),
        )?.[1].content as string,
      );
      const workload = [
        ...byType(k8sResources, "kubernetes:apps/v1:Deployment"),
        ...byType(k8sResources, "kubernetes:apps/v1:StatefulSet"),
      ][0];
      const podEnv = Object.fromEntries(
        workload.inputs.spec.template.spec.containers[0].env
          .filter((e: { value?: string }) => e.value !== undefined)
          .map((e: { name: string; value: string }) => [e.name, e.value]),
      );
      // The policy file sits at a path of each platform's own.
      // The policy file sits at a path of each platform's own; platform-only settings differ by design.
      const schema = settingsJsonSchema(k.role);
      const differ = ["runInitializationPolicyFile", ...Object.keys(k.platformOnly)].map(
        (setting) => schema.properties[setting]?.env,
      );
      // The instance's typed settings, as the variables they stand for.
      const awsEnv = Object.fromEntries(
        Object.entries(settingsToEnv(schema, instance.settings)).filter(([name]) => !differ.includes(name)),
      );
      assert.ok(Object.keys(awsEnv).length >= Object.keys(k.cases).length - 8, "most settings rendered");
      const rendered = Object.fromEntries(Object.keys(awsEnv).map((name) => [name, podEnv[name]]));
      assert.deepEqual(rendered, awsEnv);
      assert.equal(instance.drainTimeoutSeconds, k.cases.drainTimeoutSeconds[1]);
      // What Kubernetes rendered from it is what a cluster admits.
      assert.deepEqual(await admissionProblems(k8sResources, () => k.level), []);
    });
  });
}
