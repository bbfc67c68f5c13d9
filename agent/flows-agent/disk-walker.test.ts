import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { scratchDir } from "../../devkit/helpers";
import { Worker } from "node:worker_threads";
import { diskUsage, WALK_NAMES_BYTES, walkDisk, WALKER_HEAP_MB } from "./disk-walker";

/** A tree of `files` empty files in `dirs` directories, under a scratch directory of its own. */
function tree(dirs: number, files: number): string {
  const root = scratchDir("walk-");
  for (let d = 0; d < dirs; d++) {
    mkdirSync(path.join(root, String(d)));
    for (let f = 0; f < files; f++) writeFileSync(path.join(root, String(d), String(f)), "");
  }
  return root;
}

describe("disk walker", () => {
  it("diskUsage: each entry at least 4 KiB, the walk stopped past the entry limit, -1 past its time budget", () => {
    const root = tree(2, 3);
    // The root, 2 directories and 6 files: 9 entries of at least a block each.
    assert.ok(diskUsage([root], 1 << 30) >= 9 * 4096);
    assert.equal(diskUsage([root], 4 * 4096), 5 * 4096);
    assert.equal(diskUsage([root], 1 << 30, undefined, 4096, -1), -1);
    assert.equal(diskUsage([path.join(root, "gone")], 1 << 30), 0);
  });

  it("diskUsage: -1 once a walk has read more names than its bound, whatever its entry limit leaves", () => {
    // 40 files of 200-character names: some 19 KB of names (two bytes a character, 64 more each).
    const root = scratchDir("names-");
    for (let f = 0; f < 40; f++) writeFileSync(path.join(root, String(f).padStart(200, "n")), "");
    const walk = (namesBytes: number) => diskUsage([root], 1 << 30, undefined, 4096, 500, undefined, namesBytes);
    assert.equal(walk(16_000), -1);
    // Measured: 40 files and their directory (which many long names make larger than a block).
    assert.ok(walk(20_000) >= 41 * 4096, String(walk(20_000)));
  });

  it("diskUsage: a directory whose name is not UTF-8 (found under another name) cannot be measured: Infinity", () => {
    const root = scratchDir("bytes-");
    const named = (name: number[]) => Buffer.concat([Buffer.from(`${root}/`), Buffer.from(name)]);
    mkdirSync(named([0x66, 0xff]));
    writeFileSync(Buffer.concat([named([0x66, 0xff]), Buffer.from("/held")]), "x".repeat(10_000));
    assert.equal(diskUsage([root], 1 << 30), Infinity);
    // A name of valid UTF-8, U+FFFD itself among its characters, is measured.
    rmSync(named([0x66, 0xff]), { recursive: true });
    mkdirSync(named([0x66, 0xef, 0xbf, 0xbd]));
    assert.ok(diskUsage([root], 1 << 30) >= 2 * 4096);
  });

  it("a directory of more long names than the walker thread's heap holds ends its walk as -1, not the thread", async () => {
    // red24 ended the thread (and so every walk waiting for it) with 500,000 files of long names under a 2 GB limit. The
    // same directory, from a stand-in file system (no disk to fill), walked on a thread with the walker's heap.
    const source = `const { parentPort } = require("node:worker_threads");
      const diskUsage = ${diskUsage};
      let given = 0;
      const fs = {
        lstatSync: (at) => ({ blocks: 0, isDirectory: () => at === "/wide" }),
        opendirSync: () => ({
          readSync: () => (given < 600000 ? { name: String(given++).padStart(255, "w") } : null),
          closeSync() {},
        }),
      };
      parentPort.postMessage([diskUsage(["/wide"], 2 ** 42, fs, 4096, 1, () => 0, ${WALK_NAMES_BYTES}), given]);`;
    const thread = new Worker(source, { eval: true, resourceLimits: { maxOldGenerationSizeMb: WALKER_HEAP_MB } });
    const outcome = await new Promise((resolve) => {
      thread.once("message", resolve).once("error", (error) => resolve(error.message));
    });
    await thread.terminate();
    assert.deepEqual(outcome, [-1, Math.ceil(WALK_NAMES_BYTES / (255 * 2 + 64))]);
  });

  it("walks on its thread, the run whose last walk was the shortest first", async () => {
    const slow = tree(20, 100);
    const quick = tree(1, 1);
    const order: string[] = [];
    const ask = (name: string, root: string, cost: number) =>
      walkDisk([root], 1 << 30, cost).then((walk) => (order.push(name), walk));
    // All asked at once: the first is walked as it comes; the other two wait for it and its rest.
    const [first, costly, cheap] = await Promise.all([
      ask("first", slow, 0),
      ask("costly", quick, 300),
      ask("cheap", quick, 1),
    ]);
    assert.deepEqual(order, ["first", "cheap", "costly"]);
    assert.ok(first.used >= 2021 * 4096 && first.took > 0, JSON.stringify(first));
    assert.equal(costly.used, cheap.used);
  });
});
