// `npm test` after the fast build: two mocha processes side by side, then one summary line.
// - The files that start processes (agents, runtimes, gateways, git) run on mocha's parallel
//   workers, the longest first. Node starts a child by fork(): its cost grows with the
//   parent's resident memory (about 10 ms of CPU per 100 MB), so these workers never load
//   Pulumi (150 MB and more once a stack is built).
// - The files that build Pulumi components run one after another in a single process, which
//   loads the providers once (about 1.5 s of CPU each time) and starts few processes.
// Each mocha prints its own reporter's output; only the last line, "tests: N passed, N
// failed", is the total of both (CI reads it).
import { spawn } from "node:child_process";
import { chmodSync, globSync, lstatSync, mkdirSync, statfsSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const built = (pattern) => globSync(pattern, { cwd: root }).sort();

/** Files whose modules load @pulumi/* (components, their mocks): the single process's. */
const PULUMI = [
  "build/test/@(bad-config|contract|examples|good-config|kubernetes|network|pools).test.js",
  "build/test/@(kubernetes-admission|scaling-simulation|bundle-variants).test.js",
  "build/components/**/*.test.js",
];
/** The longest of the others, started first so that the last to end is a short one. */
const FIRST = [
  "flows-hostile-docker",
  "flows-hostile-user",
  "flows-hostile-namespaces",
  "runtime",
  "flows-lifetime",
  "flows",
  "launcher-hostile",
  "gateway-hostile-clients",
  "worker",
  "builtin-websocket",
  "flows-liveness",
  "flows-slow-link",
  "worker-leases",
].map((name) => `build/test/${name}.test.js`);

const pulumi = [...new Set(PULUMI.flatMap(built))];
const all = built("build/{test,agent,components,gateway,lib,protocol}/**/*.test.js");
const spawning = [...new Set([...FIRST, ...all])].filter((file) => !pulumi.includes(file) && all.includes(file));
const missing = FIRST.filter((file) => !all.includes(file));
if (missing.length) throw new Error(`test/run.mjs lists files that are not built: ${missing.join(", ")}`);

/**
 * Where the tests' scratch files go (TMPDIR of both mochas and what they start): a tmpfs when the machine has one
 * with room. The tests make and remove tens of thousands of files (runs filling their disk with thousands, deep trees, each
 * runtime's scratch). On an ext4 without a journal, as here, each new inode is found by skipping every inode of its
 * group removed in the last minute, each skip a read of the inode table: `perf` put 12 CPU-s of a run there (of
 * 80), and runs slow down as files pile up. A tmpfs has no such search. AGENTPOOLS_TEST_TMPDIR chooses another
 * directory; with neither, the system's.
 */
function scratchRoot() {
  if (process.env.AGENTPOOLS_TEST_TMPDIR) return process.env.AGENTPOOLS_TEST_TMPDIR;
  const TMPFS_MAGIC = 0x01021994;
  // Room for what the tests write at once (a few hundred MB): not a container's 64 MB /dev/shm.
  const ROOM = 2 * 1024 ** 3;
  try {
    const fs = statfsSync("/dev/shm");
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < ROOM) return undefined;
    // Kept from run to run (Node's compile cache of the test processes lives there), shared as /tmp is: sticky and
    // open to all (the runtimes' uids pass through it). Used only if it is a directory of this user's, not a link
    // another user left in the shared /dev/shm.
    const dir = `/dev/shm/agentpools-tests-${process.getuid()}`;
    mkdirSync(dir, { mode: 0o1777, recursive: true });
    const stat = lstatSync(dir);
    if (!stat.isDirectory() || stat.uid !== process.getuid()) return undefined;
    chmodSync(dir, 0o1777);
    return dir;
  } catch {
    return undefined;
  }
}
const tmp = scratchRoot();
const env = tmp ? { ...process.env, TMPDIR: tmp } : process.env;

const mocha = path.join(root, "node_modules/mocha/bin/mocha.js");
/** One mocha process; its output is held while the other prints, so that no two interleave. */
function run(name, args) {
  const started = performance.now();
  const child = spawn(process.execPath, [mocha, ...args], { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
  const held = [];
  let live = false;
  let summary = "";
  const take = (stream, out) =>
    stream.on("data", (chunk) => {
      const text = chunk.toString();
      // The total is printed once, at the end; each process's own line is read, not shown.
      const lines = text.split(/(?<=\n)/).filter((line) => {
        if (!/^tests: \d+ passed, \d+ failed/.test(line)) return true;
        summary = line;
        return false;
      });
      if (live) out.write(lines.join(""));
      else held.push([out, lines.join("")]);
    });
  take(child.stdout, process.stdout);
  take(child.stderr, process.stderr);
  let seconds = 0;
  const ended = new Promise((resolve) =>
    child.once("close", (code, signal) => {
      seconds = (performance.now() - started) / 1000;
      resolve(code ?? (signal ? 1 : 0));
    }),
  );
  return {
    ended,
    /** Prints what was held, then the rest as it comes. */
    show() {
      for (const [out, text] of held.splice(0)) out.write(text);
      live = true;
    },
    summary: () => summary,
    /** Where the time went, for whoever orders the files next. */
    took: () => `${name}: ${seconds.toFixed(1)} s`,
  };
}

// Six: on two cores, 38-40 s against 40-41 with five and 45 with four (tests' scratch on a tmpfs), as measured on
// 2026-12-01; each wait of the tests is for an event, given room for the load (devkit/helpers.ts eventually).
const JOBS = process.env.AGENTPOOLS_TEST_JOBS ?? "6";
const groups = [
  run(`${spawning.length} files on ${JOBS} workers`, ["--parallel", "--jobs", JOBS, ...spawning]),
  run(`${pulumi.length} Pulumi files in one process`, pulumi),
];
const codes = [];
for (const group of groups) {
  group.show();
  codes.push(await group.ended);
}
const counts = { passed: 0, failed: 0, skipped: 0 };
for (const [i, group] of groups.entries()) {
  const line = group.summary();
  if (!line) {
    // A mocha that ended before its reporter's last line (a crash, a bad flag): one failure more.
    counts.failed++;
    continue;
  }
  for (const [, n, what] of line.matchAll(/(\d+) (passed|failed|skipped)/g)) counts[what] += Number(n);
  if (codes[i] !== 0 && !/[1-9]\d* failed/.test(line)) counts.failed++;
}
process.stdout.write(`\n${groups.map((group) => group.took()).join("; ")}\n`);
process.stdout.write(
  `\ntests: ${counts.passed} passed, ${counts.failed} failed${counts.skipped ? `, ${counts.skipped} skipped` : ""}\n`,
);
process.exitCode = codes.some((code) => code !== 0) ? 1 : 0;
