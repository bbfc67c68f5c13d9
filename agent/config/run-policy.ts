import { z } from "zod";
import { duration, envVarName, regexSource } from "./fields";

/** An image reference where `*` stands for any run of characters ("ghcr.io/acme/*"). */
const imagePattern = z.string().regex(/^[A-Za-z0-9*][A-Za-z0-9._:/@*-]{0,254}$/, {
  error: 'must be an image reference where * matches anything, e.g. "ghcr.io/acme/*"',
});

/**
 * The run initialization policy (SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY): a JSON file
 * the launcher loads at start-up. Each rule can refuse a run before anything starts; the
 * reason goes into the run's log. Unknown fields are refused, so a typo never turns a rule off.
 */
export const runPolicy = z.strictObject({
  /** Only images matching one of these may run; leave out to allow any image. */
  allowedImages: z
    .array(imagePattern)
    .min(1, { error: "must list at least one image pattern (leave it out to allow any)" })
    .optional(),
  /** Images matching any of these are refused, even if allowed above. */
  deniedImages: z.array(imagePattern).optional(),
  /** Regular expressions; a run with a command that matches one is refused. */
  deniedCommands: z.array(regexSource.meta({ format: "regex" })).optional(),
  /** Variables every run's environment must set (for example TF_VAR_environment). */
  requiredEnvironment: z.array(envVarName).optional(),
  /** The longest run timeout a run may ask for, as a duration ("2h"). */
  maxRunTimeout: duration.optional(),
});

export type RunPolicy = z.output<typeof runPolicy>;
