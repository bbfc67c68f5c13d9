/**
 * Settings <-> environment variables, driven by the JSON Schema exported from a role's
 * zod schema. Pure and dependency-free: the components use it to render a pool's
 * configuration and the runtime uses it to read one back.
 */

export interface PropertySchema {
  type?: "string" | "integer" | "number" | "boolean" | "array" | "object";
  env?: string;
  flag?: string;
  secret?: boolean;
  encoding?: "map" | "indexed";
  fields?: Record<string, string>;
  format?: string;
  default?: unknown;
  enum?: unknown[];
  pattern?: string;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  items?: PropertySchema;
  properties?: Record<string, PropertySchema>;
  required?: string[];
  additionalProperties?: PropertySchema | boolean;
  propertyNames?: PropertySchema;
}

export interface SettingsSchema {
  type: "object";
  properties: Record<string, PropertySchema>;
  required?: string[];
}

export type Env = Record<string, string | undefined>;

/** The names of the secret settings and their variables. */
export function secretSettings(schema: SettingsSchema): { key: string; env: string }[] {
  return Object.entries(schema.properties)
    .filter(([, property]) => property.secret && property.env)
    .map(([key, property]) => ({ key, env: property.env as string }));
}

/** The settings an instance file carries: every non-secret one that is set, by key, as the schema checked it. */
export function plainSettings(schema: SettingsSchema, settings: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(schema.properties)
      .filter(([key, property]) => !property.secret && settings[key] !== undefined)
      .map(([key]) => [key, settings[key]]),
  );
}

function scalarToString(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/**
 * Render settings as environment variables. Secrets are left out unless asked for, and
 * unset optional settings produce no variable. Keys come out sorted, so the same
 * settings always render the same bytes.
 */
export function settingsToEnv(
  schema: SettingsSchema,
  settings: Record<string, unknown>,
  options: { includeSecrets?: boolean } = {},
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, property] of Object.entries(schema.properties)) {
    const value = settings[key];
    if (value === undefined || !property.env) continue;
    if (property.secret && !options.includeSecrets) continue;
    if (property.encoding === "map") {
      for (const [name, item] of Object.entries(value as Record<string, unknown>)) {
        env[property.env + name] = scalarToString(item);
      }
    } else if (property.encoding === "indexed") {
      (value as Record<string, unknown>[]).forEach((item, index) => {
        for (const [field, infix] of Object.entries(property.fields ?? {})) {
          if (item[field] !== undefined) env[`${property.env}${infix}_${index}`] = scalarToString(item[field]);
        }
      });
    } else if (Array.isArray(value)) {
      if (value.length > 0) env[property.env] = value.map(scalarToString).join(",");
    } else {
      env[property.env] = scalarToString(value);
    }
  }
  return Object.fromEntries(Object.entries(env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function fromString(property: PropertySchema, text: string): unknown {
  switch (property.type) {
    case "integer":
    case "number":
      return /^-?[0-9]+(\.[0-9]+)?$/.test(text.trim()) ? Number(text) : text;
    case "boolean": {
      const lowered = text.trim().toLowerCase();
      if (["true", "1", "yes"].includes(lowered)) return true;
      if (["false", "0", "no", ""].includes(lowered)) return false;
      return text;
    }
    case "array":
      return text
        .split(",")
        .map((item) => item.trim())
        .filter((item) => item !== "")
        .map((item) => (property.items ? fromString(property.items, item) : item));
    default:
      return text;
  }
}

/**
 * Read `--flag value` and `--flag=value` pairs; a bare boolean flag means true. Only a role
 * whose settings have flags (the VCS agent) passes this to runRole: the others' bundles leave it out.
 */
export function parseFlags(schema: SettingsSchema, argv: string[]): Env {
  const byFlag = new Map<string, PropertySchema>();
  for (const property of Object.values(schema.properties)) if (property.flag) byFlag.set(property.flag, property);
  const env: Env = {};
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const property = byFlag.get(flag);
    if (!property?.env) throw new Error(`unknown flag ${JSON.stringify(argv[i])}`);
    if (inline !== undefined) env[property.env] = inline;
    else if (property.type === "boolean" && (argv[i + 1] === undefined || argv[i + 1].startsWith("--")))
      env[property.env] = "true";
    else if (argv[i + 1] === undefined) throw new Error(`flag ${flag} needs a value`);
    else env[property.env] = argv[++i];
  }
  return env;
}

/**
 * Collect a role's raw settings from its environment (with the command-line flags merged in,
 * by parseFlags). Values are converted from text by the schema's types; checking them is the
 * validator's job.
 */
export function envToRawSettings(schema: SettingsSchema, merged: Env): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  for (const [key, property] of Object.entries(schema.properties)) {
    const name = property.env;
    if (!name) continue;
    if (property.encoding === "map") {
      const entries = Object.entries(merged).filter(
        ([variable, value]) => variable.startsWith(name) && value !== undefined,
      );
      if (entries.length > 0)
        raw[key] = Object.fromEntries(entries.map(([variable, value]) => [variable.slice(name.length), value]));
    } else if (property.encoding === "indexed") {
      const items: Record<string, unknown>[] = [];
      for (let index = 0; ; index++) {
        const item: Record<string, unknown> = {};
        for (const [field, infix] of Object.entries(property.fields ?? {})) {
          const value = merged[`${name}${infix}_${index}`];
          if (value !== undefined) item[field] = value;
        }
        if (Object.keys(item).length === 0) break;
        items.push(item);
      }
      if (items.length > 0) raw[key] = items;
    } else if (merged[name] !== undefined) {
      raw[key] = fromString(property, merged[name] as string);
    }
  }
  return raw;
}
