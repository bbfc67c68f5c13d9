import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { flowsAgentSettings, type FlowsAgentSettings } from "../agent/config/flows-agent";
import { flowsAgentRole, unbundledRunner } from "../agent/flows-agent/agent";
import {
  cancelRun,
  dockerLauncher,
  dockerRunArgs,
  executor as createExecutor,
  processLauncher,
  type Cancellation,
} from "../agent/flows-agent/executor";
import { readPrivileges, uidPool } from "../agent/flows-agent/sandbox";
import type { RunningAgent } from "../agent/runtime/runtime";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, runtimeUidRange, scratchDir, serviceKey } from "../devkit/helpers";
import { FLOWS_CANCELLED, FLOWS_MAX_ERROR_CHARS, FLOWS_MAX_VALUE_KEYS } from "../protocol/flows";

const POOL = "01FLOWSTEST";

describe("Flows agent and gateway", function () {
  this.timeout(60_000);
  let gateway: Gateway;
  let url: string;
  let token: string;
  let emptyToken: string;
  let agent: RunningAgent;
  let scratchRoot: string;
  const agentLog = capturingLogger("flows-agent");
  const service = serviceKey();

  /** Agents started so far: each has uids and a mounts directory of its own, as agents on one host must. */
  let agents = 0;
  const settings = (overrides: Partial<FlowsAgentSettings> = {}) =>
    flowsAgentSettings.parse({
      poolId: POOL,
      poolToken: token,
      gatewayEndpoint: url,
      backendEndpoint: "http://127.0.0.1:9",
      executor: "process",
      // Slots 4 and up: 0 to 3 are the flows-hostile files'.
      runtimeUids: runtimeUidRange(4 + agents).range,
      mountsDir: path.join(scratchRoot, `agent-${agents++}`),
      runtimePoolSize: 2,
      runtimeMemoryMb: 128,
      defaultRunTimeout: "5s",
      ...overrides,
    });

  async function run(body: Record<string, unknown>, pool = POOL): Promise<{ status: number; result: any }> {
    const response = await fetch(`${url}/_agentpools/api/flows/${pool}/run`, {
      method: "POST",
      headers: service.headers,
      body: JSON.stringify(body),
    });
    return { status: response.status, result: await response.json() };
  }

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(POOL, "flows", url);
    token = created.token;
    const empty = createPool("01EMPTY", "flows", url);
    emptyToken = empty.token;
    gateway = new Gateway({
      pools: [created.pool, empty.pool],
      keys: [service.definition],
      // One service key, as on a gateway that serves one service: it may use every runtime.
      clientShare: 1,
      port,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
    scratchRoot = scratchDir("flows-");
    agent = await flowsAgentRole(unbundledRunner()).start(settings(), { log: agentLog.log });
    await agent.ready;
    await eventually(() => gateway.summary().find((p) => p.name === POOL)!.connections === 1);
  });

  after(async () => {
    await agent.drain(Date.now() + 5000);
    await gateway.close();
  });

  it("logs Connected to the server and shows the agent beside the other pools", () => {
    assert.ok(agentLog.lines.some((l) => l.msg === "Connected to the server"));
    const pool = gateway.summary().find((p) => p.name === POOL)!;
    assert.equal(pool.kind, "flows");
    assert.equal(pool.agents[0].parallelism, 2);
  });

  it("returns an expression's JSON result, given inputs", async () => {
    const { status, result } = await run({
      code: "({ sum: inputs.a + inputs.b, list: [1, 'two', null] })",
      inputs: { a: 40, b: 2 },
    });
    assert.equal(status, 200);
    assert.deepEqual([result.ok, result.value], [true, { sum: 42, list: [1, "two", null] }]);
  });

  it("runs a block's code, awaiting what it awaits, and captures console output in order", async () => {
    const { result } = await run({
      kind: "block",
      code: "console.log('start', inputs.n); console.error('careful'); process.stdout.write('raw line\\n'); await new Promise((r) => setTimeout(r, 20)); return inputs.n * 2;",
      inputs: { n: 21 },
    });
    assert.equal(result.value, 42);
    assert.deepEqual(result.console, ["start 21", "error: careful", "raw line"]);
  });

  it("reports a thrown error with its name, message and stack", async () => {
    const { result } = await run({
      kind: "block",
      code: "function check() { throw new RangeError('value out of range'); }\ncheck();",
    });
    assert.equal(result.ok, false);
    assert.equal(result.error.name, "RangeError");
    assert.equal(result.error.message, "value out of range");
    assert.match(result.error.stack, /RangeError: value out of range\n\s+at check/);
  });

  it("a run whose answer is within the agent's key cap but whose result message (three keys more) is not fails alone: the link and a run beside it live", async () => {
    const [agentId] = gateway
      .summary()
      .find((p) => p.name === POOL)!
      .agents.map((a) => a.id);
    const beside = run({ kind: "block", code: "await new Promise((r) => setTimeout(r, 400)); return 'beside';" });
    // An answer of exactly the key cap: its value's keys, and ok, console and value; the result message adds three.
    const keys = FLOWS_MAX_VALUE_KEYS - 3;
    const { result } = await run({
      code: `Object.fromEntries(Array.from({ length: ${keys} }, (_, i) => ["k" + i, 0]))`,
    });
    assert.deepEqual(
      [result.ok, result.error.message],
      [false, `the answer holds more than the cap of ${FLOWS_MAX_VALUE_KEYS} object keys`],
    );
    assert.deepEqual((await beside).result.value, "beside");
    const agents = gateway
      .summary()
      .find((p) => p.name === POOL)!
      .agents.map((a) => a.id);
    assert.deepEqual(agents, [agentId], "the same connection: never dropped");
  });

  it("a thrown error's fields are cut at the cap", async () => {
    const { result } = await run({ kind: "block", code: "throw new Error('m'.repeat(6_000_000));" });
    assert.equal(result.ok, false);
    assert.equal(result.error.message.length, FLOWS_MAX_ERROR_CHARS - 50 + " [cut at the cap]".length);
    assert.match(result.error.message, /^m+ \[cut at the cap\]$/);
  });

  it("times a run out, kills its runtime, and answers the next run", async () => {
    const { result } = await run({ kind: "block", code: "while (true) {}", timeoutMs: 300 });
    assert.deepEqual([result.ok, result.error.message], [false, "the run timed out after 300 ms"]);
    assert.equal((await run({ code: "1 + 1" })).result.value, 2);
  });

  it("a runtime waiting for its job ends by itself once its agent is gone (its channel closed)", async () => {
    // What the parent-death signal misses (an agent that died while the runtime was starting), the closed channel catches.
    const child = spawn(process.execPath, [unbundledRunner().path], { stdio: ["pipe", "ignore", "inherit", "pipe"] });
    const [ready] = await once(child.stdio[3] as Readable, "data");
    assert.equal(String(ready).slice(4), '{"ready":true}');
    child.stdin?.end();
    assert.deepEqual(await once(child, "exit"), [0, null]);
  });

  /** `command` as `uid` (root only), as a runtime's leftover would be. */
  const asUid = (uid: number, command: string[]) =>
    spawn("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--", ...command], {
      stdio: ["ignore", "pipe", "inherit"],
    });
  /** A launcher of "user" isolation over `uids`, as an agent makes one at start. */
  const userLauncher = (uids: string, scratchRoot: string) =>
    processLauncher({
      isolation: "user",
      privileges: readPrivileges(),
      uids: uidPool(uids),
      runner: [unbundledRunner().path],
      readable: unbundledRunner().readable,
      memoryMb: 64,
      diskMb: 16,
      openFiles: 64,
      scratchRoot,
    });

  it("a starting launcher ends what a dead agent left of its runtimes, an orphan's own children too, and only that (as root)", async function () {
    if (process.getuid?.() !== 0) this.skip();
    // An orphan of the range (its parent exits: re-parented to pid 1) with a child of its own (whose parent lives: the
    // orphan), and a process of another uid of the range whose parent lives.
    const left = asUid(1900000950, ["/bin/sh", "-c", 'sh -c "sleep 60 & echo child \\$!; wait" & echo orphan $!']);
    let said = "";
    left.stdout!.on("data", (chunk) => (said += chunk));
    const pidOf = (name: string) => Number(new RegExp(`${name} (\\d+)`).exec(said)?.[1]);
    const living = asUid(1900000951, ["sleep", "60"]);
    const alive = (pid: number) => {
      try {
        return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
      } catch {
        return false;
      }
    };
    await eventually(() => [pidOf("orphan"), pidOf("child"), living.pid!].every(alive), 5000, "all three to start");
    await eventually(
      () => /^PPid:\s+1$/m.test(readFileSync(`/proc/${pidOf("orphan")}/status`, "utf8")),
      5000,
      "an orphan",
    );
    userLauncher("1900000950-1900000959", scratchDir("orphans-"));
    try {
      await eventually(() => !alive(pidOf("orphan")), 5000, "the orphan to be ended");
      await eventually(() => !alive(pidOf("child")), 5000, "the orphan's child to be ended");
      assert.ok(alive(living.pid!), "a process of the range whose parent lives is left alone");
    } finally {
      living.kill("SIGKILL");
      for (const pid of [pidOf("orphan"), pidOf("child")]) if (alive(pid)) process.kill(pid, "SIGKILL");
    }
  });

  it('"user" isolation: once a runtime is gone, every process of its uid goes before the uid is given again (as root)', async function () {
    if (process.getuid?.() !== 0) this.skip();
    // A range of one uid: the leftover (what an escape from the permission model could leave) shares the runtime's uid.
    const leftover = asUid(1900000970, ["sleep", "60"]);
    const other = asUid(1900000971, ["sleep", "60"]);
    // Its runtimes make their scratch here: a directory they can reach (scratchDir's root is the tests' own).
    const scratchRoot = mkdtempSync(path.join(os.tmpdir(), "agentpools-release-"));
    try {
      await eventually(() => [leftover, other].every((p) => existsSync(`/proc/${p.pid}`)));
      const runtime = userLauncher("1900000970", scratchRoot).start()!;
      await runtime.ready;
      assert.equal((await runtime.run({ kind: "expression", code: "process.getuid()" }, 5000)).value, 1900000970);
      runtime.kill();
      await runtime.exited;
      assert.deepEqual(await once(leftover, "exit"), [null, "SIGKILL"]);
      assert.equal(other.exitCode, null, "another uid's process is left alone");
    } finally {
      leftover.kill("SIGKILL");
      other.kill("SIGKILL");
      rmSync(scratchRoot, { recursive: true, force: true });
    }
  });

  it("runs up to the pool size at once and queues the rest", async () => {
    const code = "const start = Date.now(); await new Promise((r) => setTimeout(r, 250)); return [start, Date.now()];";
    const results = await Promise.all(Array.from({ length: 5 }, () => run({ kind: "block", code })));
    const spans = results.map((r) => r.result.value as [number, number]);
    const overlapAt = (t: number) => spans.filter(([s, e]) => s <= t && t < e).length;
    const most = Math.max(...spans.map(([s]) => overlapAt(s)));
    assert.equal(most, 2, `at most the pool size (2) at once, saw ${most}`);
    assert.ok(results.every((r) => r.result.ok));
  });

  it("a client that hangs up cancels its run: one waiting never runs, one running has its runtime ended", async () => {
    // What runs reach: a loopback server each run dials and names itself to.
    const reached: string[] = [];
    const ended: string[] = [];
    const recorder = net.createServer((socket) => {
      let name = "";
      // Each named run is let go at once: "next" waits for that to answer (so its name has come).
      socket.on(
        "data",
        (chunk) => void (name || reached.push((name = String(chunk))), name === "next" && socket.end()),
      );
      socket.on("error", () => undefined).on("close", () => ended.push(name));
    });
    recorder.listen(0, "127.0.0.1");
    await once(recorder, "listening");
    const port = (recorder.address() as net.AddressInfo).port;
    const dial = (name: string, then: string) =>
      `const net = process.getBuiltinModule("node:net");
       const socket = net.connect(${port}, "127.0.0.1", () => socket.write(${JSON.stringify(name)}));
       ${then}`;
    const hold = "await new Promise(() => undefined);";
    const clients = new Map<string, AbortController>();
    const post = (name: string, code: string) => {
      const client = new AbortController();
      clients.set(name, client);
      return fetch(`${url}/_agentpools/api/flows/${POOL}/run`, {
        method: "POST",
        headers: service.headers,
        body: JSON.stringify({ kind: "block", code, timeoutMs: 30_000 }),
        signal: client.signal,
      }).then(
        (r) => r.json() as Promise<any>,
        (error: Error) => error.name,
      );
    };
    const busy = () => gateway.summary().find((p) => p.name === POOL)!.activeRequests;
    const queued = () => gateway.summary().find((p) => p.name === POOL)!.waiting;
    try {
      // Both runtimes (pool size 2) held, a third run waits at the gateway.
      const held = [post("held-1", dial("held-1", hold)), post("held-2", dial("held-2", hold))];
      await eventually(() => reached.length === 2);
      const waiting = post("waiting", dial("waiting", "return 'ran';"));
      await eventually(() => queued() === 1);
      clients.get("waiting")!.abort();
      assert.equal(await waiting, "AbortError");
      await eventually(() => queued() === 0, 5000, "the waiting run left the queue");
      assert.equal(busy(), 2);
      clients.get("held-1")!.abort();
      await eventually(() => ended.includes("held-1"), 5000, "the running run's runtime ended (its socket closed)");
      await eventually(() => busy() === 1);
      // The freed runtime takes the next run, not the cancelled one.
      const next = await post(
        "next",
        dial("next", "await new Promise((r) => socket.once('close', r)); return 'next';"),
      );
      assert.deepEqual([next.ok, next.value], [true, "next"]);
      assert.deepEqual(reached.sort(), ["held-1", "held-2", "next"], "the cancelled waiting run never ran");
      const cancelled = agentLog.lines.filter((l) => l.msg === "run finished" && l.error === FLOWS_CANCELLED);
      assert.equal(
        cancelled.length,
        1,
        "the running one answered as cancelled; the waiting one never reached the agent",
      );
      clients.get("held-2")!.abort();
      await Promise.all(held);
      await eventually(() => busy() === 0);
    } finally {
      recorder.close();
    }
  });

  it("the executor: a cancelled job still waiting for a runtime never starts; a running one's runtime is ended", async () => {
    // What is under test is the executor's queue, not isolation: runtimes as our own user.
    const launcher = processLauncher({
      isolation: "none",
      privileges: readPrivileges(),
      uids: uidPool("1900000980-1900000989"),
      runner: [unbundledRunner().path],
      readable: unbundledRunner().readable,
      memoryMb: 64,
      diskMb: 16,
      openFiles: 64,
      scratchRoot: scratchDir("cancel-"),
    });
    const runs = createExecutor({ poolSize: 1, launcher, log: capturingLogger("executor").log });
    try {
      const holding: Cancellation = {};
      const queued: Cancellation = {};
      const first = runs.run({ kind: "block", code: "await new Promise(() => undefined);" }, 30_000, holding);
      const second = runs.run({ kind: "expression", code: "'ran'" }, 30_000, queued);
      cancelRun(queued);
      const dropped = await second;
      assert.deepEqual(
        [dropped.ok, dropped.error?.name, dropped.error?.message],
        [false, "AbortError", FLOWS_CANCELLED],
      );
      cancelRun(holding);
      const ended = await first;
      assert.deepEqual([ended.ok, ended.error?.name, ended.error?.message], [false, "AbortError", FLOWS_CANCELLED]);
      // The pool's one runtime is free again: the next job runs.
      const next = await runs.run({ kind: "expression", code: "'next'" }, 30_000);
      assert.equal(next.value, "next", JSON.stringify(next));
    } finally {
      runs.close();
    }
  });

  it("no agent connected: a clear error, not a hang", async () => {
    const { status, result } = await run({ code: "1" }, "01EMPTY");
    assert.equal(status, 503);
    assert.match(result.error, /no agent of pool 01EMPTY is connected/);
    assert.equal((await run({ code: "1" }, "01NOSUCH")).status, 404);
    assert.equal((await run({ code: 5 })).status, 400);
  });

  it("a wrong pool ID and token pair is refused", async () => {
    const wrong = await flowsAgentRole(unbundledRunner()).start(settings({ poolToken: "not-the-token-of-this-pool" }), {
      log: capturingLogger("flows-agent").log,
    });
    await assert.rejects(wrong.stopped, /401/);
    const otherPool = await flowsAgentRole(unbundledRunner()).start(settings({ poolId: "01EMPTY" }), {
      log: capturingLogger("flows-agent").log,
    });
    await assert.rejects(otherPool.stopped, /401/);
    await wrong.drain(Date.now() + 1000);
    await otherPool.drain(Date.now() + 1000);
    assert.equal(gateway.summary().find((p) => p.name === "01EMPTY")!.connections, 0);
  });

  it("a second agent given the first's mounts directory stops with an error naming the setting; the first runs on", async () => {
    const shared = path.join(scratchRoot, "agent-0");
    // A run of the first agent in flight, its scratch in the shared directory.
    const holder = run({ kind: "block", code: "await new Promise((r) => setTimeout(r, 500)); return 'held';" });
    await eventually(() => gateway.summary().find((p) => p.name === POOL)!.activeRequests === 1);
    const second = settings({ mountsDir: shared });
    await assert.rejects(
      async () => flowsAgentRole(unbundledRunner()).start(second, { log: capturingLogger("second").log }),
      (error: Error) =>
        error.message ===
        `FLOWS_MOUNTS_DIR=${shared} is another Flows agent's (pid ${process.pid}): each needs its own`,
    );
    assert.deepEqual([(await holder).result.value, (await run({ code: "1 + 1" })).result.value], ["held", 2]);
  });

  for (const executor of ["process", "docker"] as const) {
    it(`${executor} executor: a FLOWS_RUNTIME_UIDS range under twice the pool size is refused at start, saying what it needs`, async () => {
      const { first } = runtimeUidRange(15);
      const tooFew = `${first}-${first + 2}`;
      await assert.rejects(
        async () =>
          flowsAgentRole(unbundledRunner(), { docker: "/nonexistent/docker" }).start(
            settings({ executor, runtimeUids: tooFew, runtimePoolSize: 2 }),
            { log: capturingLogger("small").log },
          ),
        (error: Error) =>
          error.message === `FLOWS_RUNTIME_UIDS=${tooFew} needs 4 uids, not the agent's ${process.getuid?.()}`,
      );
    });
  }

  it("a FLOWS_RUNTIME_UIDS range holding a user's uid (nobody, from this host's /etc/passwd) is refused at start, naming it", async () => {
    await assert.rejects(
      async () =>
        flowsAgentRole(unbundledRunner()).start(
          // Past the schema (which refuses 65534): a range given in the environment, checked by the agent itself.
          { ...settings({}), runtimeUids: "65530-65545", runtimePoolSize: 2 },
          { log: capturingLogger("nobody").log },
        ),
      (error: Error) =>
        /^FLOWS_RUNTIME_UIDS=65530-65545 holds uid 65534 \(user nobody\): a runtime/.test(error.message),
    );
  });

  it("an agent takes over a mounts directory whose claim is a dead agent's", async () => {
    const dir = path.join(scratchRoot, "taken-over");
    mkdirSync(dir);
    // A pid that is no process (above the kernel's pid_max of 2^22).
    writeFileSync(path.join(dir, ".agent"), "99999999 12345");
    const second = await flowsAgentRole(unbundledRunner()).start(settings({ mountsDir: dir }), {
      log: capturingLogger("second").log,
    });
    try {
      await second.ready;
      assert.match(readFileSync(path.join(dir, ".agent"), "utf8"), new RegExp(`^${process.pid} \\d+ [\\w-]+$`));
    } finally {
      await second.drain(Date.now() + 2000);
    }
  });

  it("drain: a run in flight finishes and answers, then the agent leaves and new runs find none", async () => {
    const draining = await flowsAgentRole(unbundledRunner()).start(
      settings({ poolId: "01EMPTY", poolToken: emptyToken }),
      { log: capturingLogger("flows-agent").log },
    );
    await draining.ready;
    await eventually(() => gateway.summary().find((p) => p.name === "01EMPTY")!.connections === 1);
    const inFlight = run(
      { kind: "block", code: "await new Promise((r) => setTimeout(r, 400)); return 'finished';" },
      "01EMPTY",
    );
    await eventually(() => gateway.summary().find((p) => p.name === "01EMPTY")!.activeRequests === 1);
    // The deadline is for a hang: the drain ends as soon as the run has answered (under load, its runtime's cold start
    // and 400 ms took past 5 s once: the agent left mid-run, 502).
    await draining.drain(Date.now() + 15_000);
    const answered = await inFlight;
    assert.deepEqual(answered.result.value, "finished", JSON.stringify(answered));
    assert.equal((await run({ code: "1" }, "01EMPTY")).status, 503);
  });

  describe("Docker executor (no Docker engine runs on this machine)", () => {
    const base = flowsAgentSettings.parse({
      poolId: "p",
      poolToken: "t",
      gatewayEndpoint: "https://g",
      backendEndpoint: "https://b",
      executor: "docker",
      extraDockerParams: ["--dns=10.0.0.2"],
    });

    it("starts sibling containers under gVisor with nothing to escalate with, nothing of the host's disk, options ending before the image", () => {
      const args = dockerRunArgs(base, "/opt/agentpools/flows-agent.js", "agentpools-runtime-x", 1900000007);
      for (const expected of [
        "--runtime=runsc",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--user=1900000007:1900000007",
        "--tmpfs=/work:rw,noexec,nosuid,nodev,size=64m,mode=1777",
        "--memory=352m",
        "--pids-limit=64",
        "--ulimit=nofile=64",
        "--network=bridge",
        "--dns=10.0.0.2",
        "--volume=/opt/agentpools/flows-agent.js:/agentpools/runtime.js:ro",
      ]) {
        assert.ok(args.includes(expected), `missing ${expected}`);
      }
      assert.ok(
        !args.some(
          (a) =>
            a === "--privileged" ||
            a.startsWith("--cap-add") ||
            a === "--network=host" ||
            a.startsWith("--volume=/var"),
        ),
      );
      assert.deepEqual(args.slice(args.indexOf("--"), args.indexOf("--") + 3), ["--", "node:24-alpine", "node"]);
      assert.deepEqual(args.slice(-3), ["/agentpools/runtime.js", "--flows-runner", "--channel-stdout"]);
      for (const flag of [
        "--permission",
        "--disable-sigusr1",
        "--no-experimental-sqlite",
        "--allow-fs-write=/work",
        "--max-old-space-size=256",
      ])
        assert.ok(args.includes(flag), flag);
      assert.ok(!dockerRunArgs({ ...base, gvisor: false }, "/r", "n", 1900000007).includes("--runtime=runsc"));
      assert.throws(() => flowsAgentSettings.parse({ ...base, runtimeNetwork: "host" }), /other than/);
    });

    it("with no engine, runs fail with the engine's error and the executor stays usable", async function () {
      const dockerClient = spawnSync("docker", ["--version"]);
      if (dockerClient.error) this.skip();
      const log = capturingLogger("flows-agent");
      const executor = createExecutor({
        poolSize: 1,
        launcher: dockerLauncher(base, "/nonexistent/runtime.js", uidPool("1900000000-1900000003")),
        log: log.log,
      });
      try {
        const outcome = await executor.run({ kind: "expression", code: "1" }, 5000);
        assert.equal(outcome.ok, false);
        assert.match(outcome.error?.message ?? "", /docker daemon|Cannot connect|exited/i);
      } finally {
        executor.close();
      }
    });
  });
});
