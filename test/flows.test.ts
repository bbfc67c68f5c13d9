import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { flowsAgentSettings, type FlowsAgentSettings } from "../agent/config/flows-agent";
import { flowsAgentRole, unbundledRunner } from "../agent/flows-agent/agent";
import { dockerLauncher, dockerRunArgs, Executor } from "../agent/flows-agent/executor";
import type { RunningAgent } from "../agent/runtime/runtime";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";

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

  const settings = (overrides: Partial<FlowsAgentSettings> = {}) =>
    flowsAgentSettings.parse({ poolId: POOL, poolToken: token, gatewayEndpoint: url, backendEndpoint: "http://127.0.0.1:9", executor: "process", mountsDir: scratchRoot, runtimePoolSize: 2, runtimeMemoryMb: 128, defaultRunTimeout: "5s", ...overrides });

  async function run(body: Record<string, unknown>, pool = POOL): Promise<{ status: number; result: any }> {
    const response = await fetch(`${url}/_agentpools/api/flows/${pool}/run`, { method: "POST", headers: service.headers, body: JSON.stringify(body) });
    return { status: response.status, result: await response.json() };
  }

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(POOL, "flows", url);
    token = created.token;
    const empty = createPool("01EMPTY", "flows", url);
    emptyToken = empty.token;
    gateway = new Gateway({ pools: [created.pool, empty.pool], keys: [service.definition], port, log: capturingLogger("gateway").log });
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
    const { status, result } = await run({ code: "({ sum: inputs.a + inputs.b, list: [1, 'two', null] })", inputs: { a: 40, b: 2 } });
    assert.equal(status, 200);
    assert.deepEqual([result.ok, result.value], [true, { sum: 42, list: [1, "two", null] }]);
  });

  it("runs a block's code, awaiting what it awaits, and captures console output in order", async () => {
    const { result } = await run({ kind: "block", code: "console.log('start', inputs.n); console.error('careful'); process.stdout.write('raw line\\n'); await new Promise((r) => setTimeout(r, 20)); return inputs.n * 2;", inputs: { n: 21 } });
    assert.equal(result.value, 42);
    assert.deepEqual(result.console, ["start 21", "error: careful", "raw line"]);
  });

  it("reports a thrown error with its name, message and stack", async () => {
    const { result } = await run({ kind: "block", code: "function check() { throw new RangeError('value out of range'); }\ncheck();" });
    assert.equal(result.ok, false);
    assert.equal(result.error.name, "RangeError");
    assert.equal(result.error.message, "value out of range");
    assert.match(result.error.stack, /RangeError: value out of range\n\s+at check/);
  });

  it("times a run out, kills its runtime, and answers the next run", async () => {
    const { result } = await run({ kind: "block", code: "while (true) {}", timeoutMs: 300 });
    assert.deepEqual([result.ok, result.error.message], [false, "the run timed out after 300 ms"]);
    assert.equal((await run({ code: "1 + 1" })).result.value, 2);
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

  it("no agent connected: a clear error, not a hang", async () => {
    const { status, result } = await run({ code: "1" }, "01EMPTY");
    assert.equal(status, 503);
    assert.match(result.error, /no agent of pool 01EMPTY is connected/);
    assert.equal((await run({ code: "1" }, "01NOSUCH")).status, 404);
    assert.equal((await run({ code: 5 })).status, 400);
  });

  it("a wrong pool ID and token pair is refused", async () => {
    const wrong = await flowsAgentRole(unbundledRunner()).start(settings({ poolToken: "not-the-token-of-this-pool" }), { log: capturingLogger("flows-agent").log });
    await assert.rejects(wrong.stopped, /401/);
    const otherPool = await flowsAgentRole(unbundledRunner()).start(settings({ poolId: "01EMPTY" }), { log: capturingLogger("flows-agent").log });
    await assert.rejects(otherPool.stopped, /401/);
    await wrong.drain(Date.now() + 1000);
    await otherPool.drain(Date.now() + 1000);
    assert.equal(gateway.summary().find((p) => p.name === "01EMPTY")!.connections, 0);
  });

  it("drain: a run in flight finishes and answers, then the agent leaves and new runs find none", async () => {
    const draining = await flowsAgentRole(unbundledRunner()).start(settings({ poolId: "01EMPTY", poolToken: emptyToken }), { log: capturingLogger("flows-agent").log });
    await draining.ready;
    await eventually(() => gateway.summary().find((p) => p.name === "01EMPTY")!.connections === 1);
    const inFlight = run({ kind: "block", code: "await new Promise((r) => setTimeout(r, 400)); return 'finished';" }, "01EMPTY");
    await eventually(() => gateway.summary().find((p) => p.name === "01EMPTY")!.activeRequests === 1);
    await draining.drain(Date.now() + 5000);
    const answered = await inFlight;
    assert.deepEqual(answered.result.value, "finished", JSON.stringify(answered));
    assert.equal((await run({ code: "1" }, "01EMPTY")).status, 503);
  });

  describe("hostile code is contained, and the agent answers the next run", () => {
    // [what it tries, code (a block), what must hold of the result]
    const corpus: [string, string, (result: any) => boolean][] = [
      ["read the environment", "return process.env;", (r) => r.ok && Object.keys(r.value).length === 0],
      ["find the token in the environment", "return JSON.stringify(process.env).includes('FLOWS');", (r) => r.ok && r.value === false],
      ["read the agent's environment through /proc", "return (await import('node:fs')).readFileSync(`/proc/${process.ppid}/environ`, 'utf8');", (r) => !r.ok && r.error.code === "ERR_ACCESS_DENIED"],
      ["read its own /proc environ", "return (await import('node:fs')).readFileSync('/proc/self/environ', 'utf8');", (r) => !r.ok],
      ["read /etc/passwd", "return (await import('node:fs')).readFileSync('/etc/passwd', 'utf8');", (r) => !r.ok && r.error.code === "ERR_ACCESS_DENIED"],
      ["write outside the scratch directory", "(await import('node:fs')).writeFileSync('/tmp/agentpools-escaped', 'x'); return 'written';", (r) => !r.ok && !existsSync("/tmp/agentpools-escaped")],
      ["write beside the scratch directory", "(await import('node:fs')).writeFileSync('../escaped', 'x'); return 'written';", (r) => !r.ok],
      ["spawn a shell", "return (await import('node:child_process')).execSync('id').toString();", (r) => !r.ok && r.error.code === "ERR_ACCESS_DENIED"],
      ["fork many processes", "const cp = await import('node:child_process'); for (let i = 0; i < 50; i++) cp.fork('x'); return 'forked';", (r) => !r.ok],
      ["start worker threads", "const { Worker } = await import('node:worker_threads'); new Worker('for(;;){}', { eval: true }); return 'worker';", (r) => !r.ok],
      ["load a native addon", "process.dlopen({ exports: {} }, '/usr/lib/x86_64-linux-gnu/libc.so.6'); return 'loaded';", (r) => !r.ok],
      ["reach internal bindings", "return typeof process.binding('spawn_sync').spawn;", (r) => !r.ok],
      ["require through createRequire", "const { createRequire } = await import('node:module'); return createRequire(import.meta?.url ?? '/x.js')('node:child_process').execSync('id').toString();", (r) => !r.ok],
      ["kill the agent", "process.kill(process.ppid, 'SIGKILL'); return 'killed';", (r) => !r.ok && /not available/.test(r.error.message)],
      ["kill the agent through the raw binding", "process._kill(process.ppid, 9); return 'killed';", (r) => !r.ok],
      ["starve the agent's CPU", "(await import('node:os')).setPriority(process.ppid, 19); return 'reniced';", (r) => !r.ok],
      ["open the inspector", "(await import('node:inspector')).open(0); return 'open';", (r) => !r.ok],
      ["loop forever", "for (;;) {}", (r) => !r.ok && /timed out/.test(r.error.message)],
      ["spin the microtask queue forever", "for (;;) await null;", (r) => !r.ok && /timed out/.test(r.error.message)],
      ["exhaust the heap", "const hoard = []; for (;;) hoard.push(new Array(1e6).fill(hoard.length));", (r) => !r.ok && /memory limit/.test(r.error.message)],
      ["exhaust memory with buffers", "const hoard = []; for (;;) hoard.push(Buffer.alloc(32 * 1024 * 1024, 1));", (r) => !r.ok && /memory limit|exited/.test(r.error.message)],
      ["exit without answering", "process.exit(3);", (r) => !r.ok && /exited/.test(r.error.message)],
      ["crash with an uncaught exception later", "setTimeout(() => { throw new Error('late'); }, 0); await new Promise((r) => setTimeout(r, 50));", (r) => !r.ok],
      ["flood the console", "for (let i = 0; i < 100000; i++) console.log(i); return 'done';", (r) => r.ok && r.console.length === 1000],
      ["return something that is not JSON", "const a = {}; a.self = a; return a;", (r) => !r.ok && r.error.name === "TypeError"],
      ["throw something that is not an Error", "throw 42;", (r) => !r.ok && /non-Error/.test(r.error.message)],
      ["pollute Object.prototype for the next run", "Object.prototype.polluted = 'yes'; globalThis.leftover = 'secret'; return 1;", (r) => r.ok],
      ["leave a file for the next run", "(await import('node:fs')).writeFileSync('left-behind.txt', 'secret'); return 1;", (r) => r.ok],
    ];

    it(`has at least 25 snippets (${corpus.length})`, () => assert.ok(corpus.length >= 25));

    for (const [what, code, contained] of corpus) {
      it(what, async () => {
        const { status, result } = await run({ kind: "block", code, timeoutMs: 1500 });
        assert.equal(status, 200);
        assert.ok(contained(result), `not contained: ${JSON.stringify(result).slice(0, 400)}`);
        assert.ok(!JSON.stringify(result).includes(token), "the pool token reached user code");
        const next = await run({ code: "1 + 1" });
        assert.deepEqual([next.status, next.result.value], [200, 2], "the agent answers the next run");
      });
    }

    it("no run sees what an earlier run left", async () => {
      const { result } = await run({ kind: "block", code: "let file = 'absent'; try { (await import('node:fs')).readFileSync('left-behind.txt'); file = 'present'; } catch {} return [({}).polluted ?? null, typeof globalThis.leftover, file];" });
      assert.deepEqual(result.value, [null, "undefined", "absent"]);
    });

    it("the scratch directories of finished runs are removed", async () => {
      await eventually(() => readdirSync(scratchRoot).length <= 2 + 1, 3000, "scratch directories cleaned");
    });
  });

  describe("Docker executor (no Docker engine runs on this machine)", () => {
    const base = flowsAgentSettings.parse({ poolId: "p", poolToken: "t", gatewayEndpoint: "https://g", backendEndpoint: "https://b", executor: "docker", extraDockerParams: ["--dns=10.0.0.2"] });

    it("starts sibling containers under gVisor with nothing to escalate with", () => {
      const args = dockerRunArgs(base, "/var/lib/agentpools/flows-mounts/run-1", "/opt/agentpools/flows-agent.js", "agentpools-runtime-x", "991:991");
      for (const expected of ["--runtime=runsc", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only", "--user=991:991", "--volume=/var/lib/agentpools/flows-mounts/run-1:/work:rw", "--memory=256m", "--pids-limit=64", "--network=bridge", "--dns=10.0.0.2", "--volume=/opt/agentpools/flows-agent.js:/agentpools/runtime.js:ro"]) {
        assert.ok(args.includes(expected), `missing ${expected}`);
      }
      assert.ok(!args.some((a) => a === "--privileged" || a.startsWith("--cap-add") || a === "--network=host"));
      assert.deepEqual(args.slice(args.indexOf("node:24-alpine")), ["node:24-alpine", "node", "--max-old-space-size=256", "/agentpools/runtime.js", "--flows-runner"]);
      assert.ok(!dockerRunArgs({ ...base, gvisor: false }, "/s", "/r", "n", "991:991").includes("--runtime=runsc"));
      assert.throws(() => flowsAgentSettings.parse({ ...base, runtimeNetwork: "host" }), /other than/);
    });

    it("with no engine, runs fail with the engine's error and the executor stays usable", async function () {
      const dockerClient = spawnSync("docker", ["--version"]);
      if (dockerClient.error) this.skip();
      const log = capturingLogger("flows-agent");
      const executor = new Executor({ poolSize: 1, memoryMb: 64, scratchRoot: scratchDir("docker-"), launcher: dockerLauncher(base, "/nonexistent/runtime.js"), log: log.log });
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
