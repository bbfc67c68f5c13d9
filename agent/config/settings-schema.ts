import { z } from "zod";
import { roleSettings, type RoleName } from "./roles";
import type { SettingsSchema } from "./env";

/**
 * The JSON Schema of a role's settings, exported from its zod schema. The runtime bundle
 * never carries zod: the bundler replaces this module with the precomputed result
 * (scripts/bundle.mjs), so both sides read the same names, defaults and limits.
 */
export function settingsJsonSchema(role: RoleName): SettingsSchema {
  const { $schema: _ignored, ...schema } = z.toJSONSchema(roleSettings[role], {
    io: "input",
    unrepresentable: "any",
  }) as Record<string, unknown>;
  return schema as unknown as SettingsSchema;
}
