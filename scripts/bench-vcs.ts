// Through gateway and agent vs straight to the Git server, measured in one run:
//  - latency p50/p99 of small API requests, and the added p50; beside it, the floor of this
//    machine: the same requests through two bare TCP relays, each its own process (the two
//    extra processes any gateway-and-agent path has, doing nothing but copying bytes);
//  - throughput of cloning a large generated repository (>= 200 MB, incompressible);
//  - the agent's peak memory (VmHWM) over the whole run.
// Run: npm run bench:vcs [-- --size-mb 200 --requests 2000 --rounds 5]; BENCH_AGENT_FLAGS="--flag ..." and
// BENCH_GATEWAY_FLAGS add Node flags to the agent (beside RUNTIME_NODE_FLAGS) or the gateway,
// to try one out or to profile (--cpu-prof).
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../components/shared/bundles";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { createPool } from "../gateway/pools";
import { freePort, percentile, serviceKey } from "../devkit/helpers";

const run = promisify(execFile);
const arg = (name: string, fallback: number) => Number(process.argv[process.argv.indexOf(`--${name}`) + 1] || fallback) || fallback;
const SIZE_MB = arg("size-mb", 200);
const REQUESTS = arg("requests", 2000);
/** Clones each way, alternating, best kept: this machine's noise is large. */
const ROUNDS = arg("rounds", 5);
/** The service key the gateway is given; sent on every request through it (and, harmlessly, on the others). */
const service = serviceKey("bench");

/** A bare repository of `sizeMb` of random (incompressible) files, kept between runs. */
async function largeRepository(root: string): Promise<void> {
  const bare = path.join(root, "bench", "large.git");
  if (existsSync(path.join(bare, "agentpools-ready"))) return;
  rmSync(root, { recursive: true, force: true });
  const work = path.join(root, "work");
  mkdirSync(work, { recursive: true });
  await run("git", ["init", "--quiet", "--initial-branch=main", work]);
  const files = Math.ceil(SIZE_MB / 8);
  for (let i = 0; i < files; i++) writeFileSync(path.join(work, `blob-${i}.bin`), randomBytes(8 * 1024 * 1024 + i));
  await run("git", ["-C", work, "add", "--all"]);
  await run("git", ["-C", work, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "--quiet", "-m", "large"], { maxBuffer: 1 << 26 });
  await run("git", ["clone", "--quiet", "--bare", work, bare], { maxBuffer: 1 << 26 });
  await run("git", ["-C", bare, "repack", "-a", "-d", "--quiet"]);
  rmSync(work, { recursive: true, force: true });
  writeFileSync(path.join(bare, "agentpools-ready"), "");
}

function startProcess(args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, args, { env: { PATH: process.env.PATH, ...env }, stdio: ["ignore", "ignore", "inherit"] });
}

/** A process that only copies bytes between each connection to `listen` and one to `target`. */
function startRelay(listen: number, target: number): ChildProcess {
  const code = `require("node:net").createServer((c) => { c.setNoDelay(true); const u = require("node:net").connect(${target}, "127.0.0.1"); u.setNoDelay(true); c.pipe(u).pipe(c); c.on("error", () => u.destroy()); u.on("error", () => c.destroy()); }).listen(${listen}, "127.0.0.1");`;
  return startProcess(["-e", code], {});
}

function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

async function latencies(base: string, path: string, count: number, agent: http.Agent): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    await new Promise<void>((resolve, reject) => {
      http.get(`${base}${path}`, { agent, headers: service.headers }, (res) => {
        res.resume();
        res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      }).on("error", reject);
    });
    times.push(performance.now() - started);
  }
  return times;
}


async function cloneSeconds(url: string): Promise<number> {
  const target = path.join(tmpdir(), `agentpools-bench-clone-${process.pid}-${Date.now()}`);
  const started = performance.now();
  await run("git", ["-c", `http.extraHeader=x-agentpools-key: ${service.key}`, "clone", "--quiet", "--bare", url, target], { maxBuffer: 1 << 26 });
  const seconds = (performance.now() - started) / 1000;
  rmSync(target, { recursive: true, force: true });
  return seconds;
}

async function main(): Promise<void> {
  const root = path.join(tmpdir(), `agentpools-bench-repo-${SIZE_MB}`);
  console.log(`preparing a ${SIZE_MB} MB repository in ${root} ...`);
  await largeRepository(root);
  const packBytes = Number((await run("du", ["-sb", path.join(root, "bench", "large.git")])).stdout.split("\t")[0]);

  const vcsPort = await freePort();
  const vcs = startProcess(["-e", `const { LocalVcs } = require(${JSON.stringify(path.join(packageRoot(), "build/devkit/local-vcs.js"))}); new LocalVcs(${JSON.stringify(root)}).listen(${vcsPort});`], {});
  const gatewayPort = await freePort();
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
  const { pool, token } = createPool("bench", "vcs", gatewayUrl);
  // Each side in its own process, so the load generator here shares no event loop with them.
  const configFile = path.join(tmpdir(), `agentpools-bench-gateway-${process.pid}.json`);
  writeFileSync(configFile, JSON.stringify({ listen: { host: "127.0.0.1", port: gatewayPort }, publicUrl: gatewayUrl, pools: [pool], keys: [service.definition] }));
  const gateway = startProcess([...(process.env.BENCH_GATEWAY_FLAGS?.split(" ").filter(Boolean) ?? []), path.join(packageRoot(), "build/gateway/main.js"), "serve", "--config", configFile], {});
  const vcsUrl = `http://127.0.0.1:${vcsPort}`;
  const connections = async () => {
    try {
      return JSON.parse((await run("curl", ["-sf", "-H", `x-agentpools-key: ${service.key}`, `${gatewayUrl}/_agentpools/api/pools`])).stdout).pools[0].connections as number;
    } catch {
      return 0;
    }
  };
  const agent = startProcess([...RUNTIME_NODE_FLAGS, ...(process.env.BENCH_AGENT_FLAGS?.split(" ").filter(Boolean) ?? []), path.join(packageRoot(), "build/bundles/vcs-agent.js")], {
    SPACELIFT_VCS_AGENT_POOL_TOKEN: token,
    SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: vcsUrl,
    SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
  });
  const [relayIn, relayMiddle] = [await freePort(), await freePort()];
  const relays = [startRelay(relayMiddle, vcsPort), startRelay(relayIn, relayMiddle)];
  try {
    for (let i = 0; i < 200 && (await connections()) === 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    if ((await connections()) === 0) throw new Error("the agent did not connect");

    const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const apiPath = "/api/v4/projects/bench%2Flarge";
    await latencies(vcsUrl, apiPath, 200, keepAlive);
    await latencies(`${gatewayUrl}/bench`, apiPath, 200, keepAlive);
    const direct: number[] = [];
    const through: number[] = [];
    for (let block = 0; block < 10; block++) {
      direct.push(...(await latencies(vcsUrl, apiPath, REQUESTS / 10, keepAlive)));
      through.push(...(await latencies(`${gatewayUrl}/bench`, apiPath, REQUESTS / 10, keepAlive)));
    }
    const relayed = new http.Agent({ keepAlive: true, maxSockets: 1 });
    await latencies(`http://127.0.0.1:${relayIn}`, apiPath, 200, relayed);
    const floor = await latencies(`http://127.0.0.1:${relayIn}`, apiPath, REQUESTS, relayed);
    const [d50, d99, g50, g99] = [percentile(direct, 50), percentile(direct, 99), percentile(through, 50), percentile(through, 99)];
    const peakAfterRequests = peakRssMb(agent.pid as number);

    const cloneDirect: number[] = [];
    const cloneThrough: number[] = [];
    const cloneRelayed: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      cloneDirect.push(await cloneSeconds(`${vcsUrl}/bench/large.git`));
      cloneThrough.push(await cloneSeconds(`${gatewayUrl}/bench/bench/large.git`));
      cloneRelayed.push(await cloneSeconds(`http://127.0.0.1:${relayIn}/bench/large.git`));
    }
    const mbps = (seconds: number) => packBytes / 1e6 / seconds;
    const bestDirect = Math.min(...cloneDirect);
    const bestThrough = Math.min(...cloneThrough);
    const peak = peakRssMb(agent.pid as number);

    const f = (n: number) => n.toFixed(3);
    console.log(`\nsmall API requests (${REQUESTS} each, sequential, keep-alive):`);
    console.log(`  direct           p50 ${f(d50)} ms   p99 ${f(d99)} ms`);
    console.log(`  gateway + agent  p50 ${f(g50)} ms   p99 ${f(g99)} ms`);
    console.log(`  added p50 ${f(g50 - d50)} ms (target < 0.5)   p50 ratio ${(g50 / d50).toFixed(2)}x   p99 ratio ${(g99 / d99).toFixed(2)}x`);
    const r50 = percentile(floor, 50);
    console.log(`  floor: two bare relay processes  p50 ${f(r50)} ms (adds ${f(r50 - d50)} ms): the path's own share is ${f(g50 - r50)} ms`);
    console.log(`\ngit clone --bare of ${(packBytes / 1e6).toFixed(0)} MB (best of ${ROUNDS}, alternating):`);
    console.log(`  direct           ${bestDirect.toFixed(2)} s   ${mbps(bestDirect).toFixed(0)} MB/s`);
    console.log(`  gateway + agent  ${bestThrough.toFixed(2)} s   ${mbps(bestThrough).toFixed(0)} MB/s`);
    console.log(`  throughput ratio ${((bestDirect / bestThrough) * 100).toFixed(1)}% of direct (target >= 90%)`);
    const bestRelayed = Math.min(...cloneRelayed);
    console.log(`  floor: two bare relay processes  ${bestRelayed.toFixed(2)} s   ${((bestDirect / bestRelayed) * 100).toFixed(1)}% of direct (what two more processes cost on this machine)`);
    console.log(`\nagent peak memory (VmHWM): ${peakAfterRequests.toFixed(1)} MB after the small requests, ${peak.toFixed(1)} MB after the clones (target < 100)`);
  } finally {
    agent.kill("SIGTERM");
    for (const relay of relays) relay.kill();
    vcs.kill();
    gateway.kill("SIGTERM");
    rmSync(configFile, { force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
