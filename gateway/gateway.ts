import { randomUUID } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { Readable } from "node:stream";
import { createLogger, type Logger } from "../lib/log";
import { streamed } from "../lib/streaming-gc";
import { CONNECT_PATH, forwardableHeaders, UPGRADE_PROTOCOL } from "../protocol/vcs";
import { MuxConnection, type MuxStream, type ResponseHead } from "../protocol/mux";
import { decodeToken } from "../protocol/token";
import { FLOWS_CONNECT_PATH, FLOWS_RUN_TIMEOUT_MAX_MS } from "../protocol/flows";
import { FlowsHub } from "./flows-hub";
import { HttpError, readJsonBody } from "./http";
import { WORKER_API, WORKER_CONNECT_PATH } from "../protocol/worker";
import { WorkerHub, type WorkerHubOptions } from "./worker-hub";
import { secretMatches, type ConnectedAgent, type PoolDefinition } from "./pools";
import { renderStatusPage } from "./status-page";

export const API_PATH = "/_agentpools/api/pools";
const FLOWS_RUN_PATH = /^\/_agentpools\/api\/flows\/([A-Za-z0-9_-]+)\/run$/;

export interface GatewayOptions extends WorkerHubOptions {
  pools: PoolDefinition[];
  host?: string;
  port?: number;
  /** PEM certificate and key: required unless the gateway listens on loopback only. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** How long a request waits for a free stream when every agent is busy. */
  queueTimeoutMs?: number;
  log?: Logger;
  pingIntervalMs?: number;
}


interface AgentConnection extends ConnectedAgent {
  role: string;
  mux: MuxConnection;
  /** Streams the agent serves at once (its parallelism). */
  streams: number;
  active: number;
  draining: boolean;
}

interface Waiter {
  resolve(agent: AgentConnection): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

export interface ForwardedResponse {
  status: number;
  headers: Record<string, string | string[]>;
  body: Readable;
  /** Abandon the request: the agent cancels it at the VCS too. */
  cancel(): void;
}

/** Metadata tags an agent sends (base64url JSON): kept only as a small map of short strings. */
function readMetadata(header: string | string[] | undefined): Record<string, string> {
  try {
    const parsed = JSON.parse(Buffer.from(String(header ?? "e30"), "base64url").toString("utf8"));
    return Object.fromEntries(
      Object.entries(parsed as Record<string, unknown>)
        .filter(([key, value]) => /^[A-Za-z0-9_]{1,64}$/.test(key) && typeof value === "string" && value.length <= 256)
        .slice(0, 32),
    ) as Record<string, string>;
  } catch {
    return {};
  }
}

const isLoopback = (host: string) => host === "localhost" || host === "::1" || /^127\./.test(host);

/**
 * The service side the agents dial. Agents authenticate with their pool's token and then
 * serve multiplexed streams on their outbound connection; the gateway sends each request down one of
 * its pool's connected agents, choosing the least busy, and waits a bounded time when all
 * are busy.
 */
export class Gateway {
  private readonly pools = new Map<string, { definition: PoolDefinition; agents: Set<AgentConnection>; waiters: Waiter[] }>();
  private readonly server: http.Server | https.Server;
  private readonly log: Logger;
  private readonly sockets = new Set<Socket>();
  /** The Flows pools' agents and their runs. */
  readonly flows: FlowsHub;
  /** The worker pools' run queues and launchers. */
  readonly workers: WorkerHub;

  constructor(private readonly options: GatewayOptions) {
    const host = options.host ?? "127.0.0.1";
    if (!options.tls && !isLoopback(host)) throw new Error(`plain HTTP is allowed on loopback only; give tls (certificate and key) to listen on ${host}`);
    for (const definition of options.pools) this.pools.set(definition.name, { definition, agents: new Set(), waiters: [] });
    this.log = options.log ?? createLogger("gateway");
    this.flows = new FlowsHub(this.pools, this.log);
    this.workers = new WorkerHub(this.pools, this.log, { dataDir: options.dataDir, lostAfterMs: options.lostAfterMs });
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.handle(req, res);
    this.server = options.tls ? https.createServer({ cert: options.tls.cert, key: options.tls.key }, handler) : http.createServer(handler);
    this.server.on("upgrade", (req, socket: Socket, head) => this.accept(req, socket, head));
    this.server.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(this.options.port ?? 0, this.options.host ?? "127.0.0.1", resolve));
    const { port } = this.server.address() as AddressInfo;
    const url = `${this.options.tls ? "https" : "http"}://${this.options.host ?? "127.0.0.1"}:${port}`;
    this.log.info("gateway listening", { url, pools: [...this.pools.keys()] });
    return url;
  }

  /** Stop listening and drop every agent (they will reconnect to the next gateway). */
  async close(): Promise<void> {
    this.flows.close();
    this.workers.close();
    for (const pool of this.pools.values()) for (const agent of pool.agents) agent.mux.destroy();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Pools with their connected agents. */
  summary() {
    return [...this.pools.values()].map(({ definition, agents, waiters }) => {
      if (definition.kind === "flows") return { name: definition.name, kind: definition.kind, waiting: 0, ...this.flows.summary(definition.name) };
      if (definition.kind === "worker") return { name: definition.name, kind: definition.kind, waiting: 0, ...this.workers.summary(definition.name) };
      return {
        name: definition.name,
        kind: definition.kind,
        connections: [...agents].filter((a) => !a.draining).length,
        activeRequests: [...agents].reduce((sum, a) => sum + a.active, 0),
        waiting: waiters.length,
        agents: [...agents].map((a) => ({ id: a.id, role: a.role, remote: a.remote, connectedAt: a.connectedAt, metadata: a.metadata, active: a.active, parallelism: a.streams, draining: a.draining })),
      };
    });
  }

  private refuse(socket: Socket, status: number, reason: string, details: Record<string, unknown>): void {
    this.log.warn("agent refused", { reason, ...details });
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${JSON.stringify({ error: reason })}`);
  }

  private accept(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const refuse = (status: number, reason: string, details: Record<string, unknown>) => this.refuse(socket, status, reason, details);
    if (req.url === FLOWS_CONNECT_PATH) return this.flows.accept(req, socket, head, readMetadata(req.headers["x-agentpools-metadata"]), refuse);
    if (req.url === WORKER_CONNECT_PATH) return this.workers.accept(req, socket, head, readMetadata(req.headers["x-agentpools-metadata"]), refuse);
    if (req.url !== CONNECT_PATH || req.headers.upgrade !== UPGRADE_PROTOCOL) return this.refuse(socket, 400, "not an agent connection", { remote, url: req.url });
    const { pool, claimed } = this.authenticate(req.headers.authorization);
    if (!pool) return this.refuse(socket, 401, "token refused", { remote, pool: claimed });
    const metadata = readMetadata(req.headers["x-agentpools-metadata"]);

    const streams = Number(req.headers["x-agentpools-streams"] ?? 1);
    if (!Number.isInteger(streams) || streams < 1 || streams > 64) return this.refuse(socket, 400, "x-agentpools-streams must be an integer from 1 to 64", { remote, pool: pool.definition.name });

    // Hold the agent's first frames in the socket's buffer until the connection reads them.
    socket.pause();
    if (head.length > 0) socket.unshift(head);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`);
    const agent: AgentConnection = {
      id: randomUUID(),
      pool: pool.definition.name,
      role: String(req.headers["x-agentpools-role"] ?? pool.definition.kind),
      remote,
      metadata,
      connectedAt: new Date().toISOString(),
      streams,
      active: 0,
      draining: false,
      mux: new MuxConnection(socket, {
        onGoAway: () => (agent.draining = true),
        onProtocolError: (reason) => this.log.warn("agent connection closed", { pool: agent.pool, agent: agent.id, reason }),
        pingIntervalMs: this.options.pingIntervalMs,
      }),
    };
    pool.agents.add(agent);
    this.log.info("agent connected", { pool: agent.pool, agent: agent.id, remote, metadata, parallelism: streams });
    void agent.mux.closedPromise.then(() => {
      if (pool.agents.delete(agent)) this.log.info("agent disconnected", { pool: agent.pool, agent: agent.id });
    });
    this.serveWaiters(agent.pool);
  }

  /** The pool whose token this is, if the secret matches (compared in constant time). */
  private authenticate(authorization: string | undefined): { pool?: { definition: PoolDefinition; agents: Set<AgentConnection> }; claimed?: string } {
    try {
      const token = decodeToken(/^Bearer (.+)$/.exec(authorization ?? "")?.[1] ?? "");
      const pool = this.pools.get(token.pool);
      return { pool: pool && secretMatches(pool.definition, token.secret) ? pool : undefined, claimed: token.pool };
    } catch {
      return {};
    }
  }

  private pick(pool: string): AgentConnection | undefined {
    let best: AgentConnection | undefined;
    for (const agent of this.pools.get(pool)?.agents ?? []) {
      if (agent.draining || agent.mux.isClosed || agent.active >= agent.streams) continue;
      if (!best || agent.active < best.active) best = agent;
    }
    return best;
  }

  private serveWaiters(pool: string): void {
    const state = this.pools.get(pool);
    while (state && state.waiters.length > 0) {
      const agent = this.pick(pool);
      if (!agent) return;
      const waiter = state.waiters.shift() as Waiter;
      clearTimeout(waiter.timer);
      agent.active++;
      waiter.resolve(agent);
    }
  }

  /** A free agent stream of the pool: now, after a bounded wait, or a 503. */
  private acquire(pool: string): Promise<AgentConnection> {
    const state = this.pools.get(pool);
    if (!state) return Promise.reject(new HttpError(404, `no pool named ${pool}`));
    const agent = this.pick(pool);
    if (agent) {
      agent.active++;
      return Promise.resolve(agent);
    }
    if (![...state.agents].some((a) => !a.draining)) return Promise.reject(new HttpError(503, `no agent of pool ${pool} is connected`));
    const timeoutMs = this.options.queueTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          state.waiters.splice(state.waiters.indexOf(waiter), 1);
          reject(new HttpError(503, `every agent of pool ${pool} stayed busy for ${timeoutMs} ms`));
        }, timeoutMs),
      };
      state.waiters.push(waiter);
    });
  }

  /**
   * Send one request through a pool's agent: `private://<pool>/<path>`. The body streams
   * both ways; `cancel()` abandons the request, at the agent and the VCS too.
   */
  async request(target: string, init: { method?: string; headers?: Record<string, string | string[]>; body?: Readable } = {}): Promise<ForwardedResponse> {
    const match = /^private:\/\/([^/]+)(\/.*)?$/.exec(target);
    if (!match) throw new HttpError(400, `${target} is not a private://<pool>/<path> address`);
    return this.forward(match[1], init.method ?? "GET", match[2] ?? "/", init.headers ?? {}, init.body);
  }

  private async forward(pool: string, method: string, path: string, headers: Record<string, string | string[]>, body?: Readable): Promise<ForwardedResponse> {
    const agent = await this.acquire(pool);
    let stream: MuxStream;
    try {
      stream = agent.mux.open({ method, path, headers: forwardableHeaders(headers) }, !!body);
    } catch (error) {
      agent.active--;
      this.serveWaiters(pool);
      throw new HttpError(502, `the agent could not take the request: ${(error as Error).message}`);
    }
    stream.once("close", () => {
      agent.active--;
      this.serveWaiters(pool);
    });
    stream.on("error", () => undefined); // a reset or a dropped agent: seen as the stream's early close
    if (body) {
      body.pipe(stream);
      body.once("error", () => stream.cancel());
      // The agent answered without the body (a refusal): read the rest of it into nothing.
      stream.once("stopped", () => {
        body.unpipe(stream);
        body.resume();
        stream.end();
      });
    }
    const head = await new Promise<ResponseHead>((resolve, reject) => {
      const onClose = () => reject(new HttpError(502, "the agent closed the request before answering"));
      stream.once("response", (head: ResponseHead) => {
        stream.off("close", onClose);
        resolve(head);
      });
      stream.once("close", onClose);
    });
    return { status: head.status, headers: forwardableHeaders(head.headers), body: stream, cancel: () => stream.cancel() };
  }

  /** POST /_agentpools/api/flows/<pool>/run {code, kind?, inputs?, timeoutMs?}: the run's result, console and error. */
  private async runFlowsRequest(pool: string, req: http.IncomingMessage, json: (status: number, value: unknown) => void): Promise<void> {
    let request: { code?: unknown; kind?: unknown; inputs?: unknown; timeoutMs?: unknown };
    try {
      request = (await readJsonBody(req, "{code, kind?, inputs?, timeoutMs?}")) as typeof request;
    } catch (error) {
      return json((error as HttpError).status ?? 400, { error: (error as Error).message });
    }
    const kind = request.kind ?? "expression";
    if (typeof request.code !== "string" || (kind !== "expression" && kind !== "block")) {
      return json(400, { error: 'code must be a string and kind "expression" (default) or "block"' });
    }
    // Left out, the agent's own default (FLOWS_RUN_TIMEOUT) applies.
    const timeoutMs = request.timeoutMs === undefined ? undefined : Number(request.timeoutMs);
    if (timeoutMs !== undefined && !(Number.isInteger(timeoutMs) && timeoutMs >= 1 && timeoutMs <= FLOWS_RUN_TIMEOUT_MAX_MS)) {
      return json(400, { error: `timeoutMs must be an integer from 1 to ${FLOWS_RUN_TIMEOUT_MAX_MS}` });
    }
    try {
      json(200, await this.flows.run(pool, { kind, code: request.code, inputs: request.inputs }, timeoutMs));
    } catch (error) {
      json(error instanceof HttpError ? error.status : 502, { error: (error as Error).message });
    }
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? "/";
    const json = (status: number, value: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(value, null, 1));
    };
    if (url === "/" || url === "/_agentpools/status") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(renderStatusPage(this.summary()));
      return;
    }
    if (url === API_PATH) return json(200, { pools: this.summary() });
    const flowsRun = FLOWS_RUN_PATH.exec(url);
    if (flowsRun && req.method === "POST") return void this.runFlowsRequest(flowsRun[1], req, json);
    if (this.workers.handle(req, res, json)) return;
    // The HTTP entry for plain clients: /<pool>/<path>, e.g. git clone http://gateway/<pool>/group/repo.git
    const match = /^\/([A-Za-z0-9][A-Za-z0-9_-]*)(\/[^]*)?$/.exec(url);
    if (!match || !this.pools.has(match[1])) return json(404, { error: `no pool at ${url.split("?")[0]}` });
    if (this.pools.get(match[1])?.definition.kind === "flows") return json(404, { error: `${match[1]} is a Flows pool: POST /_agentpools/api/flows/${match[1]}/run` });
    if (this.pools.get(match[1])?.definition.kind === "worker") return json(404, { error: `${match[1]} is a worker pool: POST ${WORKER_API}/${match[1]}/runs` });
    const hasBody = req.headers["content-length"] !== undefined || req.headers["transfer-encoding"] !== undefined;
    this.forward(match[1], req.method ?? "GET", match[2] ?? "/", forwardableHeaders(req.headers), hasBody ? req : undefined).then(
      (response) => {
        try {
          res.writeHead(response.status, response.headers);
        } catch (error) {
          // The agent's headers are not valid HTTP/1.1 (the agent is not trusted to be well-formed).
          response.cancel();
          return json(502, { error: `the agent's answer cannot be forwarded: ${(error as Error).message}` });
        }
        // A client that goes away cancels the request at the agent.
        res.once("close", () => {
          if (!res.writableFinished) response.cancel();
        });
        response.body.once("error", () => res.destroy());
        response.body.on("data", (chunk: Buffer) => streamed(chunk.length));
        response.body.pipe(res);
      },
      (error: Error) => json(error instanceof HttpError ? error.status : 502, { error: error.message }),
    );
  }
}
