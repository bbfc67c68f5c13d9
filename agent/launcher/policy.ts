import { readFileSync } from "node:fs";
import type { PropertySchema } from "../config/env";
import type { RunPolicy } from "../config/run-policy";
import { durationMs } from "../config/duration";
import { checkDocument } from "../config/validate";
import { isImageReference } from "../../protocol/image";

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
    // A rule sees the whole command and each line of it as the shell reads them (a backslash
    // before a newline joins two lines), so `^` and `.` cannot be stepped around with a newline.
    const texts = [command, ...command.replace(/\\\r?\n/g, "").split(/\r?\n|\r/)];
    const pattern = deniedCommands?.find((source) => texts.some((text) => new RegExp(source).test(text)));
    if (pattern) return `command ${index + 1} matches the denied pattern /${pattern}/`;
  }
  const missing = requiredEnvironment?.filter((name) => !run.environment[name]);
  if (missing?.length) return `the run's environment must set ${missing.join(", ")}`;
  if (maxRunTimeout && run.timeoutSeconds !== undefined && run.timeoutSeconds * 1000 > durationMs(maxRunTimeout)) {
    return `a timeout of ${run.timeoutSeconds}s is over the policy's maxRunTimeout (${maxRunTimeout})`;
  }
  return undefined;
}

/** Variables the Docker client (a Go program), or the dynamic loader starting it or the run's shell, would take as their own. */
const STEERING = /^(LD_\w*|DOCKER_\w*|BUILDKIT_\w*|MALLOC_\w*|GLIBC_TUNABLES|GCONV_PATH|LOCPATH|NLSPATH|HOSTALIASES|RES_OPTIONS|LOCALDOMAIN|GODEBUG|GOGC|GOMAXPROCS|GOMEMLIMIT|GOTRACEBACK|SSL_CERT_FILE|SSL_CERT_DIR|PATH|HOME|TMPDIR|XDG_\w*|\w*_PROXY)$/i;
export const RUN_ID = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * Why the launcher refuses a run the gateway sent, whatever the policy: a field of the wrong
 * shape, an image that is not an image reference, or a variable that would steer the Docker
 * client or the loader rather than reach the run. Pure.
 */
export function runRefusal(spec: Record<string, unknown>, environment: Record<string, unknown>): string | undefined {
  const { image, commands, timeoutSeconds, stateFrom } = spec;
  if (!isImageReference(image)) return `image ${JSON.stringify(image)} is not an image reference`;
  if (!Array.isArray(commands) || commands.length === 0 || !commands.every((c) => typeof c === "string")) return "commands must be a list of strings";
  if (timeoutSeconds !== undefined && !(Number.isInteger(timeoutSeconds) && (timeoutSeconds as number) > 0)) return "timeoutSeconds must be a positive integer";
  if (stateFrom !== undefined && !RUN_ID.test(String(stateFrom))) return `stateFrom ${JSON.stringify(stateFrom)} is not a run ID`;
  for (const [name, value] of Object.entries(environment)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || typeof value !== "string") return `run variable ${JSON.stringify(name)} must be a variable name with a string value`;
    if (STEERING.test(name)) return `run variable ${name} would steer the Docker client or the loader that starts the run, so a run cannot set it`;
  }
  return undefined;
}
