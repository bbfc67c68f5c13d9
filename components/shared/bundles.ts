import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import type { RoleName } from "../../agent/config/roles";
import { bundleFile, FLOWS_RUNNER_FILE, type BundleVariant } from "../../agent/config/variants";

let root: string | undefined;

/** The agentpools package root, whether running from build/ (compiled) or the sources (ts-node). */
export function packageRoot(): string {
  if (root) return root;
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const manifest = path.join(dir, "package.json");
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).name === "agentpools") return (root = dir);
  }
  throw new Error(`cannot find the agentpools package above ${__dirname}`);
}

const cache = new Map<string, string>();

/** The role's runtime bundle, the full one or a variant (agent/config/variants.ts), built by `npm run build` (scripts/bundle.mjs). */
export function runtimeBundle(role: RoleName, variant: BundleVariant = {}): string {
  return readBundle(bundleFile(role, variant), `the ${role} runtime bundle`);
}

/** The Flows runtimes' own bundle (the runner alone), shipped beside the flows-agent's full bundle. */
export const flowsRunnerBundle = () => readBundle(FLOWS_RUNNER_FILE, "the Flows runner bundle");

function readBundle(name: string, what: string): string {
  const file = path.join(packageRoot(), "build", "bundles", name);
  const cached = cache.get(file);
  if (cached) return cached;
  if (!existsSync(file)) throw new Error(`${what} is missing at ${file}: run "npm run build" in ${packageRoot()}`);
  const bundle = readFileSync(file, "utf8");
  cache.set(file, bundle);
  return bundle;
}

/**
 * Node.js flags for every runtime:
 *  - no inspector on SIGUSR1: a process that may signal the agent must not be able to open
 *    a debugger in it (and read its token);
 *  - (each worth its place in the VCS benchmark's agent peak memory, a 210 MB clone through
 *    the agent) a small young generation frees streamed chunks promptly (about 150 MB
 *    without); optimizing compilation on the main thread: a background compiler's
 *    allocations stay in its own malloc arena for good (about 17 MB of resident memory).
 * Flows runtimes and launched runs are started without these flags.
 */
export const RUNTIME_NODE_FLAGS = ["--disable-sigusr1", "--max-semi-space-size=1", "--no-concurrent-recompilation"];
