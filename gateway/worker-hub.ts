import { randomUUID, verify, type KeyObject } from "node:crypto";
import { appendFileSync, createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import type http from "node:http";
import type { Socket } from "node:net";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import type { Logger } from "../lib/log";
import { acceptWebSocket, isWebSocketUpgrade, parseMessage, type WebSocket } from "../protocol/websocket";
import { FINAL_STATUSES, PROOF_HEADER, proofPayload, WORKER_API, type FromWorker, type RunSpec, type RunStatus, type ToWorker } from "../protocol/worker";
import { certificateKey, sealBuffer } from "../protocol/seal";
import { HttpError, readJsonBody } from "./http";
import { secretMatches, type ConnectedAgent, type PoolDefinition } from "./pools";

/** A run as the gateway keeps it: never the plaintext of its environment or state. */
export interface WorkerRun {
  id: string;
  pool: string;
  image: string;
  commands: string[];
  sealedEnvironment?: string;
  timeoutSeconds?: number;
  stateFrom?: string;
  status: RunStatus;
  exitCode?: number;
  reason?: string;
  worker?: string;
  /** The run left state, stored sealed. */
  state: boolean;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

interface RunEntry {
  run: WorkerRun;
  lines: string[];
  followers: Set<() => void>;
  /** Sealed state held in memory when the gateway has no data directory. */
  state?: Buffer;
  lostTimer?: NodeJS.Timeout;
}

interface WorkerConnection extends ConnectedAgent {
  socket: WebSocket;
  current?: string;
  /** It refused a run as busy: no run goes to it until it reports one finished. */
  busy?: boolean;
  draining: boolean;
}

export interface WorkerHubOptions {
  /** Runs, logs and sealed state are kept here, so a restarted gateway loses nothing. */
  dataDir?: string;
  /** A running run whose worker stays away this long is marked lost. */
  lostAfterMs?: number;
}

/** How far a launcher's signed timestamp may be from the gateway's clock. */
const PROOF_WINDOW_MS = 5 * 60_000;
const IMAGE = /^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_STATE_IN_MEMORY = 64 * 1024 * 1024;
const RUNS_PATH = new RegExp(`^${WORKER_API}/([A-Za-z0-9_-]+)/runs(?:/([0-9a-f-]{36})(/logs|/state)?)?$`);
const isFinal = (status: RunStatus) => (FINAL_STATUSES as readonly string[]).includes(status);

/**
 * The gateway's side of worker pools: a run queue per pool, the launchers' WebSockets, live
 * logs, final status and sealed run state. One run at a time per launcher; a run goes to the
 * launcher that has been idle longest.
 */
export class WorkerHub {
  private readonly runs = new Map<string, RunEntry>();
  private readonly queues = new Map<string, string[]>();
  private readonly workers = new Map<string, Set<WorkerConnection>>();
  private readonly keys = new Map<string, KeyObject>();

  constructor(
    private readonly pools: Map<string, { definition: PoolDefinition }>,
    private readonly log: Logger,
    private readonly options: WorkerHubOptions = {},
  ) {
    if (options.dataDir) this.load(options.dataDir);
  }

  private poolKey(pool: PoolDefinition): KeyObject {
    let key = this.keys.get(pool.name);
    if (!key) this.keys.set(pool.name, (key = certificateKey(pool.certificate as string)));
    return key;
  }

  /** The pool a launcher's request authenticates for: its secret and a fresh signature by the pool's key. */
  authenticate(headers: http.IncomingHttpHeaders): PoolDefinition | undefined {
    const pool = this.pools.get(String(headers["x-agentpools-pool"] ?? ""))?.definition;
    const secret = /^Bearer (.+)$/.exec(headers.authorization ?? "")?.[1] ?? "";
    if (pool?.kind !== "worker" || !pool.certificate || !secretMatches(pool, secret)) return undefined;
    const [timestamp, signature] = String(headers[PROOF_HEADER] ?? "").split(".");
    if (!signature || !(Math.abs(Date.now() - Number(timestamp)) < PROOF_WINDOW_MS)) return undefined;
    return verify("sha256", proofPayload(pool.name, timestamp), this.poolKey(pool), Buffer.from(signature, "base64url")) ? pool : undefined;
  }

  /** A launcher's upgrade request. */
  accept(req: http.IncomingMessage, socket: Socket, head: Buffer, metadata: Record<string, string>, refuse: (status: number, reason: string, details: Record<string, unknown>) => void): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (!isWebSocketUpgrade(req.headers)) return refuse(400, "not a WebSocket upgrade", { remote });
    const pool = this.authenticate(req.headers);
    if (!pool) return refuse(401, "worker pool credentials refused (secret or key proof)", { remote, pool: req.headers["x-agentpools-pool"] });
    const id = String(req.headers["x-agentpools-worker"] ?? "");
    if (!/^[0-9a-f-]{36}$/.test(id)) return refuse(400, "no worker ID", { remote });

    const webSocket = acceptWebSocket(req.headers, socket, head);
    const workers = this.workers.get(pool.name) ?? new Set();
    this.workers.set(pool.name, workers);
    // A launcher that reconnects replaces its stale connection.
    for (const stale of workers) if (stale.id === id) stale.socket.close(1001);
    const worker: WorkerConnection = { id, pool: pool.name, remote, metadata, connectedAt: new Date().toISOString(), socket: webSocket, draining: false };
    workers.add(worker);
    worker.socket.on("message", (text: string) => this.receive(worker, text));
    worker.socket.once("close", () => this.disconnected(worker));
    this.log.info("worker connected", { pool: pool.name, worker: id, remote, metadata });
  }

  private send(worker: WorkerConnection, message: ToWorker): void {
    worker.socket.send(JSON.stringify(message));
  }

  private disconnected(worker: WorkerConnection): void {
    this.workers.get(worker.pool)?.delete(worker);
    this.log.info("worker disconnected", { pool: worker.pool, worker: worker.id });
    const entry = worker.current ? this.runs.get(worker.current) : undefined;
    if (!entry || isFinal(entry.run.status)) return;
    if (entry.run.status === "queued") {
      // Sent but never accepted: it goes back to the head of the queue.
      entry.run.worker = undefined;
      this.queue(entry.run.pool).unshift(entry.run.id);
      this.dispatch(entry.run.pool);
    } else this.watchLost(entry);
  }

  /** A running run's worker is away: it has until lostAfterMs to come back and claim the run. */
  private watchLost(entry: RunEntry): void {
    clearTimeout(entry.lostTimer);
    entry.lostTimer = setTimeout(() => {
      if (isFinal(entry.run.status)) return;
      this.finish(entry, { status: "lost", reason: "the worker running it disconnected and did not come back", state: false });
    }, this.options.lostAfterMs ?? 10 * 60_000);
    entry.lostTimer.unref();
  }

  private receive(worker: WorkerConnection, text: string): void {
    const message = parseMessage<FromWorker>(text);
    if (!message) return;
    const entry = "id" in message ? this.runs.get(message.id) : undefined;
    if (entry && entry.run.pool !== worker.pool) return;
    switch (message.type) {
      case "hello":
        for (const id of message.runs) {
          const known = this.runs.get(id);
          const ours = known?.run.pool === worker.pool && !isFinal(known.run.status);
          if (ours) {
            clearTimeout(known.lostTimer);
            // Accepted just before a disconnect, so requeued here: the worker has it, take it back.
            const queued = this.queue(worker.pool).indexOf(id);
            if (queued !== -1) this.queue(worker.pool).splice(queued, 1);
            if (known.run.status === "queued") Object.assign(known.run, { status: "running", startedAt: new Date().toISOString() });
            known.run.worker = worker.id;
            worker.current = id;
          }
          this.send(worker, { type: "resume", id, lines: ours ? known.lines.length : 0, known: ours });
        }
        return this.dispatch(worker.pool);
      case "accepted":
        if (!entry || isFinal(entry.run.status)) return;
        entry.run.status = "running";
        entry.run.startedAt = new Date().toISOString();
        return this.save(entry);
      case "refused":
        if (!entry || isFinal(entry.run.status)) return;
        worker.current = undefined;
        if (message.retry) {
          entry.run.worker = undefined;
          worker.busy = true;
          this.queue(worker.pool).unshift(entry.run.id);
        } else {
          this.append(entry, 0, [`[agentpools: ${message.reason}]`]);
          this.finish(entry, { status: "refused", reason: message.reason, state: false });
        }
        return this.dispatch(worker.pool);
      case "log":
        if (entry && !isFinal(entry.run.status)) this.append(entry, message.from, message.lines);
        return;
      case "finished":
        if (!entry) return;
        if (!isFinal(entry.run.status)) {
          this.finish(entry, { status: message.status, exitCode: message.exitCode, reason: message.reason, state: message.state && this.hasState(entry) });
        }
        this.send(worker, { type: "ack", id: message.id });
        // A launcher runs one run at a time: having finished one, it is free.
        worker.current = undefined;
        worker.busy = false;
        return this.dispatch(worker.pool);
      case "draining":
        worker.draining = true;
        return;
    }
  }

  private append(entry: RunEntry, from: number, lines: string[]): void {
    const fresh = lines.slice(Math.max(0, entry.lines.length - from));
    if (from > entry.lines.length || fresh.length === 0) return;
    entry.lines.push(...fresh);
    if (this.options.dataDir) appendFileSync(this.file(entry.run.id, "log"), fresh.map((line) => line + "\n").join(""));
    for (const follower of entry.followers) follower();
  }

  private finish(entry: RunEntry, outcome: Pick<WorkerRun, "status" | "exitCode" | "reason" | "state">): void {
    clearTimeout(entry.lostTimer);
    Object.assign(entry.run, outcome, { finishedAt: new Date().toISOString() });
    this.save(entry);
    this.log.info("run finished", { pool: entry.run.pool, run: entry.run.id, status: entry.run.status, reason: entry.run.reason });
    for (const follower of entry.followers) follower();
  }

  private queue(pool: string): string[] {
    let queue = this.queues.get(pool);
    if (!queue) this.queues.set(pool, (queue = []));
    return queue;
  }

  /** Hand queued runs to idle launchers. */
  private dispatch(pool: string): void {
    const queue = this.queue(pool);
    for (const worker of this.workers.get(pool) ?? []) {
      if (queue.length === 0) return;
      if (worker.current || worker.busy || worker.draining) continue;
      const entry = this.runs.get(queue.shift() as string) as RunEntry;
      worker.current = entry.run.id;
      entry.run.worker = worker.id;
      const { id, image, commands, sealedEnvironment, timeoutSeconds, stateFrom } = entry.run;
      this.send(worker, { type: "run", run: { id, image, commands, sealedEnvironment, timeoutSeconds, stateFrom } satisfies RunSpec });
    }
  }

  /** Submit a run: {image, commands, environment?, timeoutSeconds?, stateFrom?}. The environment is sealed for the pool at once. */
  async submit(poolName: string, body: unknown): Promise<WorkerRun> {
    const pool = this.pools.get(poolName)?.definition;
    if (pool?.kind !== "worker") throw new HttpError(404, `no worker pool named ${poolName}`);
    const request = (body ?? {}) as Record<string, unknown>;
    const unknown = Object.keys(request).filter((key) => !["image", "commands", "environment", "timeoutSeconds", "stateFrom"].includes(key));
    if (unknown.length > 0) throw new HttpError(400, `unknown fields ${unknown.join(", ")}: a run is {image, commands, environment?, timeoutSeconds?, stateFrom?}`);
    const { image, commands, environment = {}, timeoutSeconds, stateFrom } = request;
    if (typeof image !== "string" || !IMAGE.test(image)) throw new HttpError(400, `image ${JSON.stringify(image)} must be an image reference such as "public.ecr.aws/docker/library/alpine:3"`);
    if (!Array.isArray(commands) || commands.length === 0 || !commands.every((c) => typeof c === "string" && c.length > 0)) throw new HttpError(400, "commands must be a non-empty list of shell commands (strings)");
    const env = environment as Record<string, unknown>;
    if (typeof env !== "object" || env === null || Array.isArray(env)) throw new HttpError(400, "environment must be an object of NAME: value");
    for (const [name, value] of Object.entries(env)) {
      if (!ENV_NAME.test(name) || typeof value !== "string") throw new HttpError(400, `environment ${JSON.stringify(name)} must be a variable name with a string value`);
    }
    if (timeoutSeconds !== undefined && !(Number.isInteger(timeoutSeconds) && (timeoutSeconds as number) >= 1 && (timeoutSeconds as number) <= 86_400)) {
      throw new HttpError(400, `timeoutSeconds ${JSON.stringify(timeoutSeconds)} must be an integer from 1 to 86400`);
    }
    if (stateFrom !== undefined) {
      const source = this.runs.get(String(stateFrom));
      if (!source || source.run.pool !== poolName || !source.run.state) throw new HttpError(400, `stateFrom ${JSON.stringify(stateFrom)} must be a finished run of pool ${poolName} that left state`);
    }
    const sealed = Object.keys(env).length > 0 ? (await sealBuffer(this.poolKey(pool), Buffer.from(JSON.stringify(env)))).toString("base64") : undefined;
    const run: WorkerRun = {
      id: randomUUID(),
      pool: poolName,
      image,
      commands: commands as string[],
      ...(sealed ? { sealedEnvironment: sealed } : {}),
      ...(timeoutSeconds !== undefined ? { timeoutSeconds: timeoutSeconds as number } : {}),
      ...(stateFrom !== undefined ? { stateFrom: String(stateFrom) } : {}),
      status: "queued",
      state: false,
      createdAt: new Date().toISOString(),
    };
    const entry: RunEntry = { run, lines: [], followers: new Set() };
    this.runs.set(run.id, entry);
    this.save(entry);
    this.queue(poolName).push(run.id);
    this.log.info("run queued", { pool: poolName, run: run.id, image });
    this.dispatch(poolName);
    return run;
  }

  get(pool: string, id: string): WorkerRun {
    const entry = this.runs.get(id);
    if (!entry || entry.run.pool !== pool) throw new HttpError(404, `no run ${id} in pool ${pool}`);
    return entry.run;
  }

  /** A run's log: what there is, then (follow) each new line as it comes, until the run ends. */
  async streamLog(pool: string, id: string, res: http.ServerResponse, follow: boolean): Promise<void> {
    this.get(pool, id);
    const entry = this.runs.get(id) as RunEntry;
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
    let sent = 0;
    const flush = () => {
      if (sent < entry.lines.length) res.write(entry.lines.slice(sent).join("\n") + "\n");
      sent = entry.lines.length;
      if (!follow || isFinal(entry.run.status)) {
        entry.followers.delete(flush);
        res.end();
      }
    };
    entry.followers.add(flush);
    res.once("close", () => entry.followers.delete(flush));
    flush();
  }

  private hasState(entry: RunEntry): boolean {
    return entry.state !== undefined || (!!this.options.dataDir && existsSync(this.file(entry.run.id, "state")));
  }

  /** PUT: the sealed state of a run, from the launcher running it. GET: for the launcher of a later run. */
  async transferState(req: http.IncomingMessage, res: http.ServerResponse, poolName: string, id: string): Promise<void> {
    const pool = this.authenticate(req.headers);
    if (!pool || pool.name !== poolName) throw new HttpError(401, "worker pool credentials refused");
    const entry = this.runs.get(id);
    if (!entry || entry.run.pool !== poolName) throw new HttpError(404, `no run ${id} in pool ${poolName}`);
    if (req.method === "PUT") {
      if (isFinal(entry.run.status) || entry.run.worker !== req.headers["x-agentpools-worker"]) throw new HttpError(409, "only the worker running a run stores its state");
      if (this.options.dataDir) {
        const file = this.file(id, "state");
        await pipeline(req, createWriteStream(`${file}.part`));
        renameSync(`${file}.part`, file);
      } else {
        // Without a data directory state is held in memory: bounded.
        // Over the bound the rest is read and dropped, so the launcher finishes sending and
        // reads the 413 rather than a reset connection.
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const chunk of req) {
          size += (chunk as Buffer).length;
          if (size <= MAX_STATE_IN_MEMORY) chunks.push(chunk as Buffer);
          else chunks.length = 0;
        }
        if (size > MAX_STATE_IN_MEMORY) throw new HttpError(413, `run state over ${MAX_STATE_IN_MEMORY} bytes needs a gateway with a data directory`);
        entry.state = Buffer.concat(chunks);
      }
      res.writeHead(204).end();
      return;
    }
    if (req.method !== "GET") throw new HttpError(405, "state is PUT by a run's worker and read with GET");
    if (!entry.run.state) throw new HttpError(404, `run ${id} left no state`);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    if (entry.state) res.end(entry.state);
    else await pipeline(createReadStream(this.file(id, "state")), res);
  }

  /** The worker API under /_agentpools/api/workers/<pool>/runs...; false if the path is not one of it. */
  handle(req: http.IncomingMessage, res: http.ServerResponse, json: (status: number, value: unknown) => void): boolean {
    // Every request to the gateway passes here first: leave the others at the cost of a prefix check.
    if (!req.url?.startsWith(WORKER_API)) return false;
    const url = new URL(req.url, "http://gateway");
    const match = RUNS_PATH.exec(url.pathname);
    if (!match) return false;
    const [, pool, id, part] = match;
    const fail = (error: Error) => {
      if (res.headersSent) res.destroy();
      else json(error instanceof HttpError ? error.status : 500, { error: error.message });
    };
    void (async () => {
      if (!id && req.method === "POST") {
        const parsed = await readJsonBody(req, "{image, commands, environment?, timeoutSeconds?, stateFrom?}");
        return json(201, this.public(await this.submit(pool, parsed)));
      }
      if (!id && req.method === "GET") {
        if (this.pools.get(pool)?.definition.kind !== "worker") throw new HttpError(404, `no worker pool named ${pool}`);
        return json(200, { runs: [...this.runs.values()].filter((e) => e.run.pool === pool).map((e) => this.public(e.run)) });
      }
      if (part === "/state") return this.transferState(req, res, pool, id);
      if (req.method !== "GET" || !id) throw new HttpError(405, "method not allowed");
      if (part === "/logs") return this.streamLog(pool, id, res, url.searchParams.get("follow") === "1");
      return json(200, { ...this.public(this.get(pool, id)), logLines: (this.runs.get(id) as RunEntry).lines.length });
    })().catch(fail);
    return true;
  }

  /** A run as the API shows it: the sealed environment stays inside. */
  private public(run: WorkerRun) {
    const { sealedEnvironment, ...shown } = run;
    return { ...shown, environmentSealed: sealedEnvironment !== undefined };
  }

  summary(pool: string) {
    const workers = [...(this.workers.get(pool) ?? [])];
    const runs = [...this.runs.values()].filter((e) => e.run.pool === pool).map((e) => e.run);
    return {
      connections: workers.filter((w) => !w.draining).length,
      activeRequests: workers.filter((w) => w.current).length,
      queued: this.queue(pool).length,
      running: runs.filter((r) => r.status === "running").length,
      agents: workers.map((w) => ({ id: w.id, remote: w.remote, connectedAt: w.connectedAt, metadata: w.metadata, active: w.current ? 1 : 0, parallelism: 1, currentRun: w.current, draining: w.draining })),
    };
  }

  close(): void {
    for (const workers of this.workers.values()) for (const worker of workers) worker.socket.close(1001);
    for (const entry of this.runs.values()) clearTimeout(entry.lostTimer);
  }

  private file(id: string, kind: "json" | "log" | "state"): string {
    return path.join(this.options.dataDir as string, "runs", `${id}.${kind}`);
  }

  private save(entry: RunEntry): void {
    if (!this.options.dataDir) return;
    const file = this.file(entry.run.id, "json");
    writeFileSync(`${file}.tmp`, JSON.stringify(entry.run));
    renameSync(`${file}.tmp`, file);
  }

  /** Runs of an earlier gateway: queued ones queue again; running ones wait for their worker. */
  private load(dataDir: string): void {
    mkdirSync(path.join(dataDir, "runs"), { recursive: true, mode: 0o700 });
    const loaded: RunEntry[] = [];
    for (const name of readdirSync(path.join(dataDir, "runs"))) {
      if (!name.endsWith(".json")) continue;
      const run = JSON.parse(readFileSync(path.join(dataDir, "runs", name), "utf8")) as WorkerRun;
      if (!this.pools.has(run.pool)) continue;
      const log = this.file(run.id, "log");
      const lines = existsSync(log) ? readFileSync(log, "utf8").split("\n").slice(0, -1) : [];
      loaded.push({ run, lines, followers: new Set() });
    }
    for (const entry of loaded.sort((a, b) => a.run.createdAt.localeCompare(b.run.createdAt))) {
      this.runs.set(entry.run.id, entry);
      if (entry.run.status === "queued") {
        entry.run.worker = undefined;
        this.queue(entry.run.pool).push(entry.run.id);
      } else if (entry.run.status === "running") this.watchLost(entry);
    }
  }
}
