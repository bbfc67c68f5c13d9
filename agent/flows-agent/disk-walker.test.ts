import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { scratchDir } from "../../devkit/helpers";
import { diskUsage, walkDisk } from "./disk-walker";

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
