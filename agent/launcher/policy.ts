import { readFileSync } from "node:fs";
import type { PropertySchema } from "../config/env";
import type { RunPolicy } from "../config/run-policy";
import { durationMs } from "../config/duration";
import { checkDocument } from "../config/validate";
import { BUILT_FOR } from "../config/built-for";
import { literally } from "./output";

/** Load and validate the run initialization policy; any problem stops the launcher with this error. */
export function loadPolicy(file: string, schema: PropertySchema): RunPolicy {
  // On EC2 the file is the component's rendering (JSON.stringify) of a policy it checked against the same schema.
  if (BUILT_FOR.platform === "ec2") return JSON.parse(readFileSync(file, "utf8"));
  let document: unknown;
  try {
    document = JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    throw new Error(`the run initialization policy ${file} cannot be read as JSON: ${(error as Error).message}`);
  }
  const problems = checkDocument(schema, document, "policy");
  if (problems.length > 0) {
    throw new Error(
      `the run initialization policy ${file} is not valid:\n${problems.map((p) => `  - ${p.path}: ${p.message}`).join("\n")}`,
    );
  }
  return document as RunPolicy;
}

const globToRegExp = (glob: string) => new RegExp(`^${literally(glob).replace(/\\\*/g, ".*")}$`);

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

/**
 * What an image reference may be made of, starting with a letter or digit: nothing here can be
 * read as an option or split into two arguments. Docker parses the reference itself (after
 * `--`, so whatever the text, it is read as the image); the full grammar is the gateway's and
 * the components' check (protocol/image.ts), too large for the launcher's share of user-data.
 */
const IMAGE_CHARACTERS = /^[a-zA-Z\d][\w.:/@-]*$/;

/**
 * Variables the Docker client (a Go program exporting OpenTelemetry), its resolver (libc), the loader starting it, or
 * the run's shell would take as their own: a second layer, the client's environment holds only values of several lines.
 */
const STEERING =
  /^(LD_|DOCKER_|OTEL_|(GLIBC_TUNABLES|GCONV_PATH|GO(DEBUG|GC|MAXPROCS|MEMLIMIT|TRACEBACK)|SSL_CERT_(FILE|DIR)|PATH|HOME|ZONEINFO|TMPDIR|HOSTALIASES|RES_OPTIONS|LOCALDOMAIN)$)|_PROXY$/i;

/**
 * Why the launcher refuses a run the gateway sent, whatever the policy: an image that is not an
 * image reference, or a variable that is not a name (LD_PRELOAD=...) or that would steer the
 * Docker client or its loader rather than reach the run. Pure.
 */
export function runRefusal(spec: { image: unknown }, environment: Record<string, unknown>): string | undefined {
  if (typeof spec.image !== "string" || !IMAGE_CHARACTERS.test(spec.image))
    return `image ${JSON.stringify(spec.image)} is not an image reference`;
  for (const name of Object.keys(environment)) {
    if (!/^[A-Za-z_]\w*$/.test(name)) return `run variable ${JSON.stringify(name)} is not a variable name`;
    if (STEERING.test(name)) return `run variable ${name} would steer the Docker client or its loader`;
  }
  return undefined;
}
