import { z } from "zod";
import { roleSettings, type RoleName } from "./roles";
import type { PropertySchema, SettingsSchema } from "./env";
import { runPolicy } from "./run-policy";

/**
 * The JSON Schema of a role's settings, exported from its zod schema. The runtime bundle
 * never carries zod: the bundler replaces this module with the precomputed result
 * (scripts/bundle.mjs), so both sides read the same names, defaults and limits.
 */
export function settingsJsonSchema(role: RoleName): SettingsSchema {
  // Exported once per role (zod's export costs milliseconds, and a pool asks for it several times), frozen so that
  // no caller can change what the next one reads.
  let schema = exported.get(role);
  if (!schema) exported.set(role, (schema = deepFreeze(toJsonSchema(roleSettings[role])) as SettingsSchema));
  return schema;
}
const exported = new Map<RoleName, SettingsSchema>();

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** The JSON Schema of the launcher's run initialization policy file. */
export function runPolicyJsonSchema(): PropertySchema {
  return toJsonSchema(runPolicy) as PropertySchema;
}

function toJsonSchema(schema: z.ZodType): unknown {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as Record<
    string,
    unknown
  >;
  return rest;
}
