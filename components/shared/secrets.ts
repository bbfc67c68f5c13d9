import * as pulumi from "@pulumi/pulumi";
import type { z } from "zod";
import { secretSettings } from "../../agent/config/env";
import { roleSettings, type RoleName } from "../../agent/config/roles";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { formatIssues, InvalidArgumentsError } from "./validation";

/**
 * Check a role's secret settings among a component's arguments: each must be given (unless
 * `existingField` names a secret that holds them), plain strings are checked now, Outputs
 * once their values are known, and no value is ever echoed. `secretEnv()` wraps them, by
 * variable name, as one Pulumi secret; call it only once the problems are empty.
 */
export function checkSecrets(
  component: string,
  name: string,
  role: RoleName,
  args: Record<string, unknown>,
  existingField: string,
  existing: boolean,
) {
  const shape = (roleSettings[role] as unknown as z.ZodObject).shape;
  const problems: string[] = [];
  const given: { key: string; env: string; value: pulumi.Input<string> }[] = [];
  for (const { key, env } of secretSettings(settingsJsonSchema(role))) {
    const value = args[key] as pulumi.Input<string> | undefined;
    if (existing) {
      if (value !== undefined) problems.push(`${key}: give either ${key} or ${existingField}, not both`);
      continue;
    }
    if (value === undefined) {
      problems.push(
        `${key}: is required (a Pulumi secret, e.g. config.requireSecret("${key}")), unless ${existingField} names a secret that holds it`,
      );
      continue;
    }
    if (typeof value === "string") {
      const result = shape[key].safeParse(value);
      if (!result.success)
        problems.push(...formatIssues(result.error, [key]).map((line) => `${key}${line.slice(line.indexOf(":"))}`));
    }
    given.push({ key, env, value });
  }
  const secretEnv = (): pulumi.Output<Record<string, string>> | undefined => {
    if (existing) return undefined;
    const values = Object.fromEntries(
      given.map(({ key, env, value }) => [
        env,
        pulumi.output(value).apply((text) => {
          const result = shape[key].safeParse(text);
          if (!result.success)
            throw new InvalidArgumentsError(component, name, [`${key}: ${result.error.issues[0].message}`]);
          return text;
        }),
      ]),
    );
    return pulumi.secret(pulumi.all(values) as pulumi.Output<Record<string, string>>);
  };
  return { problems, secretEnv };
}
