import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { launcherSettings } from "../config/launcher";
import { writeDockerStandIn } from "../../devkit/docker-stand-in";
import { PRIVATE_KEY_B64, TOKENS } from "../../devkit/fixtures";
import { eventually, scratchDir } from "../../devkit/helpers";
import { dockerExecutor } from "./executor";

describe("launcher: docker executor", () => {
  it("a killed run is over only once the engine has removed its container, which outlives its client", async () => {
    const dir = scratchDir("docker-kill-");
    const workspace = path.join(dir, "run", "workspace");
    mkdirSync(workspace, { recursive: true });
    const settings = launcherSettings.parse({
      token: TOKENS.worker,
      poolPrivateKey: PRIVATE_KEY_B64,
      executor: "docker",
    });
    const executor = dockerExecutor(settings, { PATH: process.env.PATH }, writeDockerStandIn(dir));
    const run = executor.start({ id: "r1", image: "alpine:3", script: "exec sleep 30", env: {}, workspace });
    const containerFile = path.join(dir, "containers", "agentpools-run-r1");
    // The stand-in makes each file, then writes the pid in it: read once it is there (an empty file reads as 0).
    const container = await eventually(
      () => existsSync(containerFile) && Number(readFileSync(containerFile, "utf8")),
      10_000,
      "the container started",
    );
    const client = Number(readFileSync(path.join(dir, "client"), "utf8"));
    // The engine is slow to remove the container: the client is gone, the run is not over.
    writeFileSync(path.join(dir, "hold"), "");
    let over = false;
    void run.exited.then(() => (over = true));
    run.kill();
    const alive = (pid: number) => {
      try {
        return process.kill(pid, 0);
      } catch {
        return false;
      }
    };
    await eventually(() => !alive(client), 10_000, "the client gone");
    await eventually(() =>
      /\0rm\0-f\0agentpools-run-r1\0/.test(readFileSync(path.join(dir, "docker-calls"), "latin1")),
    );
    // Past the client's close (the next turns of the loop): still waiting for the engine.
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(over, false, "the run was over while its container could still write the workspace");
    assert.equal(alive(container), true, "the container outlived its client");
    rmSync(path.join(dir, "hold"));
    await eventually(() => over, 10_000, "the run over once the container is removed");
    assert.equal(alive(container), false, "over only once the container is gone");
  });
});
