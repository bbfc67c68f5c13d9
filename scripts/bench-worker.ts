// Worker runs end to end: HTTP API -> gateway queue -> WebSocket -> launcher (the shipped
// bundle, as a separate process) -> process executor -> log line back at the gateway.
//  - submit to first log line, p50/p99, read by a client following the run's log at the
//    gateway; baseline in the same run: spawning the same shell command directly;
//  - the launcher's idle memory (RSS), once connected and again after the timed runs.
// Run: npm run bench:worker [-- --runs 200]
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { createLogger } from "../lib/log";
import { packageRoot } from "../components/shared/bundles";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { freePort, percentile, scratchDir, serviceKey } from "../devkit/helpers";

const RUNS = Number(process.argv[process.argv.indexOf("--runs") + 1] || 200) || 200;
const COMMAND = "echo hello";
const keepAlive = new http.Agent({ keepAlive: true });
const service = serviceKey("bench");

function request(url: string, method: string, body?: unknown): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent: keepAlive, headers: service.headers }, (res) => {
      let text = "";
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => resolve(text));
    });
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** Milliseconds from `start` to the first byte of the run's followed log. */
function firstLogLine(url: string, start: bigint): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(`${url}/logs?follow=1`, { agent: keepAlive, headers: service.headers }, (res) => {
        res.once("data", () => resolve(Number(process.hrtime.bigint() - start) / 1e6));
        res.resume();
      })
      .on("error", reject);
  });
}

/** The baseline: the same command spawned directly, to its first output. */
function directFirstOutput(): Promise<number> {
  const start = process.hrtime.bigint();
  return new Promise((resolve) => {
    const child = spawn("/bin/sh", ["-ec", COMMAND], { stdio: ["ignore", "pipe", "ignore"] });
    child.stdout.once("data", () => resolve(Number(process.hrtime.bigint() - start) / 1e6));
    child.stdout.resume();
  });
}

const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const dir = scratchDir("bench-worker-");
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const { keyBase64, csr } = await makePoolKeyAndRequest("bench");
  const certificate = await signPoolRequest(await loadOrCreateAuthority(path.join(dir, "gateway")), csr, "bench");
  const { pool, token } = createPool("bench", "worker", url, certificate);
  const gateway = new Gateway({
    pools: [pool],
    keys: [service.definition],
    port,
    dataDir: path.join(dir, "gateway"),
    log: createLogger("gateway", []),
  });
  await gateway.listen();
  const launcher = spawn(
    process.execPath,
    [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/launcher.js")],
    {
      env: {
        PATH: process.env.PATH,
        SPACELIFT_TOKEN: token,
        SPACELIFT_POOL_PRIVATE_KEY: keyBase64,
        AGENTPOOLS_WORKER_EXECUTOR: "process",
        AGENTPOOLS_WORK_DIR: path.join(dir, "runs"),
      },
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  const runs = `${url}/_agentpools/api/workers/bench/runs`;
  try {
    for (let i = 0; i < 200 && gateway.summary()[0].connections === 0; i++) await sleep(50);
    await sleep(1000);
    const idleBefore = rssMb(launcher.pid as number);

    const direct: number[] = [];
    const submitted: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      direct.push(await directFirstOutput());
      const start = process.hrtime.bigint();
      const run = JSON.parse(await request(runs, "POST", { image: "alpine:3", commands: [COMMAND] })) as { id: string };
      submitted.push(await firstLogLine(`${runs}/${run.id}`, start));
      // The next run goes to the launcher once it has reported this one.
      for (
        let wait = 0;
        wait < 200 && JSON.parse(await request(`${runs}/${run.id}`, "GET")).status === "running";
        wait++
      )
        await sleep(2);
    }
    await sleep(2000);
    const idleAfter = rssMb(launcher.pid as number);

    const f = (n: number) => n.toFixed(2);
    const p50 = percentile(submitted, 50);
    const base50 = percentile(direct, 50);
    console.log(`worker runs, process executor, ${RUNS} runs of "${COMMAND}" (one launcher, one run at a time)`);
    console.log(
      `  submit -> first log line at the gateway   p50 ${f(p50)} ms   p99 ${f(percentile(submitted, 99))} ms`,
    );
    console.log(
      `  baseline: spawn the command directly      p50 ${f(base50)} ms   p99 ${f(percentile(direct, 99))} ms   (ratio ${f(p50 / base50)}x)`,
    );
    console.log(
      `  launcher idle RSS: ${idleBefore.toFixed(1)} MB connected, ${idleAfter.toFixed(1)} MB after the runs`,
    );
  } finally {
    launcher.kill("SIGTERM");
    await gateway.close();
    keepAlive.destroy();
  }
}

main().catch((error: Error) => {
  console.error(error);
  process.exit(1);
});
