import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { createLogger } from "../lib/log";
import { createServiceKey, KEY_HEADER } from "../gateway/auth";

const run = promisify(execFile);

let scratchRoot: string | undefined;
/** A fresh directory under this process's own temporary root, which is removed when the process exits. */
export function scratchDir(prefix: string): string {
  if (!scratchRoot) {
    const root = mkdtempSync(path.join(tmpdir(), "agentpools-scratch-"));
    process.once("exit", () => rmSync(root, { recursive: true, force: true }));
    scratchRoot = root;
  }
  return mkdtempSync(path.join(scratchRoot, prefix));
}

/** git, asynchronously: gateways and agents in this process must keep serving meanwhile. */
export async function gitAsync(args: string[], cwd?: string): Promise<string> {
  const { stdout } = await run("git", args, {
    cwd,
    env: { ...process.env, GIT_TERMINAL_PROMPT: "0", GIT_CONFIG_NOSYSTEM: "1" },
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout;
}

/**
 * A request with the path sent exactly as given (no normalisation). It settles when the
 * connection is done with the answer: `complete` says whether the answer ended as framed.
 */
export function rawRequest(
  base: string,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders; complete: boolean }> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const { method = "GET", headers } = options;
    const req = http.request({ host: url.hostname, port: url.port, path, method, headers, agent: false }, (res) => {
      let body = "";
      res.on("data", (chunk) => (body += chunk));
      res.on("error", () => undefined); // cut short: seen as not complete
      res.once("close", () =>
        resolve({ status: res.statusCode ?? 0, body, headers: res.headers, complete: res.complete }),
      );
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

/**
 * A service key for a gateway under test: its definition (for the gateway's `keys`), the key,
 * and the header that sends it (`x-agentpools-key`, accepted on every service endpoint).
 */
export function serviceKey(name = "tests", pools?: string[]) {
  const { definition, key } = createServiceKey(name, pools);
  return { definition, key, headers: { [KEY_HEADER]: key } as Record<string, string> };
}

/** A logger that keeps its lines, parsed (and prints them too, with `print`). */
export function capturingLogger(role: string, print = false) {
  const lines: Record<string, any>[] = [];
  const log = createLogger(role, [
    (line) => lines.push(JSON.parse(line)),
    ...(print ? [(line: string) => process.stdout.write(line + "\n")] : []),
  ]);
  return { log, lines };
}

/** How much longer than its stated time a wait of eventually() lasts (AGENTPOOLS_TEST_PATIENCE, 3 by default). */
const PATIENCE = Number(process.env.AGENTPOOLS_TEST_PATIENCE) || 3;

export async function eventually<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  ms = 5000,
  what = "condition",
): Promise<T> {
  // Each wait is for an event, its time what the author saw, times the room a loaded machine needs (npm test runs six
  // workers and a Pulumi process on two cores): waiting longer costs nothing when the event comes.
  ms *= PATIENCE;
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A free loopback port: `preferred` when it is free, else any. */
export async function freePort(preferred = 0): Promise<number> {
  for (const port of preferred ? [preferred, 0] : [0]) {
    const probe = net.createServer();
    const free = await new Promise<boolean>((resolve) =>
      probe.once("error", () => resolve(false)).listen(port, "127.0.0.1", () => resolve(true)),
    );
    if (free) {
      const { port: actual } = probe.address() as net.AddressInfo;
      await new Promise((resolve) => probe.close(resolve));
      return actual;
    }
  }
  throw new Error("no free port on 127.0.0.1");
}

/** The p-th percentile of a sample (nearest rank). */
export const percentile = (values: number[], p: number) =>
  [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((p / 100) * values.length))];

/** A runtime bundle started with these arguments and this environment alone (and PATH): what it says, and its exit code. */
export function runBundle(file: string, args: string[] = [], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [file, ...args], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  // "close", not "exit": the process may exit before its output has been read (under load it was, all of it).
  return new Promise<{ code: number | null; output: string }>((resolve) =>
    child.on("close", (code) => resolve({ code, output })),
  );
}

/**
 * An HTTP proxy on loopback that records each CONNECT's target and carries the bytes, as a corporate egress proxy
 * does: what crossed it is `asked`.
 */
export async function recordingProxy() {
  const asked: string[] = [];
  /** The Proxy-Authorization of each CONNECT ("" without one). */
  const authorizations: string[] = [];
  const server = http.createServer().on("connect", (req, client: net.Socket, head: Buffer) => {
    asked.push(req.url ?? "");
    authorizations.push(req.headers["proxy-authorization"] ?? "");
    const [host, port] = (req.url ?? "").split(":");
    const upstream = net.connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.write(head);
      upstream.pipe(client).pipe(upstream);
    });
    for (const end of [client, upstream]) {
      tunnels.add(end);
      end.on("error", () => (client.destroy(), upstream.destroy())).on("close", () => tunnels.delete(end));
    }
  });
  const tunnels = new Set<net.Socket>();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    asked,
    authorizations,
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    /** Stops listening and cuts the tunnels still open (an agent still draining holds one). */
    close: () => {
      for (const socket of tunnels) socket.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Runtime uids for one Flows agent of a test process (`slot`, 0 to 15): a range of 64 of its own, so that agents of one
 * file, files side by side and test runs side by side on one machine never share a uid (an agent ends what runs under
 * its uids when it starts and when a runtime goes).
 */
export function runtimeUidRange(slot: number) {
  const first = 1900100000 + ((process.pid % 1000) * 16 + slot) * 64;
  return { first, last: first + 63, range: `${first}-${first + 63}` };
}
