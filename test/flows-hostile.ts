// Flows runs are someone else's code. Each case below is what a run would try to reach the
// agent (its token, its process, its parallelism), another run, or the host, or to break the
// channel and the gateway's connection; each asserts what the run got (or what reached the
// socket, file or agent it aimed at), and is followed by a normal run. What the flows-hostile-*
// test files share: the corpus, a gateway with its targets, one executor's suite. One file per
// executor so that mocha's workers run them side by side (each is some hundred runtimes).
import assert from "node:assert/strict";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { flowsAgentSettings, type FlowsAgentSettings } from "../agent/config/flows-agent";
import { FLOWS_RUNNER_FILE } from "../agent/config/variants";
import { flowsAgentRole } from "../agent/flows-agent/agent";
import { CLAIM } from "../agent/flows-agent/executor";
import type { RunningAgent } from "../agent/runtime/runtime";
import { packageRoot } from "../components/shared/bundles";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { writeFlowsDockerStandIn } from "../devkit/docker-stand-in";
import { capturingLogger, eventually, freePort, runtimeUidRange, scratchDir, serviceKey } from "../devkit/helpers";
import {
  FLOWS_MAX_CONSOLE_LINES,
  FLOWS_MAX_ERROR_CHARS,
  FLOWS_MAX_RESULT_BYTES,
  FLOWS_MAX_VALUE_BYTES,
} from "../protocol/flows";

export const POOL = "01HOSTILE";
/** Runtime uids of one test file (`slot`, one per flows-hostile file, 0 to 3): a range of its own. */
export const uidRange = (slot: number) => runtimeUidRange(slot);
export const BUNDLE = () => path.join(packageRoot(), "build/bundles/flows-agent.js");
/**
 * The runtimes' own bundle (agent/roles/flows-runner.ts), as Kubernetes and Docker hosts start them: the corpus runs
 * against the runner that ships, and each of some hundred runtimes starts on 2 KB of code, not the agent's 30 KB.
 */
const RUNNER = () => path.join(packageRoot(), "build/bundles", FLOWS_RUNNER_FILE);

/** Inputs every hostile run gets: what an attacker would know or guess of the host. */
export interface Targets {
  agentPid: number;
  unixSocket: string;
  abstractName: string;
  hostFile: string;
}

export type Mode = "namespaces" | "user" | "docker";
/** [what it tries, a block's code, what must hold of the result, the modes it applies to (all when left out), its timeout] */
type Case = [string, string, (result: any, targets: Targets) => boolean, Mode[]?, number?];

/** Writes bytes to a file descriptor to the last one, as a determined writer would (the pipes do not block). */
const writeAll = `const writeAll = async (fd, bytes) => { const fs = await import('node:fs');
  for (let at = 0; at < bytes.length;) { try { at += fs.writeSync(fd, bytes, at); } catch (e) { if (e.code !== 'EAGAIN') throw e; await new Promise((r) => setTimeout(r, 1)); } } };`;
/** Writes raw bytes to the runtime's channel (fd 3; stdout in a container) and waits to be ended. */
const rawFrame = (body: string) => `${writeAll} const fd = process.argv.includes('--channel-stdout') ? 1 : 3;
  await writeAll(fd, ${body}); await new Promise((r) => setTimeout(r, 1500)); return 'not ended';`;
const frame = (json: string) =>
  rawFrame(
    `(() => { const b = Buffer.from(${json}); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); })()`,
  );

const denied = (r: any) => r.ok === false;
const brokeChannel = (r: any) => r.ok === false && /broke its channel|answer was refused/.test(r.error.message);

const CORPUS: Case[] = [
  // The agent: its token, its process, its debugger.
  [
    "read the agent's environment (its pool token) through /proc",
    "return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/environ`, 'utf8');",
    denied,
  ],
  [
    "read the agent's memory through /proc",
    "return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/mem`).length;",
    denied,
  ],
  ["kill the agent", "process.kill(inputs.agentPid, 'SIGKILL'); return 'killed';", denied],
  ["kill the agent through the raw binding", "process._kill(inputs.agentPid, 9); return 'killed';", denied],
  [
    "open the agent's inspector (SIGUSR1 by _debugProcess)",
    "process._debugProcess(inputs.agentPid); return 'sent';",
    denied,
  ],
  [
    "connect to an inspector on 127.0.0.1:9229",
    "return await (await fetch('http://127.0.0.1:9229/json/list')).text();",
    denied,
  ],
  ["starve the agent's CPU", "(await import('node:os')).setPriority(inputs.agentPid, 19); return 'reniced';", denied],
  ["take the agent's uid back", "process.setuid(process.ppid === 0 ? 0 : 0); return process.getuid();", denied],
  // bubblewrap sets these two: the loader's path and the working directory, nothing of the agent's.
  [
    "read the environment",
    "return Object.keys(process.env).filter((k) => !['LD_LIBRARY_PATH', 'PWD'].includes(k));",
    (r) => r.ok && r.value.length === 0,
  ],
  // Files the permission model does not see: node:sqlite, Unix sockets.
  [
    "create a database beside the agent's files with node:sqlite",
    "const { DatabaseSync } = process.getBuiltinModule('node:sqlite'); new DatabaseSync(inputs.hostFile + '.db').exec('create table t(x)'); return 'created';",
    (r, t) => denied(r) && !existsSync(t.hostFile + ".db"),
  ],
  [
    "VACUUM INTO a host path with node:sqlite",
    "const { DatabaseSync } = await import('node:sqlite'); new DatabaseSync(':memory:').exec(`VACUUM INTO '${inputs.hostFile}.copy'`); return 'copied';",
    (r, t) => denied(r) && !existsSync(t.hostFile + ".copy"),
  ],
  // A container has its own mount namespace: the stand-in of the Docker executor does not, so these are not its to test.
  [
    "connect to a Unix socket on the host (a Docker socket)",
    "return await new Promise((resolve, reject) => (process.getBuiltinModule('node:net')).connect(inputs.unixSocket).on('connect', () => resolve('connected')).on('error', reject));",
    denied,
    ["namespaces", "user"],
  ],
  [
    "listen on a Unix socket on the host",
    "return await new Promise((resolve, reject) => (process.getBuiltinModule('node:net')).createServer().listen(inputs.hostFile + '.sock').on('listening', () => resolve('listening')).on('error', reject));",
    (r, t) => denied(r) && !existsSync(t.hostFile + ".sock"),
    ["namespaces", "user"],
  ],
  [
    "connect to an abstract Unix socket",
    "return await new Promise((resolve, reject) => (process.getBuiltinModule('node:net')).connect('\\0' + inputs.abstractName).on('connect', () => resolve('connected')).on('error', reject));",
    denied,
    ["namespaces"],
  ],
  ["read a host file", "return (await import('node:fs')).readFileSync(inputs.hostFile, 'utf8');", denied],
  ["read /etc/passwd", "return (await import('node:fs')).readFileSync('/etc/passwd', 'utf8');", denied],
  [
    "write outside the scratch space",
    "(await import('node:fs')).writeFileSync(inputs.hostFile + '.written', 'x'); return 'written';",
    (r, t) => denied(r) && !existsSync(t.hostFile + ".written"),
  ],
  [
    "fill the disk",
    "const fs = await import('node:fs'); const block = Buffer.alloc(1 << 20); for (let i = 0; i < 400; i++) fs.appendFileSync('fill', block); return 'filled 400 MB';",
    // Namespaces: its tmpfs is full; user: no file of its own may pass its disk (RLIMIT_FSIZE), or the watchdog ends it.
    (r) => denied(r) && /ENOSPC|EFBIG|memory|disk limit/.test(r.error.message),
    ["namespaces", "user"],
  ],
  [
    // Files of 1 MB each, none over the per-file cap: the watchdog measures the scratch and ends the run near its cap
    // (32 MB): what it measured last is what the run held on disk (its sampling lets it pass by what it writes in 20 ms).
    "fill the disk with many files",
    "const fs = await import('node:fs'); const block = Buffer.alloc(1 << 20); for (let i = 0; i < 1000; i++) fs.writeFileSync(`f${i}`, block); return 'filled 1000 MB';",
    // Ended before it wrote it all, however late a loaded machine runs the watchdog (some 45 MB of 32 here, alone).
    (r) =>
      (denied(r) && /ENOSPC|memory/.test(r.error.message)) ||
      Number(/disk limit: (\d+) MB of 32 MB/.exec(r.error?.message)?.[1]) < 1000,
    ["namespaces", "user"],
    20_000,
  ],
  [
    "fill the disk with empty files (inodes)",
    "const fs = await import('node:fs'); for (let i = 0; i < 200000; i++) fs.writeFileSync(`e${i}`, ''); return 'made 200000 files';",
    (r) => denied(r) && /disk limit: \d+ MB of 32 MB/.test(r.error.message),
    ["user"],
    // Some 8,000 files before the cap (4 KB each at the least), which the permission model's checks make slow.
    20_000,
  ],
  // Processes.
  ["spawn a shell", "return (await import('node:child_process')).execSync('id').toString();", denied],
  [
    "fork many processes",
    "const cp = await import('node:child_process'); for (let i = 0; i < 50; i++) cp.fork('x'); return 'forked';",
    denied,
  ],
  [
    "start worker threads",
    "const { Worker } = await import('node:worker_threads'); new Worker('for(;;){}', { eval: true }); return 'worker';",
    denied,
  ],
  [
    "load a native addon",
    "process.dlopen({ exports: {} }, '/usr/lib/x86_64-linux-gnu/libc.so.6'); return 'loaded';",
    denied,
  ],
  ["reach internal bindings", "return typeof process.binding('spawn_sync').spawn;", denied],
  // The channel: nothing a runtime writes to it reaches past its own run.
  ["send on an IPC channel (process.send)", "process.send(null); return 'sent';", denied],
  [
    "flood the channel with empty frames (the agent stops reading at the first)",
    rawFrame("Buffer.alloc(4 * 60_000)"),
    (r) => brokeChannel(r) && /an empty message/.test(r.error.message),
  ],
  [
    "write garbage to the channel",
    rawFrame("Buffer.from('garbage, not a frame')"),
    (r) => denied(r) && /over the cap/.test(r.error.message),
  ],
  [
    "announce a 4 GB frame",
    rawFrame("Buffer.from([255, 255, 255, 255])"),
    (r) => denied(r) && new RegExp(`over the cap of ${FLOWS_MAX_RESULT_BYTES}`).test(r.error.message),
  ],
  [
    "answer in JSON 200,000 levels deep",
    frame("'{\"ok\":true,\"console\":[],\"value\":' + '['.repeat(200000) + ']'.repeat(200000) + '}'"),
    (r) => brokeChannel(r) && /nests deeper/.test(r.error.message),
  ],
  [
    "answer with forged type and id (draining, another run)",
    frame("JSON.stringify({ type: 'draining', id: 'another-run', ok: true, console: [] })"),
    (r) => brokeChannel(r) && /unknown fields/.test(r.error.message),
  ],
  [
    "answer with a hello raising the parallelism",
    frame("JSON.stringify({ type: 'hello', poolSize: 64, executor: 'x' })"),
    brokeChannel,
  ],
  [
    "answer with fields of the wrong types",
    frame("JSON.stringify({ ok: 'yes', console: 'x', error: 5 })"),
    brokeChannel,
  ],
  ["answer with what is not JSON", frame("'{not json'"), brokeChannel],
  [
    "answer twice",
    frame("JSON.stringify({ ok: true, console: [], value: 1 })") + " /* a second follows from the runner */",
    (r) => r.ok === true || brokeChannel(r),
  ],
  [
    "answer, in a frame of its own, a value past its cap (what the runner would have refused)",
    frame(`JSON.stringify({ ok: true, console: [], value: 'v'.repeat(${FLOWS_MAX_VALUE_BYTES}) })`),
    (r) => brokeChannel(r) && /over a cap: the result 4194304 bytes/.test(r.error.message),
  ],
  [
    "answer, in a frame of its own, ok with an error",
    frame("JSON.stringify({ ok: true, console: [], value: 1, error: { name: 'E', message: 'm' } })"),
    (r) => brokeChannel(r) && /wrong types/.test(r.error.message),
  ],
  // Answers within bounds.
  [
    "throw an error of a 6 MB message",
    "throw new Error('m'.repeat(6_000_000));",
    (r) => denied(r) && r.error.message.length <= FLOWS_MAX_ERROR_CHARS && /cut at the cap/.test(r.error.message),
  ],
  [
    "return a result over the cap",
    "return 'x'.repeat(20 * 1024 * 1024);",
    (r) => denied(r) && new RegExp(`over the cap of ${FLOWS_MAX_VALUE_BYTES}`).test(r.error.message),
  ],
  [
    "answer with a frame at the channel's cap, too large once addressed",
    // Three bytes a character: the value is within its cap (counted in characters), the frame just within the channel's.
    frame(
      `JSON.stringify({ ok: true, console: [], value: '€'.repeat(${Math.floor((FLOWS_MAX_RESULT_BYTES - 83) / 3)}) })`,
    ),
    (r) => denied(r) && new RegExp(`over the cap of ${FLOWS_MAX_RESULT_BYTES} bytes`).test(r.error.message),
  ],
  [
    "flood the console",
    "for (let i = 0; i < 100000; i++) console.log(i); return 'done';",
    (r) => r.ok && r.console.length === FLOWS_MAX_CONSOLE_LINES && /console cut at the cap/.test(r.console.at(-1)),
  ],
  [
    "print 64 MB without a newline",
    `${writeAll} for (let i = 0; i < 64; i++) await writeAll(2, Buffer.alloc(1 << 20, 120)); return 'printed';`,
    (r) => r.ok && r.value === "printed",
    undefined,
    20_000,
  ],
  // Resources and life.
  // The run's timeout ends them whatever its length: a short one spares the CPU they burn meanwhile.
  ["loop forever", "for (;;) {}", (r) => denied(r) && /timed out/.test(r.error.message), undefined, 100],
  [
    "spin the microtask queue forever",
    "for (;;) await null;",
    (r) => denied(r) && /timed out/.test(r.error.message),
    undefined,
    100,
  ],
  [
    "exhaust the heap",
    "const hoard = []; for (;;) hoard.push(new Array(1e6).fill(hoard.length));",
    (r) => denied(r) && /memory limit|exited/.test(r.error.message),
    undefined,
    30_000,
  ],
  // In a container the engine holds memory (--memory); the stand-in here could not.
  [
    "exhaust memory with buffers",
    "const hoard = []; for (;;) hoard.push(Buffer.alloc(32 * 1024 * 1024, 1));",
    (r) => denied(r) && /memory limit|exited/.test(r.error.message),
    ["namespaces", "user"],
    30_000,
  ],
  // Sockets hold kernel memory the memory watchdog does not see: their number is capped (FLOWS_RUNTIME_OPEN_FILES, 64).
  [
    "hold kernel memory in many loopback TCP connections",
    `const net = await import('node:net'); const server = net.createServer((s) => s.pause()); await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const open = []; let error = 'none';
    try { for (let i = 0; i < 200; i++) { const c = net.connect(server.address().port, '127.0.0.1').on('error', () => {}); await new Promise((r, j) => c.once('connect', r).once('error', j)); open.push(c); } } catch (e) { error = e.code; }
    return [open.length, error];`,
    (r) => r.ok && r.value[0] < 32 && r.value[1] === "EMFILE",
    ["namespaces", "user"],
  ],
  ["exit without answering", "process.exit(3);", (r) => denied(r) && /exited/.test(r.error.message)],
  [
    "crash with an uncaught exception later",
    "setTimeout(() => { throw new Error('late'); }, 0); await new Promise((r) => setTimeout(r, 50));",
    denied,
  ],
  [
    "lock its scratch space (chmod 0500)",
    "const fs = await import('node:fs'); fs.mkdirSync('locked/deeper', { recursive: true }); fs.writeFileSync('locked/deeper/f', 'x'); fs.chmodSync('locked/deeper', 0o500); fs.chmodSync('locked', 0o500); fs.chmodSync('.', 0o500); return 'locked';",
    (r) => r.ok,
  ],
  [
    "return something that is not JSON",
    "const a = {}; a.self = a; return a;",
    (r) => denied(r) && r.error.name === "TypeError",
  ],
  ["throw something that is not an Error", "throw 42;", (r) => denied(r) && /non-Error/.test(r.error.message)],
  [
    "pollute Object.prototype for the next run",
    "Object.prototype.polluted = 'yes'; globalThis.leftover = 'secret'; return 1;",
    (r) => r.ok,
  ],
  [
    "leave a file for the next run",
    "(await import('node:fs')).writeFileSync('left-behind.txt', 'secret'); return 1;",
    (r) => r.ok,
  ],
];

/** The gateway the runs of one file go through, the targets they aim at, and how a test sends a run. */
export interface Hostile {
  dir: string;
  uids: ReturnType<typeof uidRange>;
  targets: Targets;
  /** Who arrived at the sockets the runs aim at. */
  reached: { unix: number; abstract: number };
  gateway: Gateway;
  url: string;
  token: string;
  run(body: Record<string, unknown>): Promise<{ status: number; result: any }>;
  pool(): {
    connections: number;
    activeRequests: number;
    agents: { id: string; executor: string; parallelism: number; draining: boolean }[];
  };
}

/** "Flows: hostile runs" of one file: a gateway and the targets, set up before `body`'s suites and closed after. */
export function hostileRuns(slot: number, body: (h: Hostile) => void): void {
  describe("Flows: hostile runs", function () {
    this.timeout(120_000);
    const dir = scratchDir("flows-hostile-");
    const service = serviceKey();
    const servers: net.Server[] = [];
    const h: Hostile = {
      dir,
      uids: uidRange(slot),
      targets: {
        agentPid: process.pid,
        unixSocket: path.join(dir, "docker.sock"),
        abstractName: `agentpools-test-${process.pid}-${slot}`,
        hostFile: path.join(dir, "host-secret"),
      },
      reached: { unix: 0, abstract: 0 },
      gateway: undefined as unknown as Gateway,
      url: "",
      token: "",
      // A connection of its own per run (no keep-alive): a loaded machine that stalls this process past the gateway's
      // keep-alive timeout cannot have the gateway close a connection as the next run is sent on it (ECONNRESET once).
      run: (body) =>
        new Promise((resolve, reject) => {
          const request = http.request(
            `${h.url}/_agentpools/api/flows/${POOL}/run`,
            { method: "POST", headers: { ...service.headers, "content-type": "application/json" }, agent: false },
            (response) => {
              let text = "";
              response.setEncoding("utf8").on("data", (chunk: string) => (text += chunk));
              response.on("error", reject).on("end", () => {
                try {
                  resolve({ status: response.statusCode ?? 0, result: JSON.parse(text) });
                } catch (error) {
                  reject(new Error(`${response.statusCode}: not JSON: ${text.slice(0, 200)}`, { cause: error }));
                }
              });
            },
          );
          request.on("error", reject).end(JSON.stringify(body));
        }),
      pool: () => h.gateway.summary().find((p) => p.name === POOL) as ReturnType<Hostile["pool"]>,
    };

    before(async () => {
      const port = await freePort();
      h.url = `http://127.0.0.1:${port}`;
      const created = createPool(POOL, "flows", h.url);
      h.token = created.token;
      h.gateway = new Gateway({
        pools: [created.pool],
        keys: [service.definition],
        port,
        log: capturingLogger("gateway").log,
      });
      await h.gateway.listen();
      writeFileSync(h.targets.hostFile, "HOST-ONLY-SECRET-5a2c", { mode: 0o600 });
      // What a run would reach for: a Unix socket on the host, an abstract one. Each counts who arrives.
      for (const [where, key] of [
        [h.targets.unixSocket, "unix"],
        [`\0${h.targets.abstractName}`, "abstract"],
      ] as const) {
        const server = net.createServer((socket) => (h.reached[key]++, socket.destroy()));
        await new Promise<void>((resolve) => server.listen(where, resolve));
        servers.push(server);
      }
      // Runtimes of "user" isolation make their scratch under the agent's directory: let them through ours.
      chmodSync(path.dirname(dir), 0o711);
      chmodSync(dir, 0o711);
    });

    after(async () => {
      for (const server of servers) server.close();
      await h.gateway.close();
    });

    body(h);
  });
}

/** The corpus and the checks that follow it against one executor: an agent in this process, its runtimes real. */
export function executorSuite(h: Hostile, mode: Mode): void {
  const { dir, targets, reached, run, pool } = h;
  const FIRST_UID = h.uids.first;
  const LAST_UID = h.uids.last;
  describe(
    mode === "docker"
      ? "Docker executor (a stand-in CLI runs the container's command on this host)"
      : `process executor, isolation "${mode}"`,
    () => {
      let agent: RunningAgent;
      const log = capturingLogger("flows-agent");
      const mounts = path.join(dir, `mounts-${mode}`);
      const settings = (): FlowsAgentSettings =>
        flowsAgentSettings.parse({
          poolId: POOL,
          poolToken: h.token,
          gatewayEndpoint: h.url,
          backendEndpoint: "http://127.0.0.1:9",
          executor: mode === "docker" ? "docker" : "process",
          runtimeIsolation: mode === "docker" ? "auto" : mode,
          runtimeUids: h.uids.range,
          mountsDir: mounts,
          runtimePoolSize: 4,
          runtimeMemoryMb: 64,
          runtimeDiskMb: 32,
          defaultRunTimeout: "5s",
        });

      /** What runtimes of an agent that died before their cleanup (SIGKILL) left: a run's locked scratch, a spare's. */
      const leftovers = ["c0ffee00-run", "c0ffee01-spare"].map((name) => path.join(mounts, name));

      before(async () => {
        if (mode === "user") {
          for (const [i, left] of leftovers.entries()) {
            mkdirSync(left, { recursive: true });
            writeFileSync(path.join(left, "secret.txt"), "TENANT-A-SECRET");
            chownSync(path.join(left, "secret.txt"), FIRST_UID + i, FIRST_UID + i);
            chownSync(left, FIRST_UID + i, FIRST_UID + i);
            chmodSync(left, 0o500);
          }
        }
        const runner = { path: RUNNER(), args: [], readable: [RUNNER()] };
        agent = await flowsAgentRole(runner, { docker: writeFlowsDockerStandIn(dir) }).start(settings(), {
          log: log.log,
        });
        await agent.ready;
        await eventually(() => pool().connections === 1);
      });
      after(() => agent.drain(Date.now() + 5000));

      it("says how runtimes are isolated, on the status page too", () => {
        const executor = pool().agents[0].executor;
        if (mode === "docker") assert.match(executor, /^docker \(gVisor\), a user of its own/);
        else
          assert.match(
            executor,
            mode === "namespaces" ? /namespaces and a user of its own/ : /^process, a user of its own/,
          );
      });

      for (const [what, code, contained, modes, timeoutMs = 5000] of CORPUS) {
        if (modes && !modes.includes(mode)) continue;
        it(what, async () => {
          const { status, result } = await run({ kind: "block", code, inputs: targets, timeoutMs });
          assert.equal(status, 200);
          assert.ok(contained(result, targets), `not contained: ${JSON.stringify(result).slice(0, 400)}`);
          assert.ok(!JSON.stringify(result).includes("HOST-ONLY"), "a host file reached the run");
          const next = await run({ code: "1 + 1" });
          assert.deepEqual([next.status, next.result.value], [200, 2], "the agent answers the next run");
        });
      }

      it("nothing reached the sockets it aimed at; its parallelism is the agent's", () => {
        assert.deepEqual(reached, { unix: 0, abstract: 0 });
        assert.equal(pool().agents[0].parallelism, 4);
        assert.equal(pool().agents[0].draining, false);
      });

      it("no run sees what an earlier run left", async () => {
        const { result } = await run({
          kind: "block",
          code: "let file = 'absent'; try { (await import('node:fs')).readFileSync('left-behind.txt'); file = 'present'; } catch {} return [({}).polluted ?? null, typeof globalThis.leftover, file];",
        });
        assert.deepEqual(result.value, [null, "undefined", "absent"]);
      });

      it("a run cannot reach a concurrent run's files, even knowing its process", async () => {
        const holder = run({
          kind: "block",
          code: "const fs = await import('node:fs'); fs.writeFileSync('secret', 'SIBLING-SECRET-91'); await new Promise((r) => setTimeout(r, 1500)); return [process.pid, process.cwd()];",
        });
        // The holder is in a runtime (it writes first thing); the thief keeps trying for most of the holder's life.
        await eventually(() => pool().activeRequests === 1, 5000, "the holder running");
        const thief = await run({
          kind: "block",
          code: `const fs = await import('node:fs'); const found = []; const until = Date.now() + 800;
          do { for (const pid of (() => { try { return fs.readdirSync('/proc'); } catch { return []; } })()) {
            for (const p of [\`/proc/\${pid}/root/tmp/secret\`, \`/proc/\${pid}/cwd/secret\`]) { try { found.push(fs.readFileSync(p, 'utf8')); } catch {} }
          } await new Promise((r) => setTimeout(r, 5)); } while (Date.now() < until);
          try { const { DatabaseSync } = await import('node:sqlite'); new DatabaseSync('/proc/1/cwd/x.db'); found.push('sqlite'); } catch {}
          return found;`,
        });
        const held = (await holder).result;
        assert.ok(held.ok, JSON.stringify(held));
        assert.ok(!JSON.stringify(thief.result).includes("SIBLING-SECRET"), JSON.stringify(thief.result));
      });

      it("large answers: one within the caps arrives whole, one over them fails that run only; concurrent runs answer, the connection stays", async () => {
        const connection = pool().agents[0].id;
        const innocent = Array.from({ length: 2 }, (_, i) =>
          run({ kind: "block", code: `await new Promise((r) => setTimeout(r, 300)); return ${i};` }),
        );
        const [large, over] = await Promise.all([
          run({ kind: "block", code: "return 'y'.repeat(4 * 1024 * 1024 - 2);" }),
          run({ kind: "block", code: "return 'x'.repeat(20 * 1024 * 1024);" }),
        ]);
        assert.deepEqual([large.result.ok, large.result.value?.length], [true, 4 * 1024 * 1024 - 2]);
        assert.match(over.result.error.message, /over the cap/);
        assert.deepEqual(
          (await Promise.all(innocent)).map((r) => r.result.value),
          [0, 1],
        );
        assert.equal(pool().agents[0].id, connection, "the same connection");
      });

      if (mode !== "docker") {
        it("every runtime ran under a uid of the range, never the agent's", async () => {
          const { result } = await run({ code: "[process.getuid(), process.getgid()]" });
          const [uid, gid] = result.value;
          assert.ok(uid >= FIRST_UID && uid <= LAST_UID && uid === gid, String(uid));
        });
      }

      if (mode === "user") {
        it("what the runtimes of a dead agent left is removed before any uid is given out again", async () => {
          assert.deepEqual(
            leftovers.filter((left) => existsSync(left)),
            [],
          );
          const { result } = await run({
            kind: "block",
            code: "const fs = await import('node:fs'); return fs.readdirSync('..').flatMap((d) => { try { return [fs.readFileSync(`../${d}/secret.txt`, 'utf8')]; } catch { return []; } });",
          });
          assert.ok(!JSON.stringify(result).includes("TENANT-A-SECRET"), JSON.stringify(result));
        });

        it("what runs left in their scratch spaces is removed, locked or not", async () => {
          // (Beside them, the agent's claim on the directory.)
          const scratch = () => readdirSync(mounts).filter((name) => name !== CLAIM);
          await eventually(() => scratch().length <= 4, 5000, "scratch spaces removed");
        });
      }
    },
  );
}
