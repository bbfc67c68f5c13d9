import { createHash } from "node:crypto";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { secretSettings, settingsToEnv } from "../../agent/config/env";
import { imageReference } from "../../agent/config/fields";
import { CONFIG_PATH_VARIABLE, type InstanceConfig } from "../../agent/config/instance";
import type { RoleName } from "../../agent/config/roles";
import { FLOWS_RUNNER_FILE } from "../../agent/config/variants";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { flowsRunnerBundle, runtimeBundle, RUNTIME_NODE_FLAGS } from "../shared/bundles";
import { sharedPoolShape } from "../shared/pool-args";
import { checkSecrets } from "../shared/secrets";
import { formatIssues, InvalidArgumentsError } from "../shared/validation";
import {
  affinity,
  cidrBlock,
  dataKey,
  dnsLabel,
  dnsSubdomain,
  labelMap,
  labelSelector,
  parseCidr,
  resources,
  toleration,
} from "./api-rules";
import { autoscaling, hpaSpec, scaledObjectSpec, type ScaleTarget } from "./autoscaling";
import { egressPeers, isOnlyMetadata } from "./egress";

/**
 * The official Node.js image the runtime bundle runs on: no image of our own to build. Pin
 * it further by digest in production (image: "node:24.21.0-alpine@sha256:...").
 */
export const DEFAULT_NODE_IMAGE = "node:24.21.0-alpine";
/** The official image's "node" user. */
export const RUNTIME_UID = 1000;
/**
 * The probes' status files: a volume of their own, which the agent (root in a Flows pod) makes 0755 at start, so no
 * runtime's uid can rename or plant them (agent/runtime/runtime.ts, ownDirectory).
 */
export const STATUS_DIR = "/run/agentpools";
const RUNTIME_DIR = "/opt/agentpools";
const CA_PATH = "/etc/agentpools/ca/ca.pem";

const CONFIG_FILE = "config.json";

/**
 * The Pod Security Standard level a component's pods meet, to be enforced on its namespace
 * (pod-security.kubernetes.io/enforce): "restricted" for the VCS agents, "baseline" for the Flows
 * agents (root with CAP_SETUID, CAP_SETGID and CAP_KILL, to run each runtime as a uid of its own),
 * "privileged" for worker pools, whose Docker engine cannot run otherwise.
 */
export type PodSecurityLevel = "restricted" | "baseline" | "privileged";

const LEVELS: PodSecurityLevel[] = ["restricted", "baseline", "privileged"];

/** The strictest level that admits every one of these pools' pods (for a namespace they share). */
export const admittingLevel = (...needs: PodSecurityLevel[]): PodSecurityLevel =>
  LEVELS[Math.max(0, ...needs.map((level) => LEVELS.indexOf(level)))];

/** The cluster's DNS as kubeadm, EKS, GKE and AKS deploy it: CoreDNS (or kube-dns) pods labelled k8s-app=kube-dns. */
export const CLUSTER_DNS = [
  {
    namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "kube-system" } },
    podSelector: { matchLabels: { "k8s-app": "kube-dns" } },
  },
];

/**
 * The widest DNS ipBlock: a resolver is an address or a small subnet, and port 53 to a wide block is a channel out
 * (tunnelled queries to a server of one's own). /16 and /48 hold any real DNS subnet (a site's IPv6 prefix is a /48).
 */
export const DNS_WIDEST_PREFIX = { 4: 16, 6: 48 } as const;

type Selector = z.output<typeof labelSelector>;
const selectsEvery = (selector: Selector) =>
  Object.keys(selector.matchLabels ?? {}).length === 0 && (selector.matchExpressions ?? []).length === 0;

/** A NetworkPolicy peer the pods may ask names of: an ipBlock, or pods by namespace and pod labels (not both). */
const dnsPeer = z
  .strictObject({
    ipBlock: z.strictObject({ cidr: cidrBlock }).optional(),
    namespaceSelector: labelSelector.optional(),
    podSelector: labelSelector.optional(),
  })
  .superRefine((peer, ctx) => {
    const issue = (path: string[], input: unknown, message: string) =>
      ctx.addIssue({ code: "custom", path, input, message });
    const { ipBlock, namespaceSelector: namespaces, podSelector: pods } = peer;
    if (ipBlock ? namespaces || pods : !namespaces && !pods) {
      issue([], peer, "must name either an ipBlock or a namespaceSelector and/or podSelector, as a NetworkPolicy peer");
      return;
    }
    const cidr = ipBlock && parseCidr(ipBlock.cidr);
    if (cidr && typeof cidr !== "string" && cidr.prefix < DNS_WIDEST_PREFIX[cidr.family]) {
      const widest = `IPv4 /${DNS_WIDEST_PREFIX[4]} or IPv6 /${DNS_WIDEST_PREFIX[6]}`;
      issue(["ipBlock", "cidr"], ipBlock.cidr, `is wider than a DNS server's subnet: at most ${widest}`);
    }
    // {namespaceSelector: {}} is every pod of every namespace; {podSelector: {}} alone every pod of the pool's own.
    if (namespaces && selectsEvery(namespaces) && (!pods || selectsEvery(pods)))
      issue(["namespaceSelector"], namespaces, "selects every namespace's pods: add a podSelector naming the DNS pods");
    if (pods && !namespaces && selectsEvery(pods))
      issue(["podSelector"], pods, "selects every pod of the namespace: name the DNS pods by label");
  });

export interface WorkloadDefaults {
  replicas: number;
  resources: z.input<typeof resources>;
  drainTimeoutSeconds: number;
}

/** Arguments every Kubernetes agent workload shares, with the kind's defaults. */
export function workloadShape(role: RoleName, defaults: WorkloadDefaults) {
  const secretVariables = secretSettings(settingsJsonSchema(role)).map((s) => s.env);
  return {
    namespace: dnsLabel.default("default"),
    replicas: z.int().min(0).max(100).default(defaults.replicas),
    /**
     * A KEDA ScaledObject on the gateway's queue, or a HorizontalPodAutoscaler on a metric your
     * adapter serves (autoscaling.ts); the workload's replicas are then the autoscaler's.
     */
    autoscaling: autoscaling.optional(),
    image: imageReference.default(DEFAULT_NODE_IMAGE),
    resources: resources.default(defaults.resources),
    nodeSelector: labelMap.default({}),
    tolerations: z.array(toleration).default([]),
    /** A Kubernetes Affinity object (node, pod and anti-pod affinity), checked as the API server would. */
    affinity: affinity.optional(),
    /** Spread replicas across nodes (best effort). */
    spreadAcrossNodes: z.boolean().default(true),
    /** A Secret you already have; `keys` maps a variable (e.g. SPACELIFT_VCS_AGENT_POOL_TOKEN) to its key when they differ. */
    existingSecret: z
      .strictObject({
        name: dnsSubdomain,
        keys: z
          .record(z.string(), dataKey)
          .superRefine((keys, ctx) => {
            for (const variable of Object.keys(keys).filter((key) => !secretVariables.includes(key))) {
              const message = `is not one of this pool's secret variables (${secretVariables.join(", ")})`;
              ctx.addIssue({ code: "custom", path: [variable], message });
            }
          })
          .default({}),
      })
      .optional(),
    /**
     * Where the pods may connect; DNS (`dns`) is always allowed. Ports default to the kind's needs.
     * The cloud metadata addresses are left out of every block unless allowMetadataService.
     */
    egress: z
      .strictObject({
        cidrBlocks: z.array(cidrBlock).min(1).default(["0.0.0.0/0"]),
        ports: z.array(z.int().min(1).max(65535)).optional(),
        allowMetadataService: z.boolean().default(false),
        /**
         * Where names are resolved (port 53, UDP and TCP): the cluster DNS unless told (a node-local DNS cache's
         * address, another DNS). Never every address: port 53 open to the internet is a channel out.
         */
        dns: z.array(dnsPeer).min(1).default(CLUSTER_DNS),
      })
      .superRefine((egress, ctx) => {
        if (egress.allowMetadataService) return;
        egress.cidrBlocks.forEach((cidr, index) => {
          if (!cidrBlock.safeParse(cidr).success || !isOnlyMetadata(cidr)) return;
          const message =
            "is a cloud metadata service's address, which pools do not reach unless allowMetadataService is true";
          ctx.addIssue({ code: "custom", path: ["cidrBlocks", index], input: cidr, message });
        });
      })
      .default({ cidrBlocks: ["0.0.0.0/0"], allowMetadataService: false, dns: CLUSTER_DNS }),
    ...sharedPoolShape(defaults),
    labels: labelMap.default({}),
  };
}
export type WorkloadArgs = z.output<z.ZodObject<ReturnType<typeof workloadShape>>>;

/** The port of an http(s) URL, for egress rules. */
export const portOf = (url: string) => Number(new URL(url).port || (url.startsWith("https:") ? 443 : 80));

export interface WorkloadSpec {
  component: string;
  role: RoleName;
  /** The Pod Security Standard level the pods meet. */
  podSecurityLevel: PodSecurityLevel;
  args: WorkloadArgs;
  settingsEnv: Record<string, string>;
  secretEnv?: pulumi.Output<Record<string, string>>;
  /** Ports the pods need to reach, unless `egress.ports` says otherwise; undefined: all. */
  egressPorts?: number[];
  /**
   * A writable /tmp (an emptyDir): not for a pod whose runtimes run under other uids (Flows), which could fill it
   * (the pod's eviction) or plant files in it; neither the agent nor a runtime writes there.
   */
  tmp?: boolean;
  /** Extra volumes, mounts and environment. */
  extraVolumes?: k8s.types.input.core.v1.Volume[];
  extraMounts?: k8s.types.input.core.v1.VolumeMount[];
  extraEnv?: k8s.types.input.core.v1.EnvVar[];
  /** The agent container's user and capabilities, when it needs more than the default: a non-root user with none. */
  agentUser?: Pick<
    k8s.types.input.core.v1.SecurityContext,
    "runAsNonRoot" | "runAsUser" | "runAsGroup" | "capabilities"
  >;
  /** Pod-level sysctls: only the Kubernetes "safe" set, which the baseline level admits and every kubelet allows. */
  sysctls?: k8s.types.input.core.v1.Sysctl[];
  /** The agent container's requests and limits, when it needs more than `resources` says (ephemeral storage). */
  agentResources?: k8s.types.input.core.v1.ResourceRequirements;
  /**
   * Containers the agent needs running for as long as it runs (the worker's Docker engine):
   * native sidecars, so they start before the agent and the kubelet stops them only after it.
   */
  sidecars?: k8s.types.input.core.v1.Container[];
  /** Files for the agent (a run initialization policy): kept in the runtime ConfigMap, each its own volume. */
  configFiles?: { volume: string; key: string; content: string }[];
  statefulSet?: { volumeClaimTemplates: k8s.types.input.core.v1.PersistentVolumeClaim[] };
}

/**
 * The objects are named after the component: a Deployment's pods carry the name as a label
 * value (63 characters); a StatefulSet's pods carry it plus "-" and an up-to-10-character
 * revision hash in one, hence 52.
 */
export function resourceNameProblem(name: string, statefulSet: boolean): string | undefined {
  const max = statefulSet ? 52 : 63;
  if (!dnsLabel.safeParse(name).success || name.length > max) {
    const why = `the Kubernetes objects are named after it${statefulSet ? " and a StatefulSet's pods add a revision hash" : ""}`;
    return `name: ${JSON.stringify(name)} must be an RFC 1123 label of at most ${max} characters (lowercase letters, digits and -, starting and ending with a letter or digit): ${why}`;
  }
  return undefined;
}

/** Validate a Kubernetes agent's arguments before anything exists (see checkSecrets). */
export function validateWorkload<S extends z.ZodType>(
  component: string,
  name: string,
  role: RoleName,
  schema: S,
  args: Record<string, unknown>,
) {
  const secretKeys = secretSettings(settingsJsonSchema(role)).map((s) => s.key);
  const plain = Object.fromEntries(Object.entries(args).filter(([key]) => !secretKeys.includes(key)));
  const parsed = schema.safeParse(plain, { reportInput: true });
  const problems = parsed.success ? [] : formatIssues(parsed.error);
  const nameProblem = resourceNameProblem(name, (plain as { statefulSet?: unknown }).statefulSet === true);
  if (nameProblem) problems.unshift(nameProblem);
  if (plain.autoscaling !== undefined && plain.replicas !== undefined)
    problems.push(
      `replicas: ${JSON.stringify(plain.replicas)} is not taken with autoscaling: the autoscaler sets the replicas, between autoscaling.minReplicas and autoscaling.maxReplicas`,
    );
  const secrets = checkSecrets(
    component,
    name,
    role,
    args,
    "existingSecret",
    (plain as { existingSecret?: unknown }).existingSecret !== undefined,
  );
  problems.push(...secrets.problems);
  if (problems.length > 0 || !parsed.success) throw new InvalidArgumentsError(component, name, problems);
  return {
    args: parsed.data as z.output<S>,
    secretEnv: secrets.secretEnv(),
    settingsEnv: settingsToEnv(settingsJsonSchema(role), parsed.data as Record<string, unknown>),
  };
}

export interface WorkloadOutputs {
  namespace: pulumi.Output<string>;
  workloadName: pulumi.Output<string>;
  secretName: pulumi.Output<string>;
  serviceAccountName: pulumi.Output<string>;
  podSecurityLevel: PodSecurityLevel;
}

/** Create an agent's Kubernetes objects, as children of `parent`. */
export function createWorkload(parent: pulumi.ComponentResource, name: string, spec: WorkloadSpec): WorkloadOutputs {
  const opts = { parent };
  const { args, role } = spec;
  const selector = { "app.kubernetes.io/name": `agentpools-${role}`, "app.kubernetes.io/instance": name };
  const labels = {
    ...args.labels,
    ...selector,
    "app.kubernetes.io/component": role,
    "app.kubernetes.io/part-of": "agentpools",
    "app.kubernetes.io/managed-by": "pulumi",
  };
  const metadata = (suffix: string) => ({ name: `${name}${suffix}`, namespace: args.namespace, labels });
  // Flows runtimes start on the runner's own bundle, beside the agent's (agent/roles/flows-runner.ts).
  const bundles: Record<string, string> = {
    [`${role}.js`]: runtimeBundle(role),
    ...(role === "flows-agent" ? { [FLOWS_RUNNER_FILE]: flowsRunnerBundle() } : {}),
  };
  // The runtime reads its drain time (and pool name) from the file an instance would have; the
  // settings themselves come as the container's variables.
  const instanceConfig: InstanceConfig = {
    role,
    pool: name,
    settings: {},
    drainTimeoutSeconds: args.drainTimeoutSeconds,
  };
  const config = JSON.stringify(instanceConfig, null, 1) + "\n";

  const runtime = new k8s.core.v1.ConfigMap(
    `${name}-runtime`,
    {
      metadata: metadata("-runtime"),
      data: {
        ...bundles,
        [CONFIG_FILE]: config,
        ...(args.customCaCertificates ? { "ca.pem": args.customCaCertificates } : {}),
        ...Object.fromEntries((spec.configFiles ?? []).map((file) => [file.key, file.content])),
      },
    },
    opts,
  );

  let secretName: pulumi.Output<string>;
  const secretKeys: Record<string, string> = {};
  if (args.existingSecret) {
    secretName = pulumi.output(args.existingSecret.name);
    for (const { env } of secretSettings(settingsJsonSchema(role)))
      secretKeys[env] = args.existingSecret.keys[env] ?? env;
  } else {
    const secret = new k8s.core.v1.Secret(
      `${name}-credentials`,
      {
        metadata: metadata("-credentials"),
        type: "Opaque",
        stringData: spec.secretEnv as pulumi.Output<Record<string, string>>,
      },
      opts,
    );
    secretName = secret.metadata.name;
    for (const { env } of secretSettings(settingsJsonSchema(role))) secretKeys[env] = env;
  }

  const account = new k8s.core.v1.ServiceAccount(
    `${name}`,
    { metadata: metadata(""), automountServiceAccountToken: false },
    opts,
  );

  const metadataPrefix = Object.values(settingsJsonSchema(role).properties).find((p) => p.encoding === "map")?.env;
  const env: k8s.types.input.core.v1.EnvVar[] = [
    ...Object.entries(spec.settingsEnv).map(([envName, value]) => ({ name: envName, value })),
    ...Object.entries(secretKeys).map(([envName, key]) => ({
      name: envName,
      valueFrom: { secretKeyRef: { name: secretName, key } },
    })),
    { name: CONFIG_PATH_VARIABLE, value: `${RUNTIME_DIR}/${CONFIG_FILE}` },
    { name: "AGENTPOOLS_STATUS_DIR", value: STATUS_DIR },
    ...(metadataPrefix
      ? [
          { name: `${metadataPrefix}pod`, valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
          { name: `${metadataPrefix}node`, valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } },
        ]
      : []),
    ...(args.customCaCertificates ? [{ name: "NODE_EXTRA_CA_CERTS", value: CA_PATH }] : []),
    ...(spec.extraEnv ?? []),
  ];

  const container: k8s.types.input.core.v1.Container = {
    name: role,
    image: args.image,
    command: ["node", ...RUNTIME_NODE_FLAGS, `${RUNTIME_DIR}/${role}.js`],
    env,
    resources: spec.agentResources ?? args.resources,
    volumeMounts: [
      { name: "runtime", mountPath: RUNTIME_DIR, readOnly: true },
      { name: "status", mountPath: STATUS_DIR },
      ...(spec.tmp === false ? [] : [{ name: "tmp", mountPath: "/tmp" }]),
      ...(args.customCaCertificates ? [{ name: "ca", mountPath: "/etc/agentpools/ca", readOnly: true }] : []),
      ...(spec.extraMounts ?? []),
    ],
    securityContext: {
      runAsNonRoot: true,
      runAsUser: RUNTIME_UID,
      runAsGroup: RUNTIME_UID,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
      ...spec.agentUser,
    },
    // Ready only while connected to the gateway. Alive while the event loop turns: the runtime
    // writes its heartbeat from its first moment, also while it waits for a gateway that is
    // down and while it drains, so neither restarts the pod.
    readinessProbe: { exec: { command: ["test", "-f", `${STATUS_DIR}/ready`] }, periodSeconds: 5, failureThreshold: 2 },
    livenessProbe: {
      // Written within the last minute, and not in the future (as a planted file could say).
      exec: {
        command: [
          "sh",
          "-c",
          `age=$(( $(date +%s) - $(stat -c %Y ${STATUS_DIR}/heartbeat) )); [ $age -ge 0 -a $age -lt 60 ]`,
        ],
      },
      initialDelaySeconds: 10,
      periodSeconds: 20,
      failureThreshold: 3,
    },
  };

  const podLabels = { ...labels };
  const template: k8s.types.input.core.v1.PodTemplateSpec = {
    metadata: {
      labels: podLabels,
      // A new bundle or configuration rolls the pods.
      annotations: {
        "agentpools.io/runtime-sha256": createHash("sha256")
          .update(Object.values(bundles).join("\n"))
          .update(config)
          .update(JSON.stringify(spec.settingsEnv))
          .update(JSON.stringify(spec.configFiles ?? []))
          .digest("hex"),
      },
    },
    spec: {
      serviceAccountName: account.metadata.name,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: args.drainTimeoutSeconds + 30,
      securityContext: {
        fsGroup: RUNTIME_UID,
        seccompProfile: { type: "RuntimeDefault" },
        ...(spec.sysctls ? { sysctls: spec.sysctls } : {}),
      },
      // restartPolicy Always makes an init container a sidecar (Kubernetes 1.29 and later): it
      // starts (and passes its startup probe) before the agent, and on termination the kubelet
      // signals it only once every regular container has exited.
      ...(spec.sidecars?.length
        ? { initContainers: spec.sidecars.map((sidecar) => ({ ...sidecar, restartPolicy: "Always" })) }
        : {}),
      containers: [container],
      volumes: [
        {
          name: "runtime",
          configMap: {
            name: runtime.metadata.name,
            items: [...Object.keys(bundles), CONFIG_FILE].map((file) => ({ key: file, path: file })),
          },
        },
        // In memory (the heartbeat is rewritten every few seconds), at most a page or two.
        { name: "status", emptyDir: { medium: "Memory", sizeLimit: "1Mi" } },
        ...(spec.tmp === false ? [] : [{ name: "tmp", emptyDir: { sizeLimit: "256Mi" } }]),
        ...(args.customCaCertificates
          ? [{ name: "ca", configMap: { name: runtime.metadata.name, items: [{ key: "ca.pem", path: "ca.pem" }] } }]
          : []),
        ...(spec.configFiles ?? []).map((file) => ({
          name: file.volume,
          configMap: { name: runtime.metadata.name, items: [{ key: file.key, path: file.key }] },
        })),
        ...(spec.extraVolumes ?? []),
      ],
      nodeSelector: args.nodeSelector,
      tolerations: args.tolerations,
      affinity: args.affinity,
      topologySpreadConstraints: args.spreadAcrossNodes
        ? [
            {
              maxSkew: 1,
              topologyKey: "kubernetes.io/hostname",
              whenUnsatisfiable: "ScheduleAnyway",
              labelSelector: { matchLabels: selector },
            },
          ]
        : [],
    },
  };

  // With an autoscaler, Pulumi leaves spec.replicas out: under server-side apply it then owns no
  // value the autoscaler's changes would conflict with, and an update never resets the count.
  const workloadSpec = {
    replicas: args.autoscaling ? undefined : args.replicas,
    selector: { matchLabels: selector },
    template,
  };
  const workload = spec.statefulSet
    ? new k8s.apps.v1.StatefulSet(
        `${name}`,
        {
          metadata: metadata(""),
          spec: {
            ...workloadSpec,
            serviceName: name,
            podManagementPolicy: "Parallel",
            volumeClaimTemplates: spec.statefulSet.volumeClaimTemplates,
          },
        },
        opts,
      )
    : new k8s.apps.v1.Deployment(
        `${name}`,
        {
          metadata: metadata(""),
          spec: {
            ...workloadSpec,
            strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
          },
        },
        opts,
      );

  if (args.autoscaling) {
    const target: ScaleTarget = { apiVersion: "apps/v1", kind: spec.statefulSet ? "StatefulSet" : "Deployment", name };
    const dependsOn = { ...opts, dependsOn: [workload] };
    if (args.autoscaling.kind === "keda")
      new k8s.apiextensions.CustomResource(
        `${name}-scaler`,
        {
          apiVersion: "keda.sh/v1alpha1",
          kind: "ScaledObject",
          metadata: metadata(""),
          spec: scaledObjectSpec(args.autoscaling, target),
        },
        dependsOn,
      );
    else
      new k8s.autoscaling.v2.HorizontalPodAutoscaler(
        `${name}-scaler`,
        { metadata: metadata(""), spec: hpaSpec(args.autoscaling, target) },
        dependsOn,
      );
  }

  // One pod at a time may be evicted, so a node drain never takes the whole pool.
  new k8s.policy.v1.PodDisruptionBudget(
    `${name}`,
    { metadata: metadata(""), spec: { maxUnavailable: 1, selector: { matchLabels: selector } } },
    opts,
  );

  const ports = args.egress.ports ?? spec.egressPorts;
  new k8s.networking.v1.NetworkPolicy(
    `${name}`,
    {
      metadata: metadata(""),
      spec: {
        podSelector: { matchLabels: selector },
        policyTypes: ["Ingress", "Egress"],
        ingress: [],
        egress: [
          {
            to: args.egress.dns,
            ports: [
              { protocol: "UDP", port: 53 },
              { protocol: "TCP", port: 53 },
            ],
          },
          {
            to: egressPeers(args.egress.cidrBlocks, args.egress.allowMetadataService),
            ...(ports ? { ports: ports.map((port) => ({ protocol: "TCP", port })) } : {}),
          },
        ],
      },
    },
    opts,
  );

  return {
    namespace: pulumi.output(args.namespace),
    workloadName: workload.metadata.name,
    secretName,
    serviceAccountName: account.metadata.name,
    podSecurityLevel: spec.podSecurityLevel,
  };
}

/** The common shape of the Kubernetes agents. */
export abstract class KubernetesAgent extends pulumi.ComponentResource implements WorkloadOutputs {
  readonly namespace: pulumi.Output<string>;
  /** The Deployment (or StatefulSet) running the agents. */
  readonly workloadName: pulumi.Output<string>;
  /** The Secret the agents read their credentials from. */
  readonly secretName: pulumi.Output<string>;
  readonly serviceAccountName: pulumi.Output<string>;
  /** The Pod Security Standard level the pods meet: enforce it on their namespace. */
  readonly podSecurityLevel: PodSecurityLevel;

  protected constructor(type: string, name: string, spec: WorkloadSpec, opts?: pulumi.ComponentResourceOptions) {
    super(type, name, {}, opts);
    const outputs = createWorkload(this, name, spec);
    this.namespace = outputs.namespace;
    this.workloadName = outputs.workloadName;
    this.secretName = outputs.secretName;
    this.serviceAccountName = outputs.serviceAccountName;
    this.podSecurityLevel = outputs.podSecurityLevel;
    this.registerOutputs(outputs);
  }
}
