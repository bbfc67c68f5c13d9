import { isIP } from "node:net";
import { z } from "zod";

/**
 * What the API server checks beyond an object's shape, from Kubernetes' documented grammars
 * (apimachinery's validation of names, labels, keys and quantities), as zod schemas: a bad
 * value is refused before anything is created instead of half-way through a deployment.
 */

const LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS_LABEL = new RegExp(`^${LABEL}$`);
const DNS_SUBDOMAIN = new RegExp(`^${LABEL}(\\.${LABEL})*$`);
/** A label's name part, a label value, a toleration key's name: alphanumerics at both ends, - _ . inside. */
const QUALIFIED = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

const isDnsLabel = (text: string) => text.length <= 63 && DNS_LABEL.test(text);
const isDnsSubdomain = (text: string) => text.length <= 253 && DNS_SUBDOMAIN.test(text);

/** An RFC 1123 label: namespaces, and the objects whose name becomes a label value or a host name. */
export const dnsLabel = z.string().refine(isDnsLabel, {
  error:
    "must be an RFC 1123 label: at most 63 lowercase letters, digits and -, starting and ending with a letter or digit",
});

/** An RFC 1123 subdomain: Secrets, StorageClasses and most object names. */
export const dnsSubdomain = z.string().refine(isDnsSubdomain, {
  error:
    "must be an RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, - and ., each dot-separated part starting and ending with a letter or digit",
});

/** A label (or node selector, or toleration) key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters. */
export function labelKeyProblem(key: string): string | undefined {
  const slash = key.lastIndexOf("/");
  const prefix = slash === -1 ? undefined : key.slice(0, slash);
  const name = key.slice(slash + 1);
  if (prefix !== undefined && !isDnsSubdomain(prefix))
    return "a key's prefix (before /) must be an RFC 1123 subdomain of at most 253 characters";
  if (name.length === 0 || name.length > 63 || !QUALIFIED.test(name))
    return "a key's name must be 1-63 letters, digits, - _ or ., starting and ending with a letter or digit (an optional prefix/ before it)";
  return undefined;
}

export const labelKey = z.string().superRefine((key, ctx) => {
  const problem = labelKeyProblem(key);
  if (problem) ctx.addIssue({ code: "custom", message: problem, input: key });
});

/** A label value: empty, or at most 63 letters, digits, - _ ., starting and ending with a letter or digit. */
export const labelValue = z.string().refine((value) => value === "" || (value.length <= 63 && QUALIFIED.test(value)), {
  error:
    "must be a label value: empty, or at most 63 letters, digits, - _ or ., starting and ending with a letter or digit",
});

/** Labels or a node selector: keys and values as Kubernetes takes them. */
export const labelMap = z.record(labelKey, labelValue);

/** A key of a Secret or ConfigMap: letters, digits, - _ ., at most 253, not "." or "..", not starting with "..". */
export const dataKey = z
  .string()
  .refine((key) => key.length <= 253 && /^[-._a-zA-Z0-9]+$/.test(key) && key !== "." && !key.startsWith(".."), {
    error: 'must be a Secret key: 1-253 letters, digits, - _ or ., not "." and not starting with ".."',
  });

// Quantities: <number><suffix>, suffix a binary (Ki..Ei), decimal (m, k, M..E) or exponent (e3, E-2) one.
const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { m: 1e-3, "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };
const QUANTITY = /^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$/;

/** The value of a non-negative quantity ("1.5Ti", "250m", "1e3"), or undefined if it is not one. */
export function quantityValue(text: string): number | undefined {
  const match = QUANTITY.exec(text);
  if (!match) return undefined;
  const [, number, suffix = ""] = match;
  const scale = BINARY[suffix] ?? DECIMAL[suffix] ?? 10 ** Number(suffix.slice(1));
  return Number(number) * scale;
}

const QUANTITY_ERROR =
  "must be a Kubernetes quantity: a number with an optional suffix (Ki Mi Gi Ti Pi Ei, m k M G T P E, or an exponent such as e3)";

export const cpuQuantity = z
  .string()
  .refine((text) => quantityValue(text) !== undefined, { error: `${QUANTITY_ERROR}, e.g. "250m" or "1.5"` });

/** Bytes: a quantity that is a whole number of bytes ("512m" would be thousandths of one). */
export const byteQuantity = z.string().superRefine((text, ctx) => {
  const value = quantityValue(text);
  if (value === undefined)
    ctx.addIssue({ code: "custom", input: text, message: `${QUANTITY_ERROR}, e.g. "256Mi" or "1.5Gi"` });
  else if (!Number.isInteger(value))
    ctx.addIssue({
      code: "custom",
      input: text,
      message: 'is not a whole number of bytes ("m" means thousandths): use Ki, Mi, Gi, e.g. "512Mi"',
    });
});

const resourceList = z.strictObject({ cpu: cpuQuantity.optional(), memory: byteQuantity.optional() });

/** A container's requests and limits; the API server refuses a request above its limit. */
export const resources = z
  .strictObject({ requests: resourceList.optional(), limits: resourceList.optional() })
  .superRefine((value, ctx) => {
    for (const resource of ["cpu", "memory"] as const) {
      const request = value.requests?.[resource];
      const limit = value.limits?.[resource];
      if (request === undefined || limit === undefined) continue;
      const [requested, limited] = [quantityValue(request), quantityValue(limit)];
      if (requested !== undefined && limited !== undefined && requested > limited) {
        ctx.addIssue({
          code: "custom",
          path: ["requests", resource],
          input: request,
          message: `must not exceed limits.${resource} (${limit})`,
        });
      }
    }
  });

/** A toleration; the API server's rules between its fields are checked too. */
export const toleration = z
  .strictObject({
    key: labelKey.optional(),
    operator: z.enum(["Exists", "Equal"]).optional(),
    value: z.string().optional(),
    effect: z.enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]).optional(),
    tolerationSeconds: z.int().min(0).optional(),
  })
  .superRefine((t, ctx) => {
    const operator = t.operator ?? "Equal";
    if (operator === "Exists" && t.value)
      ctx.addIssue({
        code: "custom",
        path: ["value"],
        input: t.value,
        message: 'must be empty when operator is "Exists"',
      });
    if (operator === "Equal" && t.value !== undefined && !labelValue.safeParse(t.value).success) {
      ctx.addIssue({
        code: "custom",
        path: ["value"],
        input: t.value,
        message:
          "must be a label value: at most 63 letters, digits, - _ or ., starting and ending with a letter or digit",
      });
    }
    if (!t.key && operator !== "Exists")
      ctx.addIssue({
        code: "custom",
        path: ["operator"],
        input: t.operator,
        message: 'must be "Exists" when key is empty (a toleration of every taint)',
      });
    if (t.tolerationSeconds !== undefined && t.effect !== "NoExecute") {
      ctx.addIssue({
        code: "custom",
        path: ["tolerationSeconds"],
        input: t.tolerationSeconds,
        message: `is only allowed with effect "NoExecute" (got effect ${JSON.stringify(t.effect)})`,
      });
    }
  });

/** An IPv6 address's 128 bits, from text isIP accepted (no zone); an IPv4 tail ("::1.2.3.4") is two groups. */
function ipv6Bits(address: string): bigint {
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(address);
  const hex = tail
    ? address.slice(0, tail.index) +
      ((+tail[1] << 8) | +tail[2]).toString(16) +
      ":" +
      ((+tail[3] << 8) | +tail[4]).toString(16)
    : address;
  const [head, rest] = hex.split("::");
  const groups = (text: string | undefined) => (text ? text.split(":") : []);
  const missing = 8 - groups(head).length - groups(rest).length;
  const all = [...groups(head), ...(rest === undefined ? [] : Array(missing).fill("0")), ...groups(rest)];
  return all.reduce((bits, group) => (bits << 16n) | BigInt(`0x${group}`), 0n);
}

/** A CIDR block's family, prefix length and address bits, or why the API server's strict parser refuses it. */
export function parseCidr(text: string): { family: 4 | 6; prefix: number; bits: bigint } | string {
  const usage = 'must be an IPv4 or IPv6 CIDR block such as "10.0.0.0/8" or "fd00::/8"';
  const [address, prefixText, extra] = text.split("/");
  const family = isIP(address) as 0 | 4 | 6;
  if (extra !== undefined || family === 0 || !/^(0|[1-9][0-9]{0,2})$/.test(prefixText ?? "")) return usage;
  // Go's CIDR parsers take no zone. Kubernetes' strict validation (StrictIPCIDRValidation, its announced default)
  // refuses leading zeros, IPv4-mapped IPv6 and bits after the prefix, which it already warns of: ambiguous forms.
  if (address.includes("%")) return `${usage}, without a zone ("%${address.split("%")[1]}")`;
  const width = family === 4 ? 32 : 128;
  const prefix = Number(prefixText);
  if (prefix > width) return usage;
  const bits =
    family === 4 ? address.split(".").reduce((n, octet) => (n << 8n) | BigInt(octet), 0n) : ipv6Bits(address);
  if (family === 6 && bits >> 32n === 0xffffn) return `${usage}; give an IPv4-mapped IPv6 block in IPv4`;
  if (bits & ((1n << BigInt(width - prefix)) - 1n)) return `${usage}, with no bits set after its prefix`;
  return { family, prefix, bits };
}

/** An IPv4 or IPv6 CIDR block, as NetworkPolicy ipBlocks take. */
export const cidrBlock = z.string().superRefine((text, ctx) => {
  const parsed = parseCidr(text);
  if (typeof parsed === "string") ctx.addIssue({ code: "custom", input: text, message: parsed });
});

// Affinity, with the API server's rules on operators and values.
type Requirement = { key: string; operator: string; values?: string[] };
function checkValues(requirement: Requirement, ctx: z.RefinementCtx): void {
  const count = requirement.values?.length ?? 0;
  const issue = (message: string) =>
    ctx.addIssue({ code: "custom", path: ["values"], input: requirement.values, message });
  if (["In", "NotIn"].includes(requirement.operator) && count === 0)
    issue(`must not be empty with operator "${requirement.operator}"`);
  if (["Exists", "DoesNotExist"].includes(requirement.operator) && count > 0)
    issue(`must be empty with operator "${requirement.operator}"`);
  if (["Gt", "Lt"].includes(requirement.operator) && (count !== 1 || !/^-?[0-9]+$/.test(requirement.values?.[0] ?? "")))
    issue(`must be one integer with operator "${requirement.operator}"`);
}

/** A label selector, as the API server takes it. */
export const labelSelector = z.strictObject({
  matchLabels: labelMap.optional(),
  matchExpressions: z
    .array(
      z
        .strictObject({
          key: labelKey,
          operator: z.enum(["In", "NotIn", "Exists", "DoesNotExist"]),
          values: z.array(labelValue).optional(),
        })
        .superRefine(checkValues),
    )
    .optional(),
});

const nodeSelectorTerm = z.strictObject({
  matchExpressions: z
    .array(
      z
        .strictObject({
          key: labelKey,
          operator: z.enum(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
          values: z.array(z.string()).optional(),
        })
        .superRefine(checkValues),
    )
    .optional(),
  matchFields: z
    .array(
      z.strictObject({
        key: z.literal("metadata.name", { error: 'must be "metadata.name", the only field a node selector matches' }),
        operator: z.enum(["In", "NotIn"]),
        values: z.array(z.string()).length(1, { error: "must hold exactly one node name" }),
      }),
    )
    .optional(),
});

const podAffinityTerm = z.strictObject({
  labelSelector: labelSelector.optional(),
  namespaceSelector: labelSelector.optional(),
  namespaces: z.array(dnsLabel).optional(),
  topologyKey: labelKey,
  matchLabelKeys: z.array(labelKey).optional(),
  mismatchLabelKeys: z.array(labelKey).optional(),
});

const weight = z.int().min(1).max(100);
const podAffinity = z.strictObject({
  requiredDuringSchedulingIgnoredDuringExecution: z.array(podAffinityTerm).optional(),
  preferredDuringSchedulingIgnoredDuringExecution: z.array(z.strictObject({ weight, podAffinityTerm })).optional(),
});

/** A pod's affinity, as the API server takes it. */
export const affinity = z.strictObject({
  nodeAffinity: z
    .strictObject({
      requiredDuringSchedulingIgnoredDuringExecution: z
        .strictObject({ nodeSelectorTerms: z.array(nodeSelectorTerm).min(1) })
        .optional(),
      preferredDuringSchedulingIgnoredDuringExecution: z
        .array(z.strictObject({ weight, preference: nodeSelectorTerm }))
        .optional(),
    })
    .optional(),
  podAffinity: podAffinity.optional(),
  podAntiAffinity: podAffinity.optional(),
});
