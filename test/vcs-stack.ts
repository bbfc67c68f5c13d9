import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { vcsAgentSettings, type VcsAgentSettings } from "../agent/config/vcs-agent";
import type { RunningAgent } from "../agent/runtime/runtime";
import { vcsAgentRole } from "../agent/vcs-agent/agent";
import { Gateway, type GatewayOptions } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import type { LocalVcs } from "../devkit/local-vcs";
import { capturingLogger, eventually, freePort, serviceKey } from "../devkit/helpers";

export type Reply = { status: number; body: string; headers: http.IncomingHttpHeaders; complete: boolean };

/**
 * A gateway with one VCS pool ("git") and two service keys (a, b: two clients), and VCS
 * agents started on demand, all in this process, in front of a LocalVcs that records what
 * reached it. Helpers for hostile tests: requests with a key or none, and raw bytes.
 */
export async function vcsStack(vcs: LocalVcs, options: Partial<GatewayOptions> = {}) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const pool = createPool("git", "vcs", url);
  const keys = { a: serviceKey("client a"), b: serviceKey("client b") };
  const gatewayLog = capturingLogger("gateway");
  const gateway = new Gateway({
    port,
    log: gatewayLog.log,
    ...options,
    pools: [pool.pool, ...(options.pools ?? [])],
    keys: [keys.a.definition, keys.b.definition, ...(options.keys ?? [])],
  });
  await gateway.listen();
  const agents: { agent: RunningAgent; lines: Record<string, any>[] }[] = [];
  const summary = () =>
    gateway.summary().find((p) => p.name === "git") as ReturnType<Gateway["summary"]>[number] & {
      activeRequests: number;
      waiting: number;
      connections: number;
    };

  return {
    gateway,
    url,
    port,
    pool,
    keys,
    gatewayLog,
    agents,
    summary,
    async startAgent(overrides: Partial<VcsAgentSettings> = {}) {
      const { log, lines } = capturingLogger("vcs-agent");
      const settings = vcsAgentSettings.parse({
        token: pool.token,
        targetBaseEndpoint: vcs.url,
        vendor: "gitlab",
        allowedProjects: "group/repo",
        ...overrides,
      });
      const before = summary().connections;
      const agent = await vcsAgentRole.start(settings, { log });
      agents.push({ agent, lines });
      await agent.ready;
      await eventually(() => summary().connections > before, 5000, "the agent registered");
      return { agent, lines };
    },
    /** A request through the gateway, with client a's key unless told otherwise (key: null sends none). */
    request(
      path: string,
      init: { method?: string; headers?: Record<string, string>; body?: string | Buffer; key?: string | null } = {},
    ): Promise<Reply> {
      const key = init.key === undefined ? keys.a.key : init.key;
      return new Promise((resolve, reject) => {
        const req = http.request(
          {
            host: "127.0.0.1",
            port,
            path,
            method: init.method ?? "GET",
            headers: { ...(key ? { "x-agentpools-key": key } : {}), ...init.headers },
            agent: false,
          },
          (res) => {
            let body = "";
            res.on("data", (chunk) => (body += chunk));
            res.on("error", () => undefined); // cut short: seen as not complete
            res.once("close", () =>
              resolve({ status: res.statusCode ?? 0, body, headers: res.headers, complete: res.complete }),
            );
          },
        );
        req.on("error", reject);
        req.end(init.body);
      });
    },
    /**
     * Bytes written as they are; everything the gateway sends back until it closes (a parse
     * error closes; otherwise the last request should say Connection: close).
     */
    raw(bytes: string | Buffer): Promise<string> {
      return new Promise((resolve) => {
        let text = "";
        const socket = net.connect(port, "127.0.0.1", () => socket.write(bytes));
        socket.on("data", (chunk) => (text += chunk.toString("latin1")));
        socket.on("error", () => undefined);
        socket.once("close", () => resolve(text));
      });
    },
    /** A connection that sends these bytes and then holds, sending nothing more. */
    hold(bytes: string): { socket: net.Socket; sent: Promise<void> } {
      const socket = net.connect(port, "127.0.0.1");
      socket.on("error", () => undefined);
      const sent = new Promise<void>((resolve) => socket.write(bytes, () => resolve()));
      return { socket, sent };
    },
    async close() {
      while (agents.length > 0) await agents.pop()!.agent.drain(Date.now() + 1000);
      await gateway.close();
    },
  };
}

/** The statuses of every response in a raw HTTP/1.1 exchange, in order. */
export const statuses = (raw: string) => [...raw.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

/** A process's resident memory (MB) now, and its high-water mark. */
export function memoryMb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) / 1024;
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}
