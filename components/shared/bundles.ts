import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import type { RoleName } from "../../agent/config/roles";

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

const cache = new Map<RoleName, string>();

/** The role's runtime bundle, built by `npm run build` (scripts/bundle.mjs). */
export function runtimeBundle(role: RoleName): string {
  const cached = cache.get(role);
  if (cached) return cached;
  const file = path.join(packageRoot(), "build", "bundles", `${role}.js`);
  if (!existsSync(file))
    throw new Error(`the ${role} runtime bundle is missing at ${file}: run "npm run build" in ${packageRoot()}`);
  const bundle = readFileSync(file, "utf8");
  cache.set(role, bundle);
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
