import http from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { Readable } from "node:stream";
import { createLogger, type Logger } from "../lib/log";
import { METADATA_HEADER } from "../protocol/link";
import { MAX_REQUEST_HEADERS, redactTarget, requestHeaders, type HeaderMap } from "../protocol/vcs";
import { FLOWS_MAX_RUN_TIMEOUT_MS } from "../protocol/flows";
import { KEY_REVOKED, ServiceAuth, type ServiceKeyDefinition } from "./auth";
import { FlowsHub } from "./flows-hub";
import { HttpError, JsonText, readJsonBody } from "./http";
import { WORKER_API } from "../protocol/worker";
import { readTarget, type Target } from "./target";
import { WorkerHub, type WorkerHubOptions } from "./worker-hub";
import { type PoolDefinition } from "./pools";
import { renderStatusPage } from "./status-page";
import { renderMetrics } from "./metrics";
import { VcsHub, type VcsHubOptions } from "./vcs-hub";
import {
  checkedRequest,
  EXCHANGE_DEFAULTS,
  exchange,
  serveClient,
  WRITE_BODY_LIMIT,
  type ExchangeLimits,
  type ForwardedRequest,
  type ForwardedResponse,
} from "./vcs-proxy";
import { bodyRule, checkedWrite } from "./vcs-writes";

export { API_PATH } from "./target";
export type { ForwardedResponse } from "./vcs-proxy";

/** The public side's time limits (ms): a head, a whole request, an idle connection. */
export const PUBLIC_TIMEOUTS = { headersTimeoutMs: 10_000, requestTimeoutMs: 120_000, idleTimeoutMs: 300_000 };

export interface GatewayOptions
  extends WorkerHubOptions, VcsHubOptions, Partial<ExchangeLimits>, Partial<typeof PUBLIC_TIMEOUTS> {
  pools: PoolDefinition[];
  /** Service keys (hashed): every service-side endpoint needs one. None: nothing is served but to agents. */
  keys?: ServiceKeyDefinition[];
  /** Serve the status page without a key to loopback clients (a browser on this host). */
  statusOnLoopback?: boolean;
  host?: string;
  port?: number;
  /** PEM certificate and key: required unless the gateway listens on loopback only. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  log?: Logger;
  /** Keepalive on every agent link: a ping every interval; one unanswered for the timeout drops the agent. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** Beyond a Flows run's timeout, how long to wait for its answer before cancelling it with 504; 10 s by default. */
  flowsAnswerGraceMs?: number;
  /** The most bytes of Flows answers given but not yet taken (256 MiB by default); one key at most clientShare. */
  flowsAnswerBudgetBytes?: number;
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
 * The service side the agents dial. Agents authenticate with their pool's token; a service
 * with a service key (auth.ts). VCS agents serve HTTP/2 on their outbound connection and the
 * gateway sends each request down one of its pool's agents (vcs-hub.ts, vcs-proxy.ts);
 * Flows agents and launchers keep a WebSocket (flows-hub.ts, worker-hub.ts).
 */
export class Gateway {
  private readonly pools = new Map<string, { definition: PoolDefinition }>();
  private readonly server: http.Server | https.Server;
  private readonly log: Logger;
  private readonly sockets = new Set<Socket>();
  private readonly targets = new WeakMap<http.IncomingMessage, Partial<Target> & { error?: string }>();
  /** How long a refused upgrade's connection may stay open for its client to read the refusal. */
  private readonly lingerMs: number;
  private readonly auth: ServiceAuth;
  private readonly limits: ExchangeLimits;
  /** The VCS pools' agents, their streams and queues. */
  readonly vcs: VcsHub;
  /** The Flows pools' agents and their runs. */
  readonly flows: FlowsHub;
  /** The worker pools' run queues and launchers. */
  readonly workers: WorkerHub;

  constructor(private readonly options: GatewayOptions) {
    const host = options.host ?? "127.0.0.1";
    if (!options.tls && !isLoopback(host))
      throw new Error(`plain HTTP is allowed on loopback only; give tls (certificate and key) to listen on ${host}`);
    for (const definition of options.pools) this.pools.set(definition.name, { definition });
    this.log = options.log ?? createLogger("gateway");
    this.auth = new ServiceAuth(options.keys ?? [], options.statusOnLoopback);
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    const { stallTimeoutMs, exchangeTimeoutMs } = { ...EXCHANGE_DEFAULTS, ...given };
    this.limits = { stallTimeoutMs, exchangeTimeoutMs };
    this.vcs = new VcsHub(this.pools, this.log, options);
    this.flows = new FlowsHub(this.pools, this.log, options);
    const { dataDir, store, leaseMs, pingIntervalMs, pingTimeoutMs, retention, pruneIntervalMs, maxAgentsPerPool } =
      options;
    const workerOptions = {
      dataDir,
      store,
      leaseMs,
      pingIntervalMs,
      pingTimeoutMs,
      retention,
      pruneIntervalMs,
      maxAgentsPerPool,
      maxQueued: options.maxQueued,
      clientShare: options.clientShare,
    };
    this.workers = new WorkerHub(this.pools, this.log, workerOptions);
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.handle(req, res);
    const { headersTimeoutMs, requestTimeoutMs, idleTimeoutMs } = { ...PUBLIC_TIMEOUTS, ...given };
    this.lingerMs = headersTimeoutMs;
    // Node's strict parser, each client's own framing checked (vcs-proxy.ts); a head, a whole
    // request and an idle connection each have a deadline (checked every quarter of the shortest).
    // Only an agent's connect path is an upgrade: any other request asking for one (h2c, say)
    // is served as the plain request it also is (Node 24.9+; older ones refuse it in accept()).
    const serverOptions: http.ServerOptions = {
      insecureHTTPParser: false,
      joinDuplicateHeaders: false,
      requireHostHeader: true,
      headersTimeout: headersTimeoutMs,
      requestTimeout: requestTimeoutMs,
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.min(headersTimeoutMs, requestTimeoutMs) / 4)),
      shouldUpgradeCallback: (req) => this.read(req).route?.kind === "connect",
    };
    this.server = options.tls
      ? https.createServer({ ...serverOptions, cert: options.tls.cert, key: options.tls.key }, handler)
      : http.createServer(serverOptions, handler);
    this.server.timeout = idleTimeoutMs;
    this.server.keepAliveTimeout = Math.min(this.server.keepAliveTimeout, idleTimeoutMs);
    this.server.on("upgrade", (req, socket: Socket, head) => this.accept(req, socket, head));
    // Node takes its own error listener off a socket it hands to 'upgrade': every socket gets
    // ours from its first moment, so a reset on any of them (an agent's, a refused client's)
    // is that socket's end (it closes itself), never an uncaught error that stops the gateway.
    const track = (socket: Socket) => {
      socket.on("error", () => undefined);
      if (this.sockets.has(socket)) return;
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    };
    this.server.on("connection", track);
    if (options.tls) this.server.on("secureConnection", track);
  }

  /** A request's target, read once (target.ts): the upgrade decision, the credential and every hub use this reading. */
  private read(req: http.IncomingMessage): Partial<Target> & { error?: string } {
    let read = this.targets.get(req);
    if (!read) {
      const target = readTarget(req.url ?? "");
      read = typeof target === "string" ? { error: target } : target;
      this.targets.set(req, read);
    }
    return read;
  }

  async listen(): Promise<string> {
    await this.workers.start();
    await new Promise<void>((resolve) =>
      this.server.listen(this.options.port ?? 0, this.options.host ?? "127.0.0.1", resolve),
    );
    const { port } = this.server.address() as AddressInfo;
    const url = `${this.options.tls ? "https" : "http"}://${this.options.host ?? "127.0.0.1"}:${port}`;
    const keys = this.options.keys?.length ?? 0;
    this.log.info("gateway listening", { url, pools: [...this.pools.keys()], serviceKeys: keys });
    return url;
  }

  /** Stop listening and drop every agent (they will reconnect to the next gateway). */
  async close(): Promise<void> {
    this.vcs.close();
    this.flows.close();
    await this.workers.close();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Pools with their connected agents: those a key may use, or all. */
  summary(key?: ServiceKeyDefinition) {
    return [...this.pools.values()]
      .filter(({ definition }) => this.auth.allows(key, definition.name))
      .map(({ definition }) => {
        const { name, kind } = definition;
        if (kind === "flows") return { name, kind, ...this.flows.summary(name) };
        if (kind === "worker") return { name, kind, waiting: 0, ...this.workers.summary(name, key?.id ?? "") };
        return { name, kind, ...this.vcs.summary(name) };
      });
  }

  /**
   * Refuse an upgrade: the answer, then the connection's end. The gateway allows half-open
   * connections, so a client that never closes its side is cut when its FIN arrives or the
   * linger passes; nothing the client sends meanwhile is read as anything.
   */
  private refuse(socket: Socket, status: number, reason: string, details: Record<string, unknown>): void {
    this.log.warn("agent refused", { reason, ...details });
    socket.setTimeout(this.lingerMs, () => socket.destroy());
    socket.once("end", () => socket.destroy());
    socket.resume();
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${JSON.stringify({ error: reason })}`,
    );
  }

  /**
   * An agent's upgrade: each hub checks that the credentials are of its own pool kind. Until
   * one admits it, the socket keeps a deadline; only an admitted agent's link has none (it has
   * its own keepalive).
   */
  private accept(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    let refused = false;
    const refuse = (status: number, reason: string, details: Record<string, unknown>) => {
      refused = true;
      this.refuse(socket, status, reason, details);
    };
    const route = this.read(req).route;
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (route?.kind !== "connect")
      return refuse(400, "not an agent connection", { remote, url: redactTarget(req.url ?? "") });
    const metadata = readMetadata(req.headers[METADATA_HEADER]);
    const hub = route.link === "vcs" ? this.vcs : route.link === "flows" ? this.flows : this.workers;
    hub.accept(req, socket, head, metadata, refuse);
    if (!refused) socket.setTimeout(0);
  }

  /**
   * Service keys changed (gateway.json edited by add-key or remove-key): in force from the next request. What a
   * removed or narrowed key has waiting (VCS requests queued, Flows runs not yet answered) ends at once with 401;
   * exchanges already streaming finish. A rotated key's worker log streams are cut, its bodies still coming refused.
   */
  setKeys(keys: ServiceKeyDefinition[]): void {
    const { added, removed } = this.auth.replace(keys);
    if (added.length + removed.length > 0) this.log.info("service keys changed", { added, removed, keys: keys.length });
    if (removed.length === 0) return;
    const mayUse = (client: string, pool: string) => this.auth.mayUse(client, pool);
    this.vcs.keysChanged(mayUse);
    this.flows.keysChanged(mayUse);
    this.workers
      .keysChanged(mayUse)
      .catch((error: Error) => this.log.error("ending a removed key's queued runs failed", { error: error.message }));
  }

  /** Whether a request's key (none: a route that takes none) is still served, with its secret, and may use this pool. */
  private stillAllowed(key: ServiceKeyDefinition | undefined, pool: string): boolean {
    return !key || (this.auth.stillServes(key) && this.auth.mayUse(key.id, pool));
  }

  /** A VCS pool by name, or why it is not one. */
  private vcsPool(pool: string): void {
    const definition = this.pools.get(pool)?.definition;
    if (!definition) throw new HttpError(404, `no pool named ${pool}`);
    if (definition.kind === "flows")
      throw new HttpError(404, `${pool} is a Flows pool: POST /_agentpools/api/flows/${pool}/run`);
    if (definition.kind === "worker")
      throw new HttpError(404, `${pool} is a worker pool: POST ${WORKER_API}/${pool}/runs`);
  }

  /**
   * Send one request through a pool's agent: `private://<pool>/<path>`, for a service that
   * embeds the gateway. The body streams both ways; `cancel()` abandons the request, at the
   * agent and the VCS too.
   */
  async request(
    target: string,
    init: { method?: string; headers?: HeaderMap; body?: Readable; length?: number } = {},
  ): Promise<ForwardedResponse> {
    // Read as the HTTP entry reads /<pool>/<path>, by the same rules.
    const read = target.startsWith("private://") ? readTarget(`/${target.slice("private://".length)}`) : undefined;
    if (typeof read !== "object" || read.route.kind !== "vcs")
      throw new HttpError(
        400,
        `${target} is not a private://<pool>/<path> address${typeof read === "string" ? `: ${read}` : ""}`,
      );
    const { pool, path } = read.route;
    this.vcsPool(pool);
    const { body, length } = init;
    // Methods are case-sensitive in HTTP: "post" is no POST to the write check, so it is made one.
    const method = (init.method ?? "GET").toUpperCase();
    // The rules of the HTTP entry: the header allowlist, and writes checked before they cross.
    const headers = requestHeaders(init.headers ?? {});
    const rule = bodyRule(method, path, String(headers["content-type"] ?? ""), !!body);
    if (rule !== "stream" && rule !== "check") throw new HttpError(400, rule);
    let request: ForwardedRequest = { method, path, headers, hasBody: !!body, length };
    let sent = body;
    if (rule === "check" && body) {
      const checked = checkedWrite(path, await readJsonBody(body, "a JSON object", WRITE_BODY_LIMIT));
      if (typeof checked === "string") throw new HttpError(400, checked);
      request = checkedRequest(request, checked);
      sent = Readable.from([checked]);
    }
    const slot = await this.vcs.acquire(pool, "private://");
    return exchange(this.vcs, slot, request, sent, this.limits);
  }

  /** POST /_agentpools/api/flows/<pool>/run {code, kind?, inputs?, timeoutMs?}: the run's result, console and error. */
  private async runFlowsRequest(
    pool: string,
    client: string,
    req: http.IncomingMessage,
    /** Settles once the answer is delivered, or the client gone. */
    taken: Promise<unknown>,
    json: (status: number, value: unknown) => void,
    fail: (error: Error) => void,
  ): Promise<void> {
    let request: { code?: unknown; kind?: unknown; inputs?: unknown; timeoutMs?: unknown };
    try {
      request = (await readJsonBody(req, "{code, kind?, inputs?, timeoutMs?}")) as typeof request;
    } catch (error) {
      return json((error as HttpError).status ?? 400, { error: (error as Error).message });
    }
    // The key was checked before the body, which may take a while to come: it may have been removed meanwhile.
    if (!this.auth.mayUse(client, pool)) return json(401, { error: KEY_REVOKED(pool) });
    // JSON that is no object (null, a list, a number) is no request.
    if (typeof request !== "object" || request === null || Array.isArray(request))
      return json(400, { error: "the body must be a JSON object: {code, kind?, inputs?, timeoutMs?}" });
    const kind = request.kind ?? "expression";
    if (typeof request.code !== "string" || (kind !== "expression" && kind !== "block")) {
      return json(400, { error: 'code must be a string and kind "expression" (default) or "block"' });
    }
    // Without timeoutMs the agent's own default (FLOWS_RUN_TIMEOUT) applies.
    // (A number, or its text: Number() of an object whose toString is no function would throw.)
    const given = request.timeoutMs;
    const timeoutMs =
      given === undefined ? undefined : typeof given === "number" || typeof given === "string" ? Number(given) : NaN;
    const allowed =
      timeoutMs === undefined ||
      (Number.isInteger(timeoutMs) && timeoutMs >= 1 && timeoutMs <= FLOWS_MAX_RUN_TIMEOUT_MS);
    if (!allowed) {
      return json(400, { error: `timeoutMs must be an integer from 1 to ${FLOWS_MAX_RUN_TIMEOUT_MS}` });
    }
    try {
      const job = { kind, code: request.code, inputs: request.inputs } as const;
      json(200, await this.flows.run(pool, job, timeoutMs, client, taken));
    } catch (error) {
      fail(error as Error);
    }
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const json = (status: number, value: unknown, headers: Record<string, string> = {}) => {
      if (res.headersSent || res.destroyed) return void res.destroy();
      let body: string;
      try {
        body = value instanceof JsonText ? value.text : JSON.stringify(value);
      } catch (error) {
        // An answer too large to write (a string past V8's limit) fails that request, not the gateway.
        this.log.error("an answer could not be written", { path: path(), error: (error as Error).message });
        [status, body] = [500, JSON.stringify({ error: "the answer could not be written" })];
      }
      // A request refused before any work (unreadable, too many fields, no or a wrong key) ends its connection.
      const refused = !routed && (status === 400 || status === 401 || status === 403 || status === 431);
      // (Built in place: spreads into a literal are a runtime call each, on every answer.)
      const head: Record<string, string> = { "content-type": "application/json" };
      if (refused) head.connection = "close";
      res.writeHead(status, Object.assign(head, headers));
      res.end(body);
      if (refused) res.once("finish", () => req.socket.destroySoon());
      // An answer its client does not take (up to 7 MiB of a run's result) is dropped at the stall deadline, not
      // held. One the kernel took whole holds nothing here.
      if (res.writableLength === 0) return;
      const stalled = setTimeout(() => {
        this.log.info("answer not taken within the stall deadline: dropped", {
          remote: req.socket.remoteAddress,
          path: path(),
        });
        res.destroy();
      }, this.limits.stallTimeoutMs);
      res.once("finish", () => clearTimeout(stalled)).once("close", () => clearTimeout(stalled));
    };
    let routed = false;
    const fail = (error: Error) => {
      const status = error instanceof HttpError ? error.status : 502;
      const retryAfter = error instanceof HttpError ? error.retryAfter : undefined;
      json(status, { error: error.message }, retryAfter ? { "retry-after": String(retryAfter) } : {});
    };
    // Only a log line or a 404 shows it.
    const path = () => redactTarget(req.url ?? "");
    // More fields than an agent's stream carries: refused here, clearly, before anything crosses.
    if (req.rawHeaders.length / 2 > MAX_REQUEST_HEADERS)
      return json(431, { error: `a request has at most ${MAX_REQUEST_HEADERS} header fields` });
    const { route, query, error } = this.read(req);
    if (!route || !query) {
      this.log.info("request refused", { status: 400, remote: req.socket.remoteAddress, path: path(), reason: error });
      return json(400, { error });
    }
    const verdict = this.auth.check(req, route);
    if (!verdict.ok) {
      const { status, error } = verdict;
      this.log.info("request refused", { status, route: route.kind, remote: req.socket.remoteAddress, path: path() });
      return json(status, { error }, status === 401 ? { "www-authenticate": 'Bearer realm="agentpools"' } : {});
    }
    routed = true;
    switch (route.kind) {
      case "status":
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        return void res.end(renderStatusPage(this.summary(verdict.key)));
      case "pools":
        return json(200, { pools: this.summary(verdict.key) });
      case "metrics":
        res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
        return void res.end(renderMetrics(this.summary(verdict.key)));
      case "flows-run":
        if (req.method === "POST") {
          const taken = new Promise((closed) => res.once("close", closed));
          // Whatever it throws fails that request, never the gateway (an unhandled rejection ends the process).
          return void this.runFlowsRequest(route.pool, verdict.key?.id ?? "", req, taken, json, fail).catch(fail);
        }
        break;
      case "runs":
      case "run":
      case "state":
        return this.workers.handle(
          route,
          query,
          req,
          res,
          json,
          () => this.stillAllowed(verdict.key, route.pool),
          verdict.key?.id,
        );
      case "vcs":
        try {
          this.vcsPool(route.pool);
        } catch (error) {
          return fail(error as Error);
        }
        // Each key is one client: it holds at most its share of the pool's streams.
        return serveClient(this.vcs, route.pool, verdict.key?.id ?? "", req, res, route.path, this.limits, fail);
    }
    json(404, { error: `nothing at ${path().split("?")[0]}` });
  }
}
