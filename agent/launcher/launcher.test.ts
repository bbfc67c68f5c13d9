import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { linkSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { scratchDir } from "../../devkit/helpers";
import { keepState } from "./launcher";

describe("launcher: the state a run leaves", () => {
  /** A run's directory: its workspace with `.agentpools/`, and a host file the run must never get into its state. */
  const runDir = () => {
    const dir = scratchDir("keep-state-");
    mkdirSync(path.join(dir, "workspace", ".agentpools"), { recursive: true });
    const host = path.join(dir, "host-secret");
    writeFileSync(host, "the launcher's secret\n");
    return {
      dir,
      workspace: path.join(dir, "workspace"),
      state: path.join(dir, "workspace", ".agentpools", "state"),
      host,
    };
  };

  it("keeps a copy of a regular file, which a later swap of the workspace's file (a link to a host file) does not touch", async () => {
    const { dir, workspace, state, host } = runDir();
    writeFileSync(state, "terraform state\n");
    assert.equal(await keepState(workspace, path.join(dir, "state"), 1 << 20), true);
    // A container not yet stopped swaps the file for a link to a host file: the copy is what is uploaded.
    renameSync(state, `${state}.old`);
    symlinkSync(host, state);
    assert.equal(readFileSync(path.join(dir, "state"), "utf8"), "terraform state\n");
  });

  it("keeps nothing over the limit: a file larger (sparse or not) copies nothing, and no copy passes the limit", async () => {
    const { dir, workspace, state } = runDir();
    writeFileSync(state, "x".repeat(1001));
    assert.equal(await keepState(workspace, path.join(dir, "state"), 1000), false);
    assert.throws(() => readFileSync(path.join(dir, "state")), /ENOENT/, "no copy");
    assert.equal(await keepState(workspace, path.join(dir, "state"), 1001), true);
    assert.equal(readFileSync(path.join(dir, "state"), "utf8").length, 1001);
  });

  it("keeps nothing of a link, a link's directory, a FIFO or a hard link to a file elsewhere; nothing is no state", async () => {
    const cases: [string, (r: ReturnType<typeof runDir>) => void][] = [
      ["a link", (r) => symlinkSync(r.host, r.state)],
      [
        "a linked directory",
        (r) => {
          mkdirSync(path.join(r.dir, "elsewhere"));
          writeFileSync(path.join(r.dir, "elsewhere", "state"), readFileSync(r.host));
          execFileSync("rm", ["-r", path.join(r.workspace, ".agentpools")]);
          symlinkSync(path.join(r.dir, "elsewhere"), path.join(r.workspace, ".agentpools"));
        },
      ],
      ["a FIFO", (r) => execFileSync("mkfifo", [r.state])],
      ["a hard link", (r) => linkSync(r.host, r.state)],
    ];
    for (const [what, make] of cases) {
      const r = runDir();
      make(r);
      assert.equal(await keepState(r.workspace, path.join(r.dir, "state"), 1 << 20), false, what);
      assert.throws(() => readFileSync(path.join(r.dir, "state")), /ENOENT/, `${what}: no copy`);
    }
    const r = runDir();
    assert.equal(await keepState(r.workspace, path.join(r.dir, "state"), 1 << 20), undefined);
  });
});
