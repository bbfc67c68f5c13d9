// What a cluster would say about the objects the components render, for tests: each object
// against the Kubernetes OpenAPI schema (the kubernetes-models package, generated from the
// API's own definitions), a few API-server rules the schema cannot express, and each pod
// against the Pod Security Standard level its namespace enforces.
import { isSecretInput, type RecordedResource } from "../devkit/pulumi-mocks";

export type Level = "privileged" | "baseline" | "restricted";

// kubernetes-models is ESM only, with an "import"-only exports map; TypeScript compiles import()
// to require() under "module": "commonjs", so the import is made at run time, as written.
const importEsm = new Function("specifier", "return import(specifier)") as (
  specifier: string,
) => Promise<Record<string, unknown>>;

/** A recorded resource as the API server receives it: apiVersion, kind and its plain values. */
export function manifestOf(resource: RecordedResource): Record<string, any> {
  const [, groupVersion, kind] = /^kubernetes:(.+):([A-Za-z]+)$/.exec(resource.type) ?? [];
  if (!groupVersion) throw new Error(`${resource.type} is not a Kubernetes type`);
  const apiVersion = groupVersion.replace(/^core\//, "");
  const plain = (value: unknown): unknown => {
    if (isSecretInput(value)) return plain((value as { value: unknown }).value);
    if (Array.isArray(value)) return value.map(plain);
    if (value && typeof value === "object")
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
    return value;
  };
  return { apiVersion, kind, ...(plain(resource.inputs) as Record<string, unknown>) };
}

/** Problems the OpenAPI schema finds in a manifest (types, enums, required fields, formats such as quantities). */
export async function schemaProblems(manifest: Record<string, any>): Promise<string[]> {
  const [group, version] = manifest.apiVersion.includes("/")
    ? manifest.apiVersion.split("/")
    : [undefined, manifest.apiVersion];
  // KEDA's kinds from its own API types (@kubernetes-models/keda, generated from KEDA's Go API).
  const models = await importEsm(
    group === "keda.sh"
      ? `@kubernetes-models/keda/keda.sh/${version}`
      : `kubernetes-models/${group ? `${group}/` : ""}${version}`,
  );
  const Model = models[manifest.kind] as (new (data: unknown) => { validate(): void }) | undefined;
  if (!Model) return [`${manifest.apiVersion} ${manifest.kind}: no such kind in the Kubernetes API`];
  try {
    new Model(manifest).validate();
    return [];
  } catch (error) {
    return [`${manifest.kind} ${manifest.metadata?.name}: ${(error as Error).message}`];
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUALIFIED = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const labelKeyOk = (key: string) => {
  const slash = key.lastIndexOf("/");
  return (slash === -1 || DNS_SUBDOMAIN.test(key.slice(0, slash))) && QUALIFIED.test(key.slice(slash + 1));
};
const labelValueOk = (value: string) => value === "" || QUALIFIED.test(value);

/** The pod template of a workload manifest, or undefined. */
export const podTemplateOf = (manifest: Record<string, any>): Record<string, any> | undefined =>
  manifest.spec?.template;

const allContainers = (spec: Record<string, any>): Record<string, any>[] => [
  ...(spec.initContainers ?? []),
  ...(spec.containers ?? []),
  ...(spec.ephemeralContainers ?? []),
];

/** Rules of the API server's own validation that the OpenAPI schema does not carry. */
export function apiServerProblems(manifest: Record<string, any>): string[] {
  const problems: string[] = [];
  const where = `${manifest.kind} ${manifest.metadata?.name}`;
  const name = manifest.metadata?.name ?? "";
  const namePattern = ["Namespace", "Service"].includes(manifest.kind) ? DNS_LABEL : DNS_SUBDOMAIN;
  if (!namePattern.test(name)) problems.push(`${where}: metadata.name is not a valid name`);
  if (manifest.metadata?.namespace !== undefined && !DNS_LABEL.test(manifest.metadata.namespace))
    problems.push(`${where}: metadata.namespace is not an RFC 1123 label`);
  const checkLabels = (labels: Record<string, string> | undefined, at: string) => {
    for (const [key, value] of Object.entries(labels ?? {})) {
      if (!labelKeyOk(key) || !labelValueOk(value))
        problems.push(`${where}: ${at} ${key}=${value} is not a valid label`);
    }
  };
  checkLabels(manifest.metadata?.labels, "label");
  const template = podTemplateOf(manifest);
  if (template) {
    checkLabels(template.metadata?.labels, "pod label");
    const spec = template.spec;
    const selector = manifest.spec.selector?.matchLabels ?? {};
    for (const [key, value] of Object.entries(selector))
      if (template.metadata?.labels?.[key] !== value)
        problems.push(`${where}: the selector's ${key} does not match the pod template's labels`);
    checkLabels(spec.nodeSelector, "nodeSelector");
    const volumes = new Set<string>([
      ...(spec.volumes ?? []).map((v: { name: string }) => v.name),
      ...(manifest.spec.volumeClaimTemplates ?? []).map((c: { metadata: { name: string } }) => c.metadata.name),
    ]);
    const names = new Set<string>();
    for (const container of allContainers(spec)) {
      if (names.has(container.name)) problems.push(`${where}: two containers are named ${container.name}`);
      names.add(container.name);
      if (!DNS_LABEL.test(container.name))
        problems.push(`${where}: container name ${container.name} is not an RFC 1123 label`);
      const paths = new Set<string>();
      for (const mount of container.volumeMounts ?? []) {
        if (!volumes.has(mount.name))
          problems.push(`${where}: container ${container.name} mounts ${mount.name}, which is not a volume of the pod`);
        if (paths.has(mount.mountPath))
          problems.push(`${where}: container ${container.name} mounts two volumes at ${mount.mountPath}`);
        paths.add(mount.mountPath);
      }
    }
    for (const container of spec.containers ?? [])
      if (container.restartPolicy !== undefined)
        problems.push(`${where}: container ${container.name}: restartPolicy is only allowed on init containers`);
    for (const container of spec.initContainers ?? []) {
      if (container.restartPolicy !== undefined && container.restartPolicy !== "Always")
        problems.push(`${where}: init container ${container.name}: restartPolicy may only be "Always"`);
      const sidecar = container.restartPolicy === "Always";
      for (const probe of ["livenessProbe", "readinessProbe", "startupProbe", "lifecycle"]) {
        if (!sidecar && container[probe] !== undefined)
          problems.push(`${where}: init container ${container.name}: ${probe} needs restartPolicy "Always"`);
      }
    }
    for (const toleration of spec.tolerations ?? []) {
      if (toleration.operator === "Exists" && toleration.value)
        problems.push(`${where}: a toleration with operator Exists has a value`);
      if (toleration.tolerationSeconds !== undefined && toleration.effect !== "NoExecute")
        problems.push(`${where}: tolerationSeconds without effect NoExecute`);
    }
  }
  problems.push(...autoscalerProblems(manifest).map((p) => `${where}: ${p}`));
  for (const rule of manifest.kind === "NetworkPolicy" ? (manifest.spec.egress ?? []) : []) {
    for (const peer of rule.to ?? [])
      for (const except of peer.ipBlock?.except ?? [])
        if (except === peer.ipBlock.cidr) problems.push(`${where}: an ipBlock except equals its cidr`);
  }
  return problems;
}

const PATH_SEGMENT = (name: unknown) =>
  typeof name === "string" && name !== "" && name !== "." && name !== ".." && !/[/%]/.test(name);
const positive = (quantity: unknown) => quantity !== undefined && Number.parseFloat(String(quantity)) > 0;

/**
 * The rules an autoscaler is held to beyond its schema: the API server's HorizontalPodAutoscaler
 * validation (autoscaling/validation) and KEDA's ScaledObject webhook (replica bounds, fallback).
 */
export function autoscalerProblems(manifest: Record<string, any>): string[] {
  const problems: string[] = [];
  const spec = manifest.spec ?? {};
  if (manifest.kind === "HorizontalPodAutoscaler") {
    if (spec.minReplicas !== undefined && spec.minReplicas < 1) problems.push("minReplicas must be at least 1");
    if (!(spec.maxReplicas >= 1)) problems.push("maxReplicas must be greater than 0");
    if (spec.maxReplicas < (spec.minReplicas ?? 1)) problems.push("maxReplicas must be at least minReplicas");
    if (!PATH_SEGMENT(spec.scaleTargetRef?.kind) || !PATH_SEGMENT(spec.scaleTargetRef?.name))
      problems.push("scaleTargetRef needs a kind and a name");
    for (const metric of spec.metrics ?? []) {
      const source = metric[String(metric.type).charAt(0).toLowerCase() + String(metric.type).slice(1)];
      if (!source) problems.push(`metric of type ${metric.type} has no ${metric.type} source`);
      if (!PATH_SEGMENT(source?.metric?.name))
        problems.push(`metric name ${source?.metric?.name} is not a path segment`);
      const target = source?.target ?? {};
      if (!["Utilization", "Value", "AverageValue"].includes(target.type)) problems.push(`target type ${target.type}`);
      for (const field of ["value", "averageValue"] as const)
        if (target[field] !== undefined && !positive(target[field])) problems.push(`target ${field} must be positive`);
      if (metric.type === "Pods" && target.averageValue === undefined)
        problems.push("a Pods metric needs averageValue");
      if (metric.type === "External" && (target.value === undefined) === (target.averageValue === undefined))
        problems.push("an External metric needs value or averageValue, not both");
    }
    const window = spec.behavior?.scaleDown?.stabilizationWindowSeconds;
    if (window !== undefined && !(window >= 0 && window <= 3600))
      problems.push("stabilizationWindowSeconds must be 0-3600");
  }
  if (manifest.kind === "ScaledObject") {
    // KEDA's CheckReplicaCountBoundsAreValid: a minimum of 0 counts as 1 against the maximum.
    const min = spec.minReplicaCount > 0 ? spec.minReplicaCount : 1;
    const max = spec.maxReplicaCount ?? 100;
    if (spec.minReplicaCount !== undefined && min > max)
      problems.push(`MinReplicaCount=${min} must be less than MaxReplicaCount=${max}`);
    if (spec.idleReplicaCount !== undefined && spec.idleReplicaCount >= min)
      problems.push("IdleReplicaCount must be less than MinReplicaCount");
    if (!(spec.triggers?.length >= 1)) problems.push("no trigger");
    for (const trigger of spec.triggers ?? []) {
      if (trigger.type !== "prometheus") continue;
      for (const required of ["serverAddress", "query", "threshold"])
        if (!trigger.metadata?.[required]) problems.push(`the prometheus trigger needs ${required}`);
      if (trigger.metadata?.authModes && !trigger.authenticationRef)
        problems.push("authModes without an authenticationRef");
      if (trigger.metricType === "Utilization") problems.push("Utilization is for the cpu and memory scalers only");
    }
  }
  return problems;
}

// Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards), per control.
const BASELINE_CAPABILITIES = [
  "AUDIT_WRITE",
  "CHOWN",
  "DAC_OVERRIDE",
  "FOWNER",
  "FSETID",
  "KILL",
  "MKNOD",
  "NET_BIND_SERVICE",
  "SETFCAP",
  "SETGID",
  "SETPCAP",
  "SETUID",
  "SYS_CHROOT",
];
const SAFE_SYSCTLS = [
  "kernel.shm_rmid_forced",
  "net.ipv4.ip_local_port_range",
  "net.ipv4.ip_unprivileged_port_start",
  "net.ipv4.tcp_syncookies",
  "net.ipv4.ping_group_range",
  "net.ipv4.ip_local_reserved_ports",
  "net.ipv4.tcp_keepalive_time",
  "net.ipv4.tcp_fin_timeout",
  "net.ipv4.tcp_keepalive_intvl",
  "net.ipv4.tcp_keepalive_probes",
];
const SELINUX_TYPES = ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
const RESTRICTED_VOLUMES = [
  "configMap",
  "csi",
  "downwardAPI",
  "emptyDir",
  "ephemeral",
  "persistentVolumeClaim",
  "projected",
  "secret",
];

/**
 * What keeps a pod (its metadata and spec) out of a namespace that enforces `level`: one line
 * a violation, naming the container where the rule is per container. Empty: admitted.
 */
export function podSecurityProblems(pod: Record<string, any>, level: Level): string[] {
  if (level === "privileged") return [];
  const problems: string[] = [];
  const spec = pod.spec;
  const podContext = spec.securityContext ?? {};
  const containers = allContainers(spec);
  const each = (check: (c: Record<string, any>, context: Record<string, any>) => string | undefined) => {
    for (const container of containers) {
      const problem = check(container, container.securityContext ?? {});
      if (problem) problems.push(`container ${container.name}: ${problem}`);
    }
  };

  // Baseline.
  if (podContext.windowsOptions?.hostProcess) problems.push("pod: windowsOptions.hostProcess");
  each((_, c) => (c.windowsOptions?.hostProcess ? "windowsOptions.hostProcess" : undefined));
  for (const field of ["hostNetwork", "hostPID", "hostIPC"]) if (spec[field]) problems.push(`pod: ${field}`);
  each((_, c) => (c.privileged ? "privileged" : undefined));
  each((_, c) => {
    const added = (c.capabilities?.add ?? []).filter((cap: string) => !BASELINE_CAPABILITIES.includes(cap));
    return added.length ? `adds capabilities ${added.join(", ")}` : undefined;
  });
  for (const volume of spec.volumes ?? []) if (volume.hostPath) problems.push(`volume ${volume.name}: hostPath`);
  each((container) =>
    (container.ports ?? []).some((p: { hostPort?: number }) => p.hostPort) ? "hostPort" : undefined,
  );
  const appArmorOk = (profile?: { type?: string }) =>
    profile?.type === undefined || ["RuntimeDefault", "Localhost"].includes(profile.type);
  if (!appArmorOk(podContext.appArmorProfile)) problems.push("pod: AppArmor profile");
  each((_, c) => (appArmorOk(c.appArmorProfile) ? undefined : "AppArmor profile"));
  for (const [key, value] of Object.entries(pod.metadata?.annotations ?? {})) {
    if (
      key.startsWith("container.apparmor.security.beta.kubernetes.io/") &&
      value !== "runtime/default" &&
      !String(value).startsWith("localhost/")
    )
      problems.push(`annotation ${key}`);
  }
  const seLinuxOk = (options?: { type?: string; user?: string; role?: string }) =>
    !options || (SELINUX_TYPES.includes(options.type ?? "") && !options.user && !options.role);
  if (!seLinuxOk(podContext.seLinuxOptions)) problems.push("pod: seLinuxOptions");
  each((_, c) => (seLinuxOk(c.seLinuxOptions) ? undefined : "seLinuxOptions"));
  each((_, c) => (c.procMount !== undefined && c.procMount !== "Default" ? "procMount" : undefined));
  if (podContext.seccompProfile?.type === "Unconfined") problems.push("pod: seccomp Unconfined");
  each((_, c) => (c.seccompProfile?.type === "Unconfined" ? "seccomp Unconfined" : undefined));
  for (const sysctl of podContext.sysctls ?? [])
    if (!SAFE_SYSCTLS.includes(sysctl.name)) problems.push(`pod: sysctl ${sysctl.name}`);
  if (level === "baseline") return problems;

  // Restricted.
  for (const volume of spec.volumes ?? []) {
    const type = Object.keys(volume).find((key) => key !== "name");
    if (!type || !RESTRICTED_VOLUMES.includes(type))
      problems.push(`volume ${volume.name}: type ${type} is not allowed`);
  }
  each((_, c) => (c.allowPrivilegeEscalation === false ? undefined : "allowPrivilegeEscalation is not false"));
  each((_, c) =>
    c.runAsNonRoot === true || (c.runAsNonRoot === undefined && podContext.runAsNonRoot === true)
      ? undefined
      : "runAsNonRoot is not true",
  );
  if (podContext.runAsUser === 0) problems.push("pod: runAsUser 0");
  each((_, c) => (c.runAsUser === 0 ? "runAsUser 0" : undefined));
  const seccompOk = (type?: string) => type === "RuntimeDefault" || type === "Localhost";
  each((_, c) =>
    seccompOk(c.seccompProfile?.type) || (c.seccompProfile === undefined && seccompOk(podContext.seccompProfile?.type))
      ? undefined
      : "seccomp profile is not RuntimeDefault or Localhost",
  );
  each((_, c) => ((c.capabilities?.drop ?? []).includes("ALL") ? undefined : "does not drop ALL capabilities"));
  each((_, c) =>
    (c.capabilities?.add ?? []).some((cap: string) => cap !== "NET_BIND_SERVICE")
      ? "adds a capability other than NET_BIND_SERVICE"
      : undefined,
  );
  return problems;
}

/** The level a Namespace manifest enforces (privileged when unlabelled, as the admission controller's default). */
export const enforcedLevel = (namespace: Record<string, any>): Level =>
  namespace.metadata?.labels?.["pod-security.kubernetes.io/enforce"] ?? "privileged";

/** Every problem a cluster would find in these recorded objects, each pod held to the level `levelOf` gives. */
export async function admissionProblems(
  resources: RecordedResource[],
  levelOf: (manifest: Record<string, any>) => Level,
) {
  const problems: string[] = [];
  for (const resource of resources.filter((r) => r.type.startsWith("kubernetes:"))) {
    const manifest = manifestOf(resource);
    problems.push(...(await schemaProblems(manifest)), ...apiServerProblems(manifest));
    const pod = podTemplateOf(manifest);
    const level = levelOf(manifest);
    if (pod)
      problems.push(
        ...podSecurityProblems(pod, level).map((p) => `${manifest.kind} ${manifest.metadata.name} at ${level}: ${p}`),
      );
  }
  return problems;
}
