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
  return toJsonSchema(roleSettings[role]) as SettingsSchema;
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
