// Flows runs end to end through the gateway (HTTP API -> gateway -> WebSocket -> agent ->
// runtime), with the process executor and the default pool size, measured in one run:
//  - warm run latency p50/p99 of a small expression, each run started once a warm runtime waits;
//  - cold start: from spawning a runtime to its being ready (no spare available);
//  - runs per second with the default pool size, back to back.
// Run: npm run bench:flows [-- --runs 150 --gap 250 --warmup 300 --isolation user]
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { flowsAgentSettings } from "../agent/config/flows-agent";
import { processLauncher } from "../agent/flows-agent/executor";
import { readPrivileges, uidPool, type Isolation } from "../agent/flows-agent/sandbox";
import { packageRoot } from "../components/shared/bundles";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { createLogger } from "../lib/log";
import { freePort, percentile, scratchDir, serviceKey } from "../devkit/helpers";

/** A numeric `--name value` argument, or the fallback. */
const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
};
const RUNS = arg("runs", 150);
/**
 * Between timed runs: longer than a cold start (p99 ~ 100-200 ms here), so the spare the last run's
 * runtime is replaced by is ready and the timed run shares the CPUs with no start-up. (Runs that
 * do share them are the throughput figure's business.)
 */
const GAP_MS = arg("gap", 250);
/**
 * Untimed runs through both paths first, as many each: a gateway and an agent in service have long since
 * compiled their hot paths, as has the floor's Node after as many messages. (Each run still gets a fresh runtime.)
 */
const WARMUP = arg("warmup", 300);
/** FLOWS_RUNTIME_ISOLATION for the agent (its default, auto, unless told): "user" is a pod's. */
const ISOLATION = process.argv.includes("--isolation") ? process.argv[process.argv.indexOf("--isolation") + 1] : "auto";
/** A scratch root for runtimes, where runtimes of other uids reach it (right under the temporary directory). */
function runtimesRoot(prefix: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
const DEFAULT_POOL = flowsAgentSettings.parse({
  poolId: "p",
  poolToken: "t",
  gatewayEndpoint: "https://g",
  backendEndpoint: "https://b",
}).runtimePoolSize;
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 64 });
const service = serviceKey("bench");

function post(url: string, body: unknown): Promise<{ ok: boolean; value: unknown; durationMs: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: "POST", agent: keepAlive, headers: { "content-type": "application/json", ...service.headers } },
      (res) => {
        let text = "";
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => resolve(JSON.parse(text)));
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

async function summary(url: string) {
  const pools = JSON.parse(
    await new Promise<string>((resolve) =>
      http.get(`${url}/_agentpools/api/pools`, { headers: service.headers }, (res) => {
        let t = "";
        res.on("data", (c) => (t += c));
        res.on("end", () => resolve(t));
      }),
    ),
  );
  return pools.pools[0];
}

/**
 * This machine's floor for a warm run: the same path with nothing in it. An HTTP server in
 * this process (as the gateway is) passes each POST body over TCP to a relay process, which
 * passes it over IPC to its child; the child echoes it back the same way. Timed in turn with
 * the warm runs, so both see the same load; every process sits idle as long between them (on a
 * VM, waking idle processes is most of the cost).
 */
async function barePath(): Promise<{ time(i: number): Promise<number>; close(): void }> {
  const child = `process.on("message", (m) => process.send(m));`;
  const relay = `const kid = require("node:child_process").spawn(process.execPath, ["-e", ${JSON.stringify(child)}], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    require("node:net").createServer((s) => { s.setNoDelay(true); s.on("data", (d) => kid.send(d.toString())); kid.on("message", (m) => s.write(m)); })
      .listen(0, "127.0.0.1", function () { process.send(this.address().port); });`;
  const relayProcess = spawn(process.execPath, ["-e", relay], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
  const port = await new Promise<number>((resolve) => relayProcess.once("message", (p) => resolve(p as number)));
  const socket = net.connect(port, "127.0.0.1");
  socket.setNoDelay(true);
  await new Promise((resolve) => socket.once("connect", resolve));
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      socket.write(body);
      socket.once("data", (answer) => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(answer);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/`;
  return {
    async time(i) {
      const started = performance.now();
      await post(url, { ok: true, value: i, durationMs: 0 });
      return performance.now() - started;
    },
    close() {
      socket.destroy();
      server.close();
      relayProcess.kill();
    },
  };
}

async function main(): Promise<void> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const { pool, token } = createPool("BENCH", "flows", url);
  // One service key, as on a gateway that serves one service: it may use every runtime (clientShare 1).
  const gateway = new Gateway({
    pools: [pool],
    keys: [service.definition],
    port,
    clientShare: 1,
    log: createLogger("gateway", []),
  });
  await gateway.listen();
  const bundle = path.join(packageRoot(), "build/bundles/flows-agent.js");
  const loadBefore = os
    .loadavg()
    .map((n) => n.toFixed(2))
    .join(" ");
  const agentLogPath = path.join(scratchDir("bench-flows-log-"), "agent.log");
  const agentLogFile = openSync(agentLogPath, "w");
  const agent = spawn(process.execPath, [...RUNTIME_NODE_FLAGS, bundle], {
    env: {
      PATH: process.env.PATH,
      FLOWS_AGENT_POOL_ID: "BENCH",
      FLOWS_AGENT_POOL_TOKEN: token,
      FLOWS_GATEWAY_ENDPOINT: url,
      FLOWS_ENDPOINT: url,
      FLOWS_EXECUTOR: "process",
      FLOWS_RUNTIME_ISOLATION: ISOLATION,
      FLOWS_DOCKER_MOUNTS_TEMPDIR: runtimesRoot("agentpools-bench-flows-"),
    },
    // Its log goes to a file, as on a host it goes to the journal: not into this process, which is the gateway.
    stdio: ["ignore", agentLogFile, "inherit"],
  });
  closeSync(agentLogFile);
  const runUrl = `${url}/_agentpools/api/flows/BENCH/run`;
  try {
    for (let i = 0; i < 200 && (await summary(url)).connections === 0; i++) await new Promise((r) => setTimeout(r, 50));
    // Warm runs and the floor in turn, each after the same idle time (the agent's spares are back by then).
    const warm: number[] = [];
    const inExecutor: number[] = [];
    const floor: number[] = [];
    const bare = await barePath();
    for (let i = 0; i < WARMUP; i++) {
      await post(runUrl, { code: "1 + inputs.x", inputs: { x: i } });
      await bare.time(i);
    }
    for (let i = 0; i < RUNS; i++) {
      await new Promise((r) => setTimeout(r, GAP_MS));
      const started = performance.now();
      const result = await post(runUrl, { code: "1 + inputs.x", inputs: { x: i } });
      warm.push(performance.now() - started);
      inExecutor.push(result.durationMs);
      if (result.value !== 1 + i) throw new Error(`wrong result ${JSON.stringify(result)}`);
      await new Promise((r) => setTimeout(r, GAP_MS));
      floor.push(await bare.time(i));
    }
    bare.close();
    // Cold start: a runtime from spawn to ready, as the executor starts it: isolated as the
    // agent isolates it here, and not isolated (what the isolation costs).
    const coldStart = async (isolation: Isolation) => {
      const launcher = processLauncher({
        isolation,
        privileges: readPrivileges(),
        uids: uidPool("1900000900-1900000999"),
        runner: [bundle, "--flows-runner"],
        readable: [bundle],
        memoryMb: 256,
        diskMb: 64,
        openFiles: 64,
        scratchRoot: runtimesRoot("agentpools-bench-cold-"),
      });
      const times: number[] = [];
      for (let i = 0; i < 30; i++) {
        const started = performance.now();
        const runtime = launcher.start()!;
        await runtime.ready;
        times.push(performance.now() - started);
        runtime.kill();
        await runtime.exited;
      }
      return times;
    };
    const isolation = (/"isolation":"(\w+)"/.exec(readFileSync(agentLogPath, "utf8"))?.[1] ?? "none") as Isolation;
    const cold = await coldStart(isolation);
    const coldBare = isolation === "none" ? cold : await coldStart("none");
    // Throughput: as many runs in flight as the pool takes, for a fixed count.
    const total = RUNS;
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: DEFAULT_POOL * 2 }, async () => {
        while (next < total) {
          next++;
          await post(runUrl, { code: "1" });
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;

    const f = (n: number) => n.toFixed(2);
    console.log(
      `flows runs through the gateway, process executor, pool size ${DEFAULT_POOL} (the default), runtimes isolated: ${isolation}; load average ${loadBefore} before, ${os
        .loadavg()
        .map((n) => n.toFixed(2))
        .join(" ")} after; ${WARMUP} untimed runs through each path first`,
    );
    console.log(
      `  warm run (a spare ready)   p50 ${f(percentile(warm, 50))} ms   p99 ${f(percentile(warm, 99))} ms   (target: p50 within 1 ms of the floor)`,
    );
    console.log(
      `    of which in the executor p50 ${f(percentile(inExecutor, 50))} ms   (handing the job to a warm runtime until its answer)`,
    );
    const floor50 = percentile(floor, 50);
    console.log(
      `    floor of this machine    p50 ${f(floor50)} ms   the same path with nothing in it (HTTP, TCP, IPC), timed in turn with the warm runs, all idle ${GAP_MS} ms before: ours adds ${f(percentile(warm, 50) - floor50)} ms`,
    );
    console.log(
      `  cold runtime start         p50 ${f(percentile(cold, 50))} ms   p99 ${f(percentile(cold, 99))} ms   (target < 100)`,
    );
    console.log(
      `    not isolated             p50 ${f(percentile(coldBare, 50))} ms   (the same runtime as the agent's own user, no namespaces: isolation adds ${f(percentile(cold, 50) - percentile(coldBare, 50))} ms)`,
    );
    console.log(
      `  throughput                 ${(total / seconds).toFixed(1)} runs/s (${total} runs, each on a fresh process)`,
    );
  } finally {
    agent.kill("SIGTERM");
    await gateway.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
