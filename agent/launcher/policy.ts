import { readFileSync } from "node:fs";
import type { PropertySchema } from "../config/env";
import type { RunPolicy } from "../config/run-policy";
import { durationMs } from "../config/duration";
import { checkDocument } from "../config/validate";

/** Load and validate the run initialization policy; any problem stops the launcher with this error. */
export function loadPolicy(file: string, schema: PropertySchema): RunPolicy {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new Error(`the run initialization policy ${file} cannot be read: ${(error as Error).message}`);
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw new Error(`the run initialization policy ${file} is not JSON: ${(error as Error).message}`);
  }
  const problems = checkDocument(schema, document, "policy");
  if (problems.length > 0) {
    throw new Error(`the run initialization policy ${file} is not valid:\n${problems.map((p) => `  - ${p.path}: ${p.message}`).join("\n")}`);
  }
  return document as RunPolicy;
}

const globToRegExp = (glob: string) => new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);

/** Why the policy refuses a run, or undefined if it may start. Pure. */
export function policyRefusal(
  policy: RunPolicy,
  run: { image: string; commands: string[]; environment: Record<string, string>; timeoutSeconds?: number },
): string | undefined {
  const { allowedImages, deniedImages, deniedCommands, requiredEnvironment, maxRunTimeout } = policy;
  if (allowedImages && !allowedImages.some((glob) => globToRegExp(glob).test(run.image))) {
    return `image ${run.image} is not allowed (allowedImages: ${allowedImages.join(", ")})`;
  }
  const denied = deniedImages?.find((glob) => globToRegExp(glob).test(run.image));
  if (denied) return `image ${run.image} is denied (deniedImages: ${denied})`;
  for (const [index, command] of run.commands.entries()) {
    const pattern = deniedCommands?.find((source) => new RegExp(source).test(command));
    if (pattern) return `command ${index + 1} matches the denied pattern /${pattern}/`;
  }
  const missing = requiredEnvironment?.filter((name) => !run.environment[name]);
  if (missing?.length) return `the run's environment must set ${missing.join(", ")}`;
  if (maxRunTimeout && run.timeoutSeconds !== undefined && run.timeoutSeconds * 1000 > durationMs(maxRunTimeout)) {
    return `a timeout of ${run.timeoutSeconds}s is over the policy's maxRunTimeout (${maxRunTimeout})`;
  }
  return undefined;
}
