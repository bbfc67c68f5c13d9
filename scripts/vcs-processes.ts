// The VCS path as the benchmarks run it: a LocalVcs, the gateway (main.js serve, its own
// process, default settings) and the shipped vcs-agent bundle, each its own process, so the
// load generator shares no event loop with them. BENCH_AGENT_FLAGS and BENCH_GATEWAY_FLAGS
// add Node flags to the agent (beside RUNTIME_NODE_FLAGS) or the gateway (--cpu-prof, ...).
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { packageRoot, RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { createPool } from "../gateway/pools";
import { freePort, serviceKey } from "../devkit/helpers";

export const run = promisify(execFile);
const flags = (name: string) => process.env[name]?.split(" ").filter(Boolean) ?? [];

export function startProcess(args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, args, {
    env: { PATH: process.env.PATH, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
}

/** A process that only copies bytes between each connection to `listen` and one to `target`. */
export function startRelay(listen: number, target: number): ChildProcess {
  const code = `require("node:net").createServer((c) => { c.setNoDelay(true); const u = require("node:net").connect(${target}, "127.0.0.1"); u.setNoDelay(true); c.pipe(u).pipe(c); c.on("error", () => u.destroy()); u.on("error", () => c.destroy()); }).listen(${listen}, "127.0.0.1");`;
  return startProcess(["-e", code], {});
}

export function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

/** One GET, its body read and dropped; rejects on any status but 200. */
export function get(url: string, agent: http.Agent, headers: Record<string, string>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    http
      .get(url, { agent, headers }, (res) => {
        res.resume();
        res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      })
      .on("error", reject);
  });
}

/**
 * The LocalVcs serving `root`, a gateway with one VCS pool ("bench") and a service key, and
 * one agent with the given environment (its defaults otherwise), plus two bare relays in
 * front of the VCS: the floor of two extra processes doing nothing but copying bytes.
 */
export async function startVcsPath(root: string, agentEnv: Record<string, string> = {}) {
  const service = serviceKey("bench");
  const vcsPort = await freePort();
  const vcsUrl = `http://127.0.0.1:${vcsPort}`;
  const localVcs = path.join(packageRoot(), "build/devkit/local-vcs.js");
  const vcs = startProcess(
    [
      "-e",
      `const { LocalVcs } = require(${JSON.stringify(localVcs)}); new LocalVcs(${JSON.stringify(root)}).listen(${vcsPort});`,
    ],
    {},
  );
  const gatewayPort = await freePort();
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
  const { pool, token } = createPool("bench", "vcs", gatewayUrl);
  const configFile = path.join(tmpdir(), `agentpools-bench-gateway-${process.pid}-${gatewayPort}.json`);
  writeFileSync(
    configFile,
    JSON.stringify({
      listen: { host: "127.0.0.1", port: gatewayPort },
      publicUrl: gatewayUrl,
      pools: [pool],
      keys: [service.definition],
    }),
  );
  const gateway = startProcess(
    [
      ...flags("BENCH_GATEWAY_FLAGS"),
      path.join(packageRoot(), "build/gateway/main.js"),
      "serve",
      "--config",
      configFile,
    ],
    {},
  );
  const agent = startProcess(
    [...RUNTIME_NODE_FLAGS, ...flags("BENCH_AGENT_FLAGS"), path.join(packageRoot(), "build/bundles/vcs-agent.js")],
    {
      SPACELIFT_VCS_AGENT_POOL_TOKEN: token,
      SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: vcsUrl,
      SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
      ...agentEnv,
    },
  );
  const [relayIn, relayMiddle] = [await freePort(), await freePort()];
  const relays = [startRelay(relayMiddle, vcsPort), startRelay(relayIn, relayMiddle)];
  const connections = async () => {
    try {
      return JSON.parse(
        (await run("curl", ["-sf", "-H", `x-agentpools-key: ${service.key}`, `${gatewayUrl}/_agentpools/api/pools`]))
          .stdout,
      ).pools[0].connections as number;
    } catch {
      return 0;
    }
  };
  for (let i = 0; i < 200 && (await connections()) === 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
  if ((await connections()) === 0) throw new Error("the agent did not connect");
  return {
    service,
    vcsUrl,
    /** The pool's entry at the gateway: append the path at the VCS. */
    gatewayBase: `${gatewayUrl}/bench`,
    relayUrl: `http://127.0.0.1:${relayIn}`,
    agent,
    gateway,
    relays,
    stop() {
      agent.kill("SIGTERM");
      for (const child of [...relays, vcs]) child.kill();
      gateway.kill("SIGTERM");
      rmSync(configFile, { force: true });
    },
  };
}

/** `git clone --bare` of a URL into a scratch directory, removed after; returns the seconds it took. */
export async function cloneSeconds(url: string, key: string): Promise<number> {
  const target = path.join(tmpdir(), `agentpools-bench-clone-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const started = performance.now();
  try {
    await run("git", ["-c", `http.extraHeader=x-agentpools-key: ${key}`, "clone", "--quiet", "--bare", url, target], {
      maxBuffer: 1 << 26,
    });
    return (performance.now() - started) / 1000;
  } finally {
    rmSync(target, { recursive: true, force: true });
  }
}
