// Test fixtures whose making is pure CPU (keys, certificates): made once, kept on disk in
// node_modules/.cache/agentpools-keys and read back by later test processes and runs, as
// brotli-cache.ts keeps archives. A fixture is a directory of the files its maker wrote.
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { packageRoot } from "../components/shared/bundles";

export const dir = path.join(packageRoot(), "node_modules/.cache/agentpools-keys");

/** Whole or not at all: test processes run side by side, and the first to finish a fixture keeps it. */
export function publish(made: string, file: string): void {
  try {
    renameSync(made, file);
  } catch {
    rmSync(made, { recursive: true, force: true }); // Another process's copy is there already.
  }
}

/**
 * The directory of the files `make` writes into the directory it is given, made once per `key`
 * (and again once older than `maxAgeMs`: certificates that expire). Read it, never write to it.
 */
export function cachedFiles(key: string, make: (into: string) => void, maxAgeMs = Infinity): string {
  const name = createHash("sha256").update(key).digest("hex").slice(0, 32);
  const kept = path.join(dir, name);
  if (existsSync(kept) && Date.now() - statSync(kept).mtimeMs < maxAgeMs) return kept;
  mkdirSync(dir, { recursive: true });
  const made = mkdtempSync(`${kept}.`);
  make(made);
  rmSync(kept, { recursive: true, force: true });
  publish(made, kept);
  return kept;
}

/** A copy of a cached fixture's files in `into` (a test may write beside them). */
export function copyCachedFiles(key: string, make: (into: string) => void, into: string, maxAgeMs?: number): void {
  cpSync(cachedFiles(key, make, maxAgeMs), into, { recursive: true });
}
