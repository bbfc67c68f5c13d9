// Through gateway and agent vs straight to the Git server, measured in one run, with this
// machine's floor beside each figure: the same traffic through two bare TCP relays, each its
// own process (the two extra processes any gateway-and-agent path has, doing nothing but
// copying bytes). The three ways are measured in alternating blocks, so load from elsewhere
// falls on all three alike.
//  - latency p50/p99 of small API requests;
//  - throughput of cloning a large generated repository (>= 200 MB, incompressible), best of N;
//  - the agent's peak memory (VmHWM) over the whole run.
// Run: npm run bench:vcs [-- --size-mb 200 --requests 2000 --rounds 5]
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { percentile } from "../devkit/helpers";
import { cloneSeconds, get, peakRssMb, run, startVcsPath } from "./vcs-processes";

const arg = (name: string, fallback: number) =>
  Number(process.argv[process.argv.indexOf(`--${name}`) + 1] || fallback) || fallback;
const SIZE_MB = arg("size-mb", 200);
const REQUESTS = arg("requests", 2000);
/** Clones each way, alternating, best kept: this machine's noise is large. */
const ROUNDS = arg("rounds", 5);

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
  await run(
    "git",
    ["-C", work, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "--quiet", "-m", "large"],
    { maxBuffer: 1 << 26 },
  );
  await run("git", ["clone", "--quiet", "--bare", work, bare], { maxBuffer: 1 << 26 });
  await run("git", ["-C", bare, "repack", "-a", "-d", "--quiet"]);
  rmSync(work, { recursive: true, force: true });
  writeFileSync(path.join(bare, "agentpools-ready"), "");
}

async function main(): Promise<void> {
  const root = path.join(tmpdir(), `agentpools-bench-repo-${SIZE_MB}`);
  console.log(`preparing a ${SIZE_MB} MB repository in ${root} ...`);
  await largeRepository(root);
  const packBytes = Number((await run("du", ["-sb", path.join(root, "bench", "large.git")])).stdout.split("\t")[0]);
  const stack = await startVcsPath(root);
  const ways = { direct: stack.vcsUrl, "gateway + agent": stack.gatewayBase, "floor (2 relays)": stack.relayUrl };
  try {
    const apiPath = "/api/v4/projects/bench%2Flarge";
    const times: Record<string, number[]> = {};
    const agents = Object.fromEntries(
      Object.keys(ways).map((way) => [way, new http.Agent({ keepAlive: true, maxSockets: 1 })]),
    );
    const block = async (way: keyof typeof ways, count: number, keep: boolean) => {
      for (let i = 0; i < count; i++) {
        const started = performance.now();
        await get(`${ways[way]}${apiPath}`, agents[way], stack.service.headers);
        if (keep) (times[way] ??= []).push(performance.now() - started);
      }
    };
    for (const way of Object.keys(ways) as (keyof typeof ways)[]) await block(way, 200, false);
    for (let round = 0; round < 10; round++)
      for (const way of Object.keys(ways) as (keyof typeof ways)[]) await block(way, REQUESTS / 10, true);
    const peakAfterRequests = peakRssMb(stack.agent.pid as number);

    const clones: Record<string, number[]> = {};
    for (let i = 0; i < ROUNDS; i++) {
      for (const [way, base] of Object.entries(ways))
        (clones[way] ??= []).push(await cloneSeconds(`${base}/bench/large.git`, stack.service.key));
    }
    const peak = peakRssMb(stack.agent.pid as number);

    const f = (n: number) => n.toFixed(3);
    const [d50, g50, r50] = [
      percentile(times.direct, 50),
      percentile(times["gateway + agent"], 50),
      percentile(times["floor (2 relays)"], 50),
    ];
    console.log(`\nsmall API requests (${REQUESTS} each way, sequential, keep-alive, alternating blocks):`);
    for (const way of Object.keys(ways))
      console.log(
        `  ${way.padEnd(17)} p50 ${f(percentile(times[way], 50))} ms   p99 ${f(percentile(times[way], 99))} ms`,
      );
    console.log(
      `  added p50: ${f(g50 - d50)} ms over direct, ${f(g50 - r50)} ms over the floor (which adds ${f(r50 - d50)} ms)`,
    );

    const best = Object.fromEntries(Object.entries(clones).map(([way, seconds]) => [way, Math.min(...seconds)]));
    const mbps = (seconds: number) => packBytes / 1e6 / seconds;
    console.log(`\ngit clone --bare of ${(packBytes / 1e6).toFixed(0)} MB (best of ${ROUNDS}, alternating):`);
    for (const way of Object.keys(ways))
      console.log(
        `  ${way.padEnd(17)} ${best[way].toFixed(2)} s   ${mbps(best[way]).toFixed(0)} MB/s   (all: ${clones[way].map((s) => s.toFixed(2)).join(" ")})`,
      );
    const ofFloor = (best["floor (2 relays)"] / best["gateway + agent"]) * 100;
    const ofDirect = (best.direct / best["gateway + agent"]) * 100;
    console.log(
      `  throughput: ${ofFloor.toFixed(1)}% of the floor (target >= 95%), ${ofDirect.toFixed(1)}% of direct; the floor is ${((best.direct / best["floor (2 relays)"]) * 100).toFixed(1)}% of direct`,
    );
    console.log(
      `\nagent peak memory (VmHWM): ${peakAfterRequests.toFixed(1)} MB after the small requests, ${peak.toFixed(1)} MB after the clones (target < 100)`,
    );
  } finally {
    stack.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
