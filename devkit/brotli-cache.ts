// Loaded by mocha before any test file (.mocharc.json). Brotli at quality 11 is the costliest
// step of the component tests: some 200 different user-data archives, each about 70 ms of CPU,
// and the same sources give the same archives run after run. Each is kept on disk by a digest
// of its text, as the component's own code compressed it the first time (identical bytes), and
// a later run reads it back. Entries not used for a day, or past the newest 2,000, go.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BROTLI_PARAMS, compressedTexts } from "../components/aws/userdata";
import { packageRoot } from "../components/shared/bundles";

const dir = path.join(packageRoot(), "node_modules/.cache/agentpools-brotli");
const STALE_MS = 24 * 3600_000;
/** Some tests render archives that differ every run (free ports, scratch paths): those entries go first. */
const MAX_ENTRIES = 2000;

mkdirSync(dir, { recursive: true });
const entries = readdirSync(dir).flatMap((name) => {
  try {
    return [{ name, used: statSync(path.join(dir, name)).mtimeMs }];
  } catch {
    return []; // Removed meanwhile by another test process.
  }
});
entries.sort((a, b) => b.used - a.used);
for (const [i, { name, used }] of entries.entries())
  if (i >= MAX_ENTRIES || Date.now() - used > STALE_MS) rmSync(path.join(dir, name), { force: true });

/** The file of a text: a digest of Brotli's version, the parameters and the text. */
const fileOf = (text: string) =>
  path.join(
    dir,
    createHash("sha256")
      .update(`${process.versions.brotli}\0${JSON.stringify(BROTLI_PARAMS)}\0`)
      .update(text)
      .digest("hex") + ".br",
  );

const inMemory = { get: compressedTexts.get, set: compressedTexts.set };
compressedTexts.get = (text) => {
  const found = inMemory.get(text);
  if (found) return found;
  const file = fileOf(text);
  try {
    const packed = readFileSync(file);
    const now = new Date();
    utimesSync(file, now, now);
    inMemory.set(text, packed);
    return packed;
  } catch {
    return undefined;
  }
};
compressedTexts.set = (text, packed) => {
  inMemory.set(text, packed);
  const file = fileOf(text);
  // Whole or not at all: test processes run side by side.
  writeFileSync(`${file}.${process.pid}`, packed);
  renameSync(`${file}.${process.pid}`, file);
};
