import { createHash } from "node:crypto";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { secretSettings, settingsToEnv } from "../../agent/config/env";
import type { RoleName } from "../../agent/config/roles";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { runtimeBundle, RUNTIME_NODE_FLAGS } from "../shared/bundles";
import { checkSecrets } from "../shared/secrets";
import { formatIssues, InvalidArgumentsError } from "../shared/validation";

/**
 * The official Node.js image the runtime bundle runs on: no image of our own to build. Pin
 * it further by digest in production (image: "node:24.21.0-alpine@sha256:...").
 */
export const DEFAULT_NODE_IMAGE = "node:24.21.0-alpine";
/** The official image's "node" user. */
export const RUNTIME_UID = 1000;
export const STATUS_DIR = "/tmp/agentpools";
const RUNTIME_DIR = "/opt/agentpools";
const CA_PATH = "/etc/agentpools/ca/ca.pem";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const quantity = z.string().regex(/^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/, { error: 'must be a Kubernetes quantity such as "250m" or "256Mi"' });
const resourceList = z.strictObject({ cpu: quantity.optional(), memory: quantity.optional() });
export const resources = z.strictObject({ requests: resourceList.optional(), limits: resourceList.optional() });

export interface WorkloadDefaults {
  replicas: number;
  resources: z.input<typeof resources>;
  drainTimeoutSeconds: number;
}

/** Arguments every Kubernetes agent workload shares, with the kind's defaults. */
export function workloadShape(defaults: WorkloadDefaults) {
  return {
    namespace: z.string().regex(DNS_LABEL, { error: "must be a namespace name (lowercase letters, digits, -)" }).default("default"),
    replicas: z.int().min(0).max(100).default(defaults.replicas),
    image: z.string().regex(/^[a-z0-9][a-z0-9._/:@-]{0,254}$/, { error: "must be a container image reference" }).default(DEFAULT_NODE_IMAGE),
    resources: resources.default(defaults.resources),
    nodeSelector: z.record(z.string(), z.string()).default({}),
    tolerations: z
      .array(
        z.strictObject({
          key: z.string().optional(),
          operator: z.enum(["Exists", "Equal"]).optional(),
          value: z.string().optional(),
          effect: z.enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]).optional(),
          tolerationSeconds: z.int().min(0).optional(),
        }),
      )
      .default([]),
    /** A Kubernetes Affinity object, passed through as given. */
    affinity: z.record(z.string(), z.unknown()).optional(),
    /** Spread replicas across nodes (best effort). */
    spreadAcrossNodes: z.boolean().default(true),
    /** A Secret you already have; `keys` maps a variable (e.g. SPACELIFT_VCS_AGENT_POOL_TOKEN) to its key when they differ. */
    existingSecret: z.strictObject({ name: z.string().regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, { error: "must be a Secret name" }), keys: z.record(z.string(), z.string()).default({}) }).optional(),
    /** Where the pods may connect; DNS is always allowed. Ports default to the kind's needs. */
    egress: z.strictObject({
      cidrBlocks: z.array(z.cidrv4({ error: 'must be an IPv4 CIDR block such as "10.0.0.0/8"' })).min(1).default(["0.0.0.0/0"]),
      ports: z.array(z.int().min(1).max(65535)).optional(),
    }).default({ cidrBlocks: ["0.0.0.0/0"] }),
    customCaCertificates: z.string().regex(/^(-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*)+$/, { error: "must be one or more PEM certificates" }).optional(),
    drainTimeoutSeconds: z.int().min(5).max(7200).default(defaults.drainTimeoutSeconds),
    labels: z.record(z.string(), z.string()).default({}),
  };
}
export type WorkloadArgs = z.output<z.ZodObject<ReturnType<typeof workloadShape>>>;

/** The port of an http(s) URL, for egress rules. */
export const portOf = (url: string) => Number(new URL(url).port || (url.startsWith("https:") ? 443 : 80));

export interface WorkloadSpec {
  component: string;
  role: RoleName;
  args: WorkloadArgs;
  settingsEnv: Record<string, string>;
  secretEnv?: pulumi.Output<Record<string, string>>;
  /** Ports the pods need to reach, unless `egress.ports` says otherwise; undefined: all. */
  egressPorts?: number[];
  /** Extra volumes, mounts, environment and sidecars (the worker's Docker engine). */
  extraVolumes?: k8s.types.input.core.v1.Volume[];
  extraMounts?: k8s.types.input.core.v1.VolumeMount[];
  extraEnv?: k8s.types.input.core.v1.EnvVar[];
  sidecars?: k8s.types.input.core.v1.Container[];
  /** Files for the agent (a run initialization policy): kept in the runtime ConfigMap, each its own volume. */
  configFiles?: { volume: string; key: string; content: string }[];
  statefulSet?: { volumeClaimTemplates: k8s.types.input.core.v1.PersistentVolumeClaim[] };
}

/** Validate a Kubernetes agent's arguments before anything exists (see checkSecrets). */
export function validateWorkload<S extends z.ZodType>(component: string, name: string, role: RoleName, schema: S, args: Record<string, unknown>) {
  const secretKeys = secretSettings(settingsJsonSchema(role)).map((s) => s.key);
  const plain = Object.fromEntries(Object.entries(args).filter(([key]) => !secretKeys.includes(key)));
  const parsed = schema.safeParse(plain, { reportInput: true });
  const problems = parsed.success ? [] : formatIssues(parsed.error);
  const secrets = checkSecrets(component, name, role, args, "existingSecret", (plain as { existingSecret?: unknown }).existingSecret !== undefined);
  problems.push(...secrets.problems);
  if (problems.length > 0 || !parsed.success) throw new InvalidArgumentsError(component, name, problems);
  return { args: parsed.data as z.output<S>, secretEnv: secrets.secretEnv(), settingsEnv: settingsToEnv(settingsJsonSchema(role), parsed.data as Record<string, unknown>) };
}

export interface WorkloadOutputs {
  namespace: pulumi.Output<string>;
  workloadName: pulumi.Output<string>;
  secretName: pulumi.Output<string>;
  serviceAccountName: pulumi.Output<string>;
}

/** Create an agent's Kubernetes objects, as children of `parent`. */
export function createWorkload(parent: pulumi.ComponentResource, name: string, spec: WorkloadSpec): WorkloadOutputs {
  const opts = { parent };
  const { args, role } = spec;
  const selector = { "app.kubernetes.io/name": `agentpools-${role}`, "app.kubernetes.io/instance": name };
  const labels = { ...args.labels, ...selector, "app.kubernetes.io/component": role, "app.kubernetes.io/part-of": "agentpools", "app.kubernetes.io/managed-by": "pulumi" };
  const metadata = (suffix: string) => ({ name: `${name}${suffix}`, namespace: args.namespace, labels });
  const bundle = runtimeBundle(role);

  const runtime = new k8s.core.v1.ConfigMap(
    `${name}-runtime`,
    {
      metadata: metadata("-runtime"),
      data: {
        [`${role}.js`]: bundle,
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
    for (const { env } of secretSettings(settingsJsonSchema(role))) secretKeys[env] = args.existingSecret.keys[env] ?? env;
  } else {
    const secret = new k8s.core.v1.Secret(`${name}-credentials`, { metadata: metadata("-credentials"), type: "Opaque", stringData: spec.secretEnv as pulumi.Output<Record<string, string>> }, opts);
    secretName = secret.metadata.name;
    for (const { env } of secretSettings(settingsJsonSchema(role))) secretKeys[env] = env;
  }

  const account = new k8s.core.v1.ServiceAccount(`${name}`, { metadata: metadata(""), automountServiceAccountToken: false }, opts);

  const metadataPrefix = Object.values(settingsJsonSchema(role).properties).find((p) => p.encoding === "map")?.env;
  const env: k8s.types.input.core.v1.EnvVar[] = [
    ...Object.entries(spec.settingsEnv).map(([envName, value]) => ({ name: envName, value })),
    ...Object.entries(secretKeys).map(([envName, key]) => ({ name: envName, valueFrom: { secretKeyRef: { name: secretName, key } } })),
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
    resources: args.resources,
    volumeMounts: [
      { name: "runtime", mountPath: RUNTIME_DIR, readOnly: true },
      { name: "tmp", mountPath: "/tmp" },
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
    },
    // Ready only while connected to the gateway; alive while the event loop turns.
    readinessProbe: { exec: { command: ["test", "-f", `${STATUS_DIR}/ready`] }, periodSeconds: 5, failureThreshold: 2 },
    livenessProbe: {
      exec: { command: ["sh", "-c", `test $(( $(date +%s) - $(stat -c %Y ${STATUS_DIR}/heartbeat) )) -lt 60`] },
      initialDelaySeconds: 30,
      periodSeconds: 20,
      failureThreshold: 3,
    },
  };

  const podLabels = { ...labels };
  const template: k8s.types.input.core.v1.PodTemplateSpec = {
    metadata: {
      labels: podLabels,
      // A new bundle or configuration rolls the pods.
      annotations: { "agentpools.io/runtime-sha256": createHash("sha256").update(bundle).update(JSON.stringify(spec.settingsEnv)).update(JSON.stringify(spec.configFiles ?? [])).digest("hex") },
    },
    spec: {
      serviceAccountName: account.metadata.name,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: args.drainTimeoutSeconds + 30,
      securityContext: { fsGroup: RUNTIME_UID, seccompProfile: { type: "RuntimeDefault" } },
      containers: [container, ...(spec.sidecars ?? [])],
      volumes: [
        { name: "runtime", configMap: { name: runtime.metadata.name, items: [{ key: `${role}.js`, path: `${role}.js` }] } },
        { name: "tmp", emptyDir: { sizeLimit: "256Mi" } },
        ...(args.customCaCertificates ? [{ name: "ca", configMap: { name: runtime.metadata.name, items: [{ key: "ca.pem", path: "ca.pem" }] } }] : []),
        ...(spec.configFiles ?? []).map((file) => ({ name: file.volume, configMap: { name: runtime.metadata.name, items: [{ key: file.key, path: file.key }] } })),
        ...(spec.extraVolumes ?? []),
      ],
      nodeSelector: args.nodeSelector,
      tolerations: args.tolerations,
      affinity: args.affinity as k8s.types.input.core.v1.Affinity | undefined,
      topologySpreadConstraints: args.spreadAcrossNodes
        ? [{ maxSkew: 1, topologyKey: "kubernetes.io/hostname", whenUnsatisfiable: "ScheduleAnyway", labelSelector: { matchLabels: selector } }]
        : [],
    },
  };

  const workloadSpec = { replicas: args.replicas, selector: { matchLabels: selector }, template };
  const workload = spec.statefulSet
    ? new k8s.apps.v1.StatefulSet(`${name}`, { metadata: metadata(""), spec: { ...workloadSpec, serviceName: name, podManagementPolicy: "Parallel", volumeClaimTemplates: spec.statefulSet.volumeClaimTemplates } }, opts)
    : new k8s.apps.v1.Deployment(`${name}`, { metadata: metadata(""), spec: { ...workloadSpec, strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } } } }, opts);

  // One pod at a time may be evicted, so a node drain never takes the whole pool.
  new k8s.policy.v1.PodDisruptionBudget(`${name}`, { metadata: metadata(""), spec: { maxUnavailable: 1, selector: { matchLabels: selector } } }, opts);

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
          { ports: [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: 53 }] },
          { to: args.egress.cidrBlocks.map((cidr) => ({ ipBlock: { cidr } })), ...(ports ? { ports: ports.map((port) => ({ protocol: "TCP", port })) } : {}) },
        ],
      },
    },
    opts,
  );

  return { namespace: pulumi.output(args.namespace), workloadName: workload.metadata.name, secretName, serviceAccountName: account.metadata.name };
}

/** The common shape of the Kubernetes agents. */
export abstract class KubernetesAgent extends pulumi.ComponentResource implements WorkloadOutputs {
  readonly namespace: pulumi.Output<string>;
  /** The Deployment (or StatefulSet) running the agents. */
  readonly workloadName: pulumi.Output<string>;
  /** The Secret the agents read their credentials from. */
  readonly secretName: pulumi.Output<string>;
  readonly serviceAccountName: pulumi.Output<string>;

  protected constructor(type: string, name: string, spec: WorkloadSpec, opts?: pulumi.ComponentResourceOptions) {
    super(type, name, {}, opts);
    const outputs = createWorkload(this, name, spec);
    this.namespace = outputs.namespace;
    this.workloadName = outputs.workloadName;
    this.secretName = outputs.secretName;
    this.serviceAccountName = outputs.serviceAccountName;
    this.registerOutputs(outputs);
  }
}
