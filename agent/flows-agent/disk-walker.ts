import { lstatSync, opendirSync } from "node:fs";
import { Worker } from "node:worker_threads";

/** What an entry costs at the least: a block (an empty file or a link still takes an inode, on the same disk). */
export const ENTRY_BYTES = 4096;
/**
 * The most CPU a walk of one run's scratch may take (the walker thread's own, which a loaded host does not inflate):
 * 16,384 entries (64 MB) of a plain tree take some 50 ms here.
 */
export const WALK_BUDGET_MS = 500;
/**
 * The most names a walk reads (two bytes a character, and some for each string), which bounds those it holds still to
 * visit: a directory of many long names ends its walk, as a slow tree does, well within the walker thread's heap (which
 * such a directory ended, and with it every walk waiting for the thread).
 */
export const WALK_NAMES_BYTES = 32 << 20;
/** The walker thread's heap (V8's old generation), in MB: one walk's names, bounded above, and the rest. */
export const WALKER_HEAP_MB = 128;

/**
 * The disk these files and trees hold (st_blocks: a sparse file counts what it uses), each entry at least ENTRY_BYTES;
 * walked to no more entries than `limit` allows, so a tree of many small files costs a bounded walk. Infinity if some
 * entry of it cannot be measured (a run may not hide files from the count); -1 if the walk took over `budgetMs` by
 * `clock` (a tree made deep: each lookup costs its depth), or read over `namesBytes` of names. Self-contained
 * but for its arguments: the walker thread evaluates its source.
 */
export function diskUsage(
  paths: string[],
  limit: number,
  fs: { lstatSync: typeof lstatSync; opendirSync: typeof opendirSync } = { lstatSync, opendirSync },
  entryBytes = ENTRY_BYTES,
  budgetMs = WALK_BUDGET_MS,
  clock = () => performance.now(),
  namesBytes = WALK_NAMES_BYTES,
): number {
  const deadline = clock() + budgetMs;
  let used = 0;
  let entries = 0;
  let held = 0;
  const pending = [...paths];
  while (pending.length > 0) {
    if (++entries > limit / entryBytes) return entries * entryBytes;
    if (clock() > deadline) return -1;
    const at = pending.pop() as string;
    try {
      // Gone meanwhile, or not made yet. Any other failure (a path past PATH_MAX, a directory made unsearchable) hides
      // what it holds: Infinity.
      const stat = fs.lstatSync(at, { throwIfNoEntry: false });
      // A name that is not UTF-8 reads back as another (U+FFFD for its bytes), which is not found: what it holds would
      // go unmeasured.
      if (!stat && at.includes("\uFFFD")) return Infinity;
      if (!stat) continue;
      used += Math.max(stat.blocks * 512, entryBytes);
      if (!stat.isDirectory()) continue;
      const dir = fs.opendirSync(at);
      try {
        for (let entry; pending.length <= limit / entryBytes && (entry = dir.readSync());) {
          // (Each path shares its directory's string: its own name is what it adds.)
          if ((held += entry.name.length * 2 + 64) > namesBytes) return -1;
          pending.push(`${at}/${entry.name}`);
        }
      } finally {
        dir.closeSync();
      }
    } catch (error) {
      if (!["ENOENT", "ENOTDIR"].includes((error as NodeJS.ErrnoException).code as string)) return Infinity;
    }
  }
  return used;
}

/**
 * The walker thread: one walk at a time, each followed by a rest as long as its CPU time, so walks take half a CPU at
 * the most, whatever the number of runs, and never the agent's event loop, its watchdogs and its connection. Of the walks
 * asked, the one whose run's last walk was the shortest goes first: runs that make their trees slow to walk wait for
 * each other, not for the runs quick to measure (a run that writes fast writes few entries).
 */
const WALKER = `const { parentPort } = require("node:worker_threads");
const fs = require("node:fs");
const diskUsage = ${diskUsage};
// The thread's own CPU time (Node 23.9 on), else the clock.
const cpu = process.threadCpuUsage
  ? () => { const { user, system } = process.threadCpuUsage(); return (user + system) / 1000; }
  : () => performance.now();
const asked = [];
let resting = false;
const next = () => {
  if (resting || asked.length === 0) return;
  const first = asked.reduce((best, at, i) => (at.cost < asked[best].cost ? i : best), 0);
  const { id, paths, limit, budget } = asked.splice(first, 1)[0];
  const began = cpu();
  let used = Infinity;
  try { used = diskUsage(paths, limit, fs, ${ENTRY_BYTES}, budget, cpu, ${WALK_NAMES_BYTES}); } catch {}
  const took = cpu() - began;
  parentPort.postMessage({ id, used, took });
  resting = true;
  setTimeout(() => { resting = false; next(); }, took);
};
parentPort.on("message", (message) => { asked.push(message); next(); });`;

/** A walk's outcome: diskUsage's answer, and how long it took (ms). */
export interface Walk {
  used: number;
  took: number;
}

let walker: { measure(paths: string[], limit: number, cost: number, budget: number): Promise<Walk> } | undefined;

/**
 * diskUsage on the walker thread, started at the first call, for a run whose last walk took `cost` ms (0 for its
 * first), within `budget` ms of CPU; a thread that failed answers Infinity and is replaced.
 */
export function walkDisk(paths: string[], limit: number, cost: number, budget = WALK_BUDGET_MS): Promise<Walk> {
  if (!walker) {
    // Its heap holds one walk's names (WALK_NAMES_BYTES at most): were it to fail all the same, its runs would count as
    // unmeasurable.
    const thread = new Worker(WALKER, { eval: true, resourceLimits: { maxOldGenerationSizeMb: WALKER_HEAP_MB } });
    thread.unref();
    const waiting = new Map<number, (walk: Walk) => void>();
    let id = 0;
    const lost = () => {
      if (walker === made) walker = undefined;
      for (const answer of waiting.values()) answer({ used: Infinity, took: 0 });
      waiting.clear();
    };
    thread.on("message", (message: Walk & { id: number }) => {
      waiting.get(message.id)?.(message);
      waiting.delete(message.id);
    });
    thread.on("error", lost).on("exit", lost);
    const made = {
      measure: (paths: string[], limit: number, cost: number, budget: number) =>
        new Promise<Walk>((resolve) => {
          waiting.set(++id, resolve);
          thread.postMessage({ id, paths, limit, cost, budget });
        }),
    };
    walker = made;
  }
  return walker.measure(paths, limit, cost, budget);
}
