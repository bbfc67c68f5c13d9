import type { PropertySchema, SettingsSchema } from "./env";

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
  switch (property.type) {
    case "integer":
    case "number": {
      const noun = property.type === "integer" ? "an integer" : "a number";
      const low = property.minimum;
      const high = property.maximum;
      const bounded = (n: number | undefined) => n !== undefined && Math.abs(n) < Number.MAX_SAFE_INTEGER;
      if (bounded(low) && bounded(high)) return `${noun} from ${low} to ${high}`;
      if (bounded(low)) return `${noun} of at least ${low}`;
      return noun;
    }
    case "boolean":
      return "true or false";
    case "array":
      return "a comma-separated list";
    default:
      if (property.format === "uri") return "an http:// or https:// URL";
      if (property.format === "regex") return "a valid regular expression";
      if (property.pattern) return `text matching /${property.pattern}/`;
      return "text";
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
  const fail = (): void => {
    problems.push({ path, env, message: `${shown} is not allowed: expected ${describe(property)}` });
  };
  if (property.enum) {
    if (!property.enum.includes(value)) fail();
    return;
  }
  switch (property.type) {
    case "integer":
    case "number":
      if (typeof value !== "number" || Number.isNaN(value)) return fail();
      if (property.type === "integer" && !Number.isInteger(value)) return fail();
      if (property.minimum !== undefined && value < property.minimum) return fail();
      if (property.maximum !== undefined && value > property.maximum) return fail();
      return;
    case "boolean":
      if (typeof value !== "boolean") fail();
      return;
    case "array":
      if (!Array.isArray(value)) return fail();
      value.forEach(
        (item, index) =>
          property.items && check(property.items, item, `${path}[${index}]`, problems, JSON.stringify(item), env),
      );
      return;
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value)) return fail();
      const record = value as Record<string, unknown>;
      for (const key of property.required ?? []) {
        if (record[key] === undefined) problems.push({ path: `${path}.${key}`, env, message: "is required" });
      }
      for (const [key, item] of Object.entries(record)) {
        const inner =
          property.properties?.[key] ??
          (typeof property.additionalProperties === "object" ? property.additionalProperties : undefined);
        if (property.propertyNames)
          check(property.propertyNames, key, `${path}.${key}`, problems, JSON.stringify(key), env);
        if (inner) check(inner, item, `${path}.${key}`, problems, JSON.stringify(item), env);
        else if (property.additionalProperties === false)
          problems.push({ path: `${path}.${key}`, env, message: "is not a known field" });
      }
      return;
    }
    default: {
      if (typeof value !== "string") return fail();
      if (property.minLength !== undefined && value.length < property.minLength) return fail();
      if (property.maxLength !== undefined && value.length > property.maxLength) return fail();
      if (property.pattern !== undefined && !new RegExp(property.pattern).test(value)) return fail();
      if (property.format === "uri") {
        try {
          if (!/^https?:$/.test(new URL(value).protocol)) fail();
        } catch {
          fail();
        }
      }
      if (property.format === "regex") {
        try {
          new RegExp(value);
        } catch {
          fail();
        }
      }
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
