import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { decodeToken, encodeToken } from "../protocol/token";
import { capturingLogger, eventually, freePort, scratchDir } from "../devkit/helpers";

const POOL = "workers";
const BUNDLE = path.join(__dirname, "..", "bundles", "launcher.js");
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/**
 * Launchers as they run on an instance (the shipped bundle in a process of its own), stopped
 * with SIGSTOP or killed with SIGKILL: the gateway must notice within its bounds, and a run
 * must never stay "running" for a launcher that is gone.
 */
describe("launchers that hang or die", function () {
  this.timeout(30_000);
  let gateway: Gateway;
  let url: string;
  let token: string;
  let keyBase64: string;
  let log: ReturnType<typeof capturingLogger>;
  const children: ChildProcess[] = [];
  const orphans: number[] = [];

  beforeEach(async () => {
    const made = await makePoolKeyAndRequest(POOL);
    keyBase64 = made.keyBase64;
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(
      POOL,
      "worker",
      url,
      await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL),
    );
    token = encodeToken({ ...decodeToken(created.token), gateway: url });
    log = capturingLogger("gateway");
    gateway = new Gateway({
      pools: [created.pool],
      port,
      dataDir: scratchDir("gw-"),
      log: log.log,
      leaseMs: 1000,
      pingIntervalMs: 100,
      pingTimeoutMs: 1000,
    });
    await gateway.listen();
  });
  afterEach(async () => {
    for (const child of children.splice(0)) child.kill("SIGKILL");
    // A killed launcher's run outlives it (its process group is its own): end it here.
    for (const pid of orphans.splice(0)) if (alive(pid)) process.kill(-pid, "SIGKILL");
    await gateway.close();
  });

  function startLauncher() {
    const child = spawn(process.execPath, [BUNDLE], {
      env: {
        PATH: process.env.PATH,
        SPACELIFT_TOKEN: token,
        SPACELIFT_POOL_PRIVATE_KEY: keyBase64,
        AGENTPOOLS_WORKER_EXECUTOR: "process",
        AGENTPOOLS_WORK_DIR: scratchDir("instance-runs-"),
      },
      stdio: "ignore",
    });
    children.push(child);
    return child;
  }

  /** A run that says where its shell is and then runs until stopped. */
  async function longRun() {
    const pidFile = path.join(scratchDir("run-"), "pid");
    const run = await gateway.workers.submit(POOL, {
      image: "alpine:3",
      commands: [`echo $$ > ${pidFile}`, "echo started", "while true; do sleep 0.05; done"],
    });
    await eventually(async () => (await gateway.workers.get(POOL, run.id)).logLines === 1, 10_000, "the run started");
    const pid = Number(readFileSync(pidFile, "utf8"));
    orphans.push(pid);
    return { id: run.id, pid };
  }

  const summary = () => gateway.workers.summary(POOL);
  /** The run once it is no longer running (its lease ran out). */
  const givenUp = (id: string) =>
    eventually(
      async () => {
        const current = await gateway.workers.get(POOL, id);
        return current.status !== "running" && current;
      },
      5000,
      "the run to be given up",
    );

  it("kill -9: the launcher's run is lost within its lease (1 s here, 60 s by default), not left running", async () => {
    const child = startLauncher();
    await eventually(() => summary().connections === 1, 10_000, "the launcher connected");
    const run = await longRun();
    child.kill("SIGKILL");
    const lost = await givenUp(run.id);
    assert.equal(lost.status, "lost");
    assert.match(lost.reason ?? "", /stopped renewing its lease \(1000 ms\)/);
    assert.equal(summary().connections, 0);
  });

  it("SIGSTOP: the launcher is dropped after unanswered pings, its run lost with the lease, the next run goes to a live launcher; on SIGCONT it stops the run", async () => {
    const hung = startLauncher();
    await eventually(() => summary().connections === 1, 10_000, "the launcher connected");
    const run = await longRun();
    hung.kill("SIGSTOP");
    await eventually(() => summary().connections === 0, 5000, "the stopped launcher dropped");
    assert.ok(log.lines.some((l) => l.msg === "worker stopped answering pings: disconnected"));
    const lost = await givenUp(run.id);
    assert.equal(lost.status, "lost");
    assert.ok(alive(run.pid), "the run's shell outlived its stopped launcher meanwhile");

    // Work goes on with a live launcher.
    startLauncher();
    await eventually(() => summary().connections === 1, 10_000, "another launcher connected");
    const next = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["echo next"] });
    await eventually(
      async () => (await gateway.workers.get(POOL, next.id)).status === "succeeded",
      10_000,
      "the next run",
    );

    // Woken, the stopped launcher presents its lease, is told it was taken, and stops its run.
    hung.kill("SIGCONT");
    await eventually(() => !alive(run.pid), 10_000, "the revoked run stopped");
    assert.equal((await gateway.workers.get(POOL, run.id)).status, "lost", "its late outcome changes nothing");
    await eventually(() => summary().connections === 2, 10_000, "the woken launcher back");
  });
});
