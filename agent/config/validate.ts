import type { Env, PropertySchema, SettingsSchema } from "./env";

/**
 * A small validator for the JSON Schema subset that zod exports for our settings. It runs
 * inside the runtime bundle, where zod would cost half of the user-data budget.
 */

export interface SettingsProblem {
  /** The setting, e.g. "parallelism" or "vcsAgents[0].baseEndpoint". */
  path: string;
  /** The environment variable it is read from. */
  env?: string;
  message: string;
}

export class SettingsError extends Error {
  constructor(
    readonly role: string,
    readonly problems: SettingsProblem[],
  ) {
    super(
      `invalid ${role} settings:\n` +
        problems.map((p) => `  - ${p.env ? `${p.env} (${p.path})` : p.path}: ${p.message}`).join("\n"),
    );
    this.name = "SettingsError";
  }
}

function describe(property: PropertySchema): string {
  if (property.enum) return `one of ${property.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  const { type, minimum: low, maximum: high, pattern } = property;
  if (type === "integer" || type === "number") {
    const noun = type === "integer" ? "an integer" : "a number";
    const bounded = (n: number | undefined) => n !== undefined && Math.abs(n) < Number.MAX_SAFE_INTEGER;
    return bounded(low) ? (bounded(high) ? `${noun} from ${low} to ${high}` : `${noun} of at least ${low}`) : noun;
  }
  if (type === "boolean") return "true or false";
  if (type === "array") return "a comma-separated list";
  if (property.format === "uri") return "an http:// or https:// URL";
  if (property.format === "regex") return "a valid regular expression";
  return pattern ? `text matching /${pattern}/` : "text";
}

/** Whether `test` holds of `value` without throwing. */
const holds = (test: () => unknown) => {
  try {
    return !!test();
  } catch {
    return false;
  }
};

/**
 * Whether a value is of the property's type and within its limits (its items and fields aside).
 * A limit left out is undefined, which no comparison is true against.
 */
function fits(p: PropertySchema, value: unknown): boolean {
  if (p.enum) return p.enum.includes(value);
  const v = value as never;
  switch (p.type) {
    case "integer":
    case "number":
      return (
        typeof v === "number" &&
        (p.type === "number" ? v === v : Number.isInteger(v)) &&
        !(v < p.minimum! || v > p.maximum!)
      );
    case "boolean":
      return typeof v === "boolean";
    case "array":
      return Array.isArray(v);
    case "object":
      return typeof v === "object" && v !== null && !Array.isArray(v);
    default:
      return (
        typeof v === "string" &&
        !((v as string).length < p.minLength! || (v as string).length > p.maxLength!) &&
        (!p.pattern || new RegExp(p.pattern).test(v)) &&
        (p.format !== "uri" || holds(() => /^https?:$/.test(new URL(v).protocol))) &&
        (p.format !== "regex" || holds(() => new RegExp(v)))
      );
  }
}

function check(
  property: PropertySchema,
  value: unknown,
  path: string,
  problems: SettingsProblem[],
  shown: string,
  env?: string,
): void {
  const problem = (at: string, message: string) => problems.push({ path: at, env, message });
  if (!fits(property, value)) return void problem(path, `${shown} is not allowed: expected ${describe(property)}`);
  if (property.enum) return;
  const inner = (schema: PropertySchema | undefined, item: unknown, at: string) =>
    schema && check(schema, item, at, problems, JSON.stringify(item), env);
  if (Array.isArray(value)) value.forEach((item, index) => inner(property.items, item, `${path}[${index}]`));
  else if (property.type === "object") {
    const record = value as Record<string, unknown>;
    for (const key of property.required ?? []) if (record[key] === undefined) problem(`${path}.${key}`, "is required");
    const extra = property.additionalProperties;
    for (const [key, item] of Object.entries(record)) {
      const schema = property.properties?.[key] ?? (typeof extra === "object" ? extra : undefined);
      inner(property.propertyNames, key, `${path}.${key}`);
      if (schema) inner(schema, item, `${path}.${key}`);
      else if (extra === false) problem(`${path}.${key}`, "is not a known field");
    }
  }
}

/** Every problem of a whole document (a policy file) against its schema; paths start at `root`. */
export function checkDocument(schema: PropertySchema, value: unknown, root: string): SettingsProblem[] {
  const problems: SettingsProblem[] = [];
  check(schema, value, root, problems, JSON.stringify(value)?.slice(0, 80) ?? "nothing");
  return problems;
}

/**
 * Check raw settings against a role's schema and fill in defaults. Every problem is
 * reported at once; secret values are never echoed.
 */
export function validateSettings<T = Record<string, unknown>>(
  role: string,
  schema: SettingsSchema,
  raw: Record<string, unknown>,
): T {
  const problems: SettingsProblem[] = [];
  const settings: Record<string, unknown> = {};
  for (const key of Object.keys(raw)) {
    if (!schema.properties[key]) problems.push({ path: key, message: "is not a known setting" });
  }
  for (const [key, property] of Object.entries(schema.properties)) {
    let value = raw[key];
    if (value === undefined && property.default !== undefined) value = structuredClone(property.default);
    if (value === undefined) {
      if (schema.required?.includes(key)) problems.push({ path: key, env: property.env, message: "is required" });
      continue;
    }
    const shown = property.secret ? "the value (secret, not shown)" : JSON.stringify(value);
    check(property, value, key, problems, shown, property.env);
    settings[key] = value;
  }
  if (problems.length > 0) throw new SettingsError(role, problems);
  return settings as T;
}

/**
 * An EC2 bundle's settings: its instance file's, which the component checked against this same zod schema (a file
 * only root can change), with the secret ones from `env` (the pool's secret, which the role parses itself). It asks
 * only whether each required one is there (a secret the user made, existingSecretArn, may lack one): no text to
 * read, no value to check again. Nor the executor or vendor: the component picks the variant by the same
 * arguments it renders the file from (pool-core.ts), so the file always names the one its bundle serves.
 */
export function servedSettings<T>(role: string, schema: SettingsSchema, given: Record<string, unknown>, env: Env): T {
  const settings = { ...given };
  const problems: SettingsProblem[] = [];
  for (const [key, { env: name, secret }] of Object.entries(schema.properties)) {
    if (secret && env[name!] !== undefined) settings[key] = env[name!];
    if (settings[key] === undefined && schema.required?.includes(key))
      problems.push({ path: key, env: name, message: "is required" });
  }
  if (problems.length > 0) throw new SettingsError(role, problems);
  return settings as T;
}
