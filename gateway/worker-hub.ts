import { randomUUID, verify, type KeyObject } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import type http from "node:http";
import path from "node:path";
import type { Socket } from "node:net";
import { pipeline } from "node:stream/promises";
import type { Logger } from "../lib/log";
import { overCaps } from "../protocol/flows";
import { POOL_HEADER, WEBSOCKET_MAX_MESSAGE } from "../protocol/link";
import { acceptWebSocket, isWebSocketUpgrade, parseMessage, type WebSocket } from "../protocol/websocket";
import {
  FENCE_HEADER,
  FINAL_STATUSES,
  MAX_LEASES_PER_MESSAGE,
  MAX_LOG_BYTES,
  MAX_LOG_LINES,
  PROOF_HEADER,
  proofPayload,
  WORKER_HEADER,
  type FromWorker,
  type HeldLease,
  type RunStatus,
  type ToWorker,
} from "../protocol/worker";
import { certificateKey, sealBuffer } from "../protocol/seal";
import { bearerToken, KEY_REVOKED } from "./auth";
import { QUEUE_DEFAULTS, RETRY_AFTER_SECONDS, shareOf } from "./vcs-hub";
import { HttpError, readJsonBody } from "./http";
import type { Route } from "./target";
import { poolFull, secretMatches, type ConnectedAgent, type PoolDefinition, type RefuseUpgrade } from "./pools";
import { SqliteStore } from "./sqlite-store";
import {
  StoreError,
  type GatewayStore,
  type LeaseClaim,
  type RetentionPolicy,
  type RunOutcomeRecord,
  type RunRecord,
} from "./store";

/** A run's log as the gateway stores it: as much as an honest launcher sends, whatever a hostile one does. */
const LOG_CAP = { lines: MAX_LOG_LINES, bytes: MAX_LOG_BYTES };

/** The worker API's routes. */
export type WorkerRoute = Extract<Route, { kind: "runs" | "run" | "state" }>;

/** A run as the API shows it: never the plaintext of its environment or state. */
export type WorkerRun = RunRecord;

export interface WorkerHubOptions {
  /** Runs, logs and sealed state are kept here (gateway.db, state/), so a restarted gateway loses nothing. */
  dataDir?: string;
  /** The store itself (another backend, or a test's); dataDir is then unused. */
  store?: GatewayStore;
  /** A run's lease lasts this long unless its launcher renews it (every third of it). */
  leaseMs?: number;
  /** Launcher connections per pool (default MAX_AGENTS_PER_POOL). */
  maxAgentsPerPool?: number;
  /** Keepalive of the launchers' WebSockets. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** Finished runs kept, and how often the rest is deleted. */
  retention?: Partial<RetentionPolicy>;
  pruneIntervalMs?: number;
  /** Runs a pool holds queued, and the share of them one service key may (as a VCS pool's queue). */
  maxQueued?: number;
  clientShare?: number;
}

/** The defaults of the worker hub's settings (the gateway's configuration names them too). */
export const WORKER_DEFAULTS = {
  leaseMs: 60_000,
  retention: { runsPerKey: 1_000, maxAgeMs: 30 * 86_400_000 },
  pruneIntervalMs: 3_600_000,
} as const;

/** A run not yet final, as the gateway holds it: its stored record, who follows its log, its lease's timer. */
interface LiveRun {
  record: RunRecord;
  followers: Set<() => void>;
  leaseTimer?: NodeJS.Timeout;
  /** When the gateway last asked the launcher for log lines it lacks, if none came since. */
  askedAt?: number;
  /** Storing its log failed since that ask: lines are missing for want of storage, not of sending. */
  logFailed?: boolean;
}

interface WorkerConnection extends ConnectedAgent {
  socket: WebSocket;
  /** The run it holds a lease of and has not finished (offered, accepted or running). */
  current?: string;
  /** It refused a run as busy: no run goes to it until it reports one finished. */
  busy?: boolean;
  draining: boolean;
  /** Said hello: until then it may still hold a run the gateway does not know it has. */
  greeted: boolean;
  /** When it was last handed a run (a counter): among idle launchers the least recent gets the next. */
  lastUsed: number;
  /** It broke the protocol and is being cut off: the messages it sent before that are not read. */
  cutOff?: boolean;
  /** It said hello on this connection. */
  helloed?: boolean;
}

/** Names the process of the gateway serving a data directory: main.js hand-over-runs refuses while it runs. */
const SERVING_FILE = "gateway.pid";

/** The process id of a live gateway serving this data directory, if one does (a crashed one's file is stale). */
export function servingGateway(dataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(path.join(dataDir, SERVING_FILE), "utf8"));
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (error) {
    // EPERM: it lives, under another user.
    return (error as NodeJS.ErrnoException).code === "EPERM" ? pid : undefined;
  }
}

/** How far a launcher's signed timestamp may be from the gateway's clock. */
const PROOF_WINDOW_MS = 5 * 60_000;
const IMAGE = /^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Lines read from the store at a time when a log is streamed. */
const LOG_PAGE = 5_000;
/** Messages about one run, under its lease: their id and fence. */
const NAMES_A_LEASE = new Set<unknown>(["accepted", "refused", "log", "finished"]);
/** A lease as a launcher names it: a run ID and a fence the store can be asked about. */
const isLease = (lease: unknown): lease is HeldLease =>
  typeof lease === "object" &&
  lease !== null &&
  typeof (lease as HeldLease).id === "string" &&
  Number.isSafeInteger((lease as HeldLease).fence);
const isFinal = (status: RunStatus) => (FINAL_STATUSES as readonly string[]).includes(status);
const now = () => new Date().toISOString();

/**
 * The gateway's side of worker pools: a run queue per pool, the launchers' WebSockets, live
 * logs, final status and sealed run state, all kept in a GatewayStore. A run goes to an idle
 * launcher under a lease stored before it is sent (docs/protocol.md, section 7); each
 * launcher's messages are handled one after another, in order.
 */
export class WorkerHub {
  private readonly store: GatewayStore;
  private readonly live = new Map<string, LiveRun>();
  /** When each pool's key last had a run sent (`pool\nkey`: a turn number), for fair turns between keys. */
  private readonly lastServed = new Map<string, number>();
  private turns = 0;
  private readonly queues = new Map<string, string[]>();
  private readonly workers = new Map<string, Set<WorkerConnection>>();
  private readonly keys = new Map<string, KeyObject>();
  /** Per launcher ID: the tail of its messages' handling (a reconnect waits for the old connection's). */
  private readonly chains = new Map<string, Promise<void>>();
  private readonly dispatching = new Set<string>();
  private readonly redispatch = new Set<string>();
  private readonly retrying = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly leaseMs: number;
  private uses = 0;
  private closing = false;

  constructor(
    private readonly pools: Map<string, { definition: PoolDefinition }>,
    private readonly log: Logger,
    private readonly options: WorkerHubOptions = {},
  ) {
    this.store = options.store ?? new SqliteStore(options.dataDir);
    this.leaseMs = options.leaseMs ?? WORKER_DEFAULTS.leaseMs;
  }

  /**
   * Load what an earlier gateway left: only live runs (finished ones stay in the store until
   * asked for). A lease held then gets a full term from now, this gateway's: its launcher
   * could not renew it while no gateway was running, and learns the term when it returns.
   */
  async start(): Promise<void> {
    await this.store.syncPools(
      [...this.pools.values()].map(({ definition }) => ({ name: definition.name, kind: definition.kind })),
    );
    // Its runs' owners are held in memory from here on: the store's are not to change under it.
    if (this.options.dataDir && !this.options.store)
      writeFileSync(path.join(this.options.dataDir, SERVING_FILE), String(process.pid), { mode: 0o600 });
    const time = Date.now();
    for (const record of await this.store.liveRuns()) {
      if (this.pools.get(record.pool)?.definition.kind !== "worker") continue;
      const entry: LiveRun = { record, followers: new Set() };
      this.live.set(record.id, entry);
      if (record.leaseExpiresAt === undefined) {
        this.queue(record.pool).push(record.id);
        continue;
      }
      record.leaseExpiresAt = time + this.leaseMs;
      await this.store
        .renewLease(this.claimOf(record), record.leaseExpiresAt)
        .catch((error) => this.storageFailed("renew a lease", error, record));
      this.armLease(entry);
    }
    const interval = this.options.pruneIntervalMs ?? WORKER_DEFAULTS.pruneIntervalMs;
    void this.prune();
    const timer = setInterval(() => void this.prune(), interval).unref();
    this.timers.add(timer);
  }

  /** Delete finished runs beyond the retention policy (logged); a storage failure is logged and retried next time. */
  async prune(): Promise<void> {
    const policy = { ...WORKER_DEFAULTS.retention, ...this.options.retention };
    try {
      const deleted = await this.store.prune(policy, Date.now());
      if (deleted > 0) this.log.info("finished runs deleted by the retention policy", { deleted, ...policy });
    } catch (error) {
      this.storageFailed("delete finished runs", error);
    }
  }

  private poolKey(pool: PoolDefinition): KeyObject {
    let key = this.keys.get(pool.name);
    if (!key) this.keys.set(pool.name, (key = certificateKey(pool.certificate as string)));
    return key;
  }

  /** The pool a launcher's request authenticates for: its secret and a fresh signature by the pool's key. */
  authenticate(req: http.IncomingMessage): PoolDefinition | undefined {
    const { headers } = req;
    const pool = this.pools.get(String(headers[POOL_HEADER] ?? ""))?.definition;
    const secret = bearerToken(req) ?? "";
    if (pool?.kind !== "worker" || !pool.certificate || !secretMatches(pool, secret)) return undefined;
    const [timestamp, signature] = String(headers[PROOF_HEADER] ?? "").split(".");
    if (!signature || !(Math.abs(Date.now() - Number(timestamp)) < PROOF_WINDOW_MS)) return undefined;
    return verify("sha256", proofPayload(pool.name, timestamp), this.poolKey(pool), Buffer.from(signature, "base64url"))
      ? pool
      : undefined;
  }

  /** A launcher's upgrade request. */
  accept(
    req: http.IncomingMessage,
    socket: Socket,
    head: Buffer,
    metadata: Record<string, string>,
    refuse: RefuseUpgrade,
  ): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (!isWebSocketUpgrade(req.headers)) return refuse(400, "not a WebSocket upgrade", { remote });
    const pool = this.authenticate(req);
    if (!pool)
      return refuse(401, "worker pool credentials refused (secret or key proof)", {
        remote,
        pool: req.headers[POOL_HEADER],
      });
    const id = String(req.headers[WORKER_HEADER] ?? "");
    if (!/^[0-9a-f-]{36}$/.test(id)) return refuse(400, "no worker ID", { remote });
    // A launcher that reconnects takes its own stale place.
    const others = [...(this.workers.get(pool.name) ?? [])].filter((worker) => worker.id !== id).length;
    const full = poolFull(pool.name, others, this.options.maxAgentsPerPool);
    if (full) return refuse(503, full, { remote });

    const webSocket = acceptWebSocket(req.headers, socket, head);
    const workers = this.workers.get(pool.name) ?? new Set();
    this.workers.set(pool.name, workers);
    // A launcher that reconnects replaces its stale connection.
    for (const stale of workers) if (stale.id === id) stale.socket.close(1001);
    const worker: WorkerConnection = {
      id,
      pool: pool.name,
      remote,
      metadata,
      connectedAt: now(),
      socket: webSocket,
      draining: false,
      greeted: false,
      lastUsed: 0,
    };
    workers.add(worker);
    webSocket.keepAlive(this.options.pingIntervalMs, this.options.pingTimeoutMs);
    webSocket.once("timeout", () =>
      this.log.warn("worker stopped answering pings: disconnected", { pool: pool.name, worker: id, remote }),
    );
    webSocket.on("message", (text: string) => this.serially(id, () => this.receive(worker, text)));
    webSocket.once("close", () => {
      workers.delete(worker);
      this.log.info("worker disconnected", { pool: worker.pool, worker: id, holding: worker.current });
    });
    this.log.info("worker connected", { pool: pool.name, worker: id, remote, metadata });
  }

  /** Run one launcher's handlers in order; a failure is logged, never thrown into the socket's event. */
  private serially(worker: string, task: () => Promise<void>): void {
    const tail = (this.chains.get(worker) ?? Promise.resolve()).then(task).catch((error) => {
      if (error instanceof StoreError) this.storageFailed("handle a launcher's message", error, undefined, { worker });
      else if (!this.closing)
        this.log.error("a launcher's message failed", { worker, error: (error as Error).message });
    });
    this.chains.set(worker, tail);
    void tail.then(() => this.chains.get(worker) === tail && this.chains.delete(worker));
  }

  /** A launcher that broke the protocol: its link closed (1008), said once, nothing more of it read. */
  private cut(worker: WorkerConnection, why: string, details: Record<string, unknown> = {}): void {
    worker.cutOff = true;
    this.log.warn(`a launcher broke the protocol (${why}): disconnected`, {
      pool: worker.pool,
      worker: worker.id,
      ...details,
    });
    worker.socket.close(1008);
  }

  private send(worker: WorkerConnection, message: ToWorker): void {
    // Nothing more while a message's worth waits to leave: a launcher that sends and never reads (renewals of leases
    // it does not hold, each answered) fills no memory here. What is not sent comes again: a lease's answer at its next
    // renewal, a run's offer once its lease lapses.
    if (worker.socket.open && worker.socket.buffered() < WEBSOCKET_MAX_MESSAGE)
      worker.socket.send(JSON.stringify(message));
  }

  /** A storage failure: one log line; the request or message that needed it fails, nothing else does. */
  private storageFailed(what: string, error: unknown, run?: RunRecord, details: Record<string, unknown> = {}): void {
    if (this.closing) return;
    if (!(error instanceof StoreError)) throw error;
    this.log.error("the store refused a write", {
      what,
      status: error.status,
      error: error.message,
      ...(run ? { pool: run.pool, run: run.id } : {}),
      ...details,
    });
  }

  private claimOf(record: RunRecord): LeaseClaim {
    return { run: record.id, worker: record.worker as string, fence: record.fence };
  }

  /** The live run whose lease this launcher holds under this fence. */
  private held(worker: WorkerConnection, id: string, fence: number): LiveRun | undefined {
    const entry = this.live.get(id);
    return entry && entry.record.pool === worker.pool && this.holds(entry.record, worker.id, fence) ? entry : undefined;
  }

  private holds(record: RunRecord, worker: string, fence: number): boolean {
    return record.worker === worker && record.fence === fence && record.leaseExpiresAt !== undefined;
  }

  private receive(worker: WorkerConnection, text: string): Promise<void> {
    // A launcher's message is a few objects and lists (its largest, a log resent, is lines of text): one that holds
    // more than a Flows answer may costs more to parse than it could mean, and is no honest launcher's.
    const caps = worker.cutOff ? undefined : overCaps(text);
    if (caps) {
      this.cut(worker, "a message over the caps of a value", { caps });
      return Promise.resolve();
    }
    const message = parseMessage<FromWorker>(text);
    if (typeof message !== "object" || message === null || this.closing || worker.cutOff) return Promise.resolve();
    // What the store is asked about is a run ID (a string) under a fence (an integer): anything else is no lease of
    // this gateway's, and is not answered (node:sqlite would read an object as named parameters, and throw).
    if (NAMES_A_LEASE.has(message.type) && !isLease(message)) return Promise.resolve();
    switch (message.type) {
      case "hello":
      case "renew": {
        const named = Array.isArray(message.leases) ? message.leases : [];
        // Each lease named costs a lookup and an answer: a launcher holds a handful, so more is no honest launcher.
        // A hello is said once a connection: each costs a pass over every live run and a dispatch.
        if (named.length > MAX_LEASES_PER_MESSAGE || (message.type === "hello" && worker.helloed)) {
          this.cut(worker, "a second hello, or more leases than a launcher holds", {
            message: message.type,
            leases: named.length,
            max: MAX_LEASES_PER_MESSAGE,
          });
          return Promise.resolve();
        }
        if (message.type === "hello") worker.helloed = true;
        const leases = named.filter(isLease);
        return message.type === "hello" ? this.hello(worker, leases) : this.renew(worker, leases);
      }
      case "accepted":
        return this.accepted(worker, message.id, message.fence);
      case "refused":
        return this.refused(worker, message);
      case "log":
        return this.logLines(worker, message);
      case "finished":
        return this.finished(worker, message);
      case "draining":
        worker.draining = true;
        return Promise.resolve();
    }
    return Promise.resolve();
  }

  /** A launcher (re)connected and presents the leases it holds: each stands, or is revoked. */
  private async hello(worker: WorkerConnection, leases: HeldLease[]): Promise<void> {
    const presented = new Set<string>();
    for (const lease of leases) {
      presented.add(lease.id);
      const entry = this.held(worker, lease.id, lease.fence);
      if (!entry) {
        await this.notHeld(worker, lease.id, lease.fence);
        continue;
      }
      await this.extend(entry);
      const { record } = entry;
      // Its start not stored yet (the gateway went away before): the lease is valid, so it is now.
      if (record.status === "queued" && !(await this.recordStart(entry))) {
        await this.notHeld(worker, lease.id, lease.fence);
        continue;
      }
      worker.current = record.id;
      worker.lastUsed = ++this.uses;
      // Start it if it has not, and send what the gateway lacks.
      this.sendStart(worker, record);
    }
    // Runs leased to it that it does not have: it never got the offer, or no longer has the run.
    for (const entry of [...this.live.values()]) {
      const { record } = entry;
      if (record.worker !== worker.id || record.leaseExpiresAt === undefined || presented.has(record.id)) continue;
      if (record.status === "queued") await this.requeue(entry);
      else
        await this.end(entry, {
          status: "lost",
          reason: "the launcher running it reconnected without it",
          state: false,
        });
    }
    worker.greeted = true;
    await this.dispatch(worker.pool);
  }

  /** A lease the launcher presents but does not hold: ack an outcome already stored from it, else revoke. */
  private async notHeld(worker: WorkerConnection, id: string, fence: number): Promise<void> {
    const record = this.live.get(id)?.record ?? (await this.store.getRun(id));
    const ours = record && record.pool === worker.pool && record.worker === worker.id && record.fence === fence;
    if (ours && isFinal(record.status) && record.status !== "lost") return this.send(worker, { type: "ack", id });
    this.send(worker, {
      type: "revoked",
      id,
      reason:
        !record || record.pool !== worker.pool
          ? "the gateway does not know this run"
          : ours
            ? `the run is ${record.status}`
            : "its lease was given to another launcher",
    });
  }

  private async accepted(worker: WorkerConnection, id: string, fence: number): Promise<void> {
    const entry = this.held(worker, id, fence);
    if (!entry || (entry.record.status === "queued" && !(await this.recordStart(entry))))
      return this.notHeld(worker, id, fence);
    worker.current = id;
    this.sendStart(worker, entry.record);
  }

  private sendStart(worker: WorkerConnection, { id, fence, logLines }: RunRecord): void {
    this.send(worker, { type: "start", id, fence, lines: logLines, termMs: this.leaseMs });
  }

  /** The run is running under its lease: stored before "start" is sent, so a launcher runs only what is stored. */
  private async recordStart(entry: LiveRun): Promise<boolean> {
    const startedAt = now();
    if (!(await this.store.startRun(this.claimOf(entry.record), startedAt))) return false;
    Object.assign(entry.record, { status: "running", startedAt });
    this.notify(entry);
    return true;
  }

  private async refused(worker: WorkerConnection, message: Extract<FromWorker, { type: "refused" }>): Promise<void> {
    const entry = this.held(worker, message.id, message.fence);
    if (!entry) return;
    if (worker.current === message.id) worker.current = undefined;
    if (message.retry) {
      worker.busy = true;
      await this.requeue(entry);
    } else {
      // (A value String() cannot convert would throw: a launcher's text, or none.)
      const reason = typeof message.reason === "string" ? message.reason : "refused by the launcher";
      await this.end(entry, { status: "refused", reason, state: false }, `[agentpools: ${reason}]`);
    }
    await this.dispatch(worker.pool);
  }

  private async renew(worker: WorkerConnection, leases: { id: string; fence: number }[]): Promise<void> {
    for (const lease of leases) {
      const entry = this.held(worker, lease.id, lease.fence);
      if (entry) await this.extend(entry);
      else await this.notHeld(worker, lease.id, lease.fence);
    }
  }

  /** Another term for a held lease; kept in memory even if the store cannot record it, so runs in flight go on. */
  private async extend(entry: LiveRun): Promise<void> {
    const expiresAt = Date.now() + this.leaseMs;
    await this.store
      .renewLease(this.claimOf(entry.record), expiresAt)
      .catch((error) => this.storageFailed("renew a lease", error, entry.record));
    entry.record.leaseExpiresAt = expiresAt;
    this.armLease(entry);
  }

  private async logLines(worker: WorkerConnection, message: Extract<FromWorker, { type: "log" }>): Promise<void> {
    const entry = this.held(worker, message.id, message.fence);
    // Lines are text, from an index: anything else is no log (String() and Number() of some values would throw).
    if (
      entry?.record.status !== "running" ||
      !Array.isArray(message.lines) ||
      !message.lines.every((line) => typeof line === "string") ||
      typeof message.from !== "number"
    )
      return;
    const { record } = entry;
    const { from, lines } = message;
    const count = await this.store.appendLog(this.claimOf(record), from, lines, LOG_CAP).catch((error) => {
      entry.logFailed = true;
      return this.storageFailed("store log lines", error, record);
    });
    if (count !== undefined && count > record.logLines) {
      record.logLines = count;
      entry.askedAt = undefined;
      this.notify(entry);
    }
    // Lines were lost on the way in (a storage failure): ask for them again.
    if (from > record.logLines) this.askForLines(worker, entry);
  }

  /** Ask the launcher for the log past what is stored (and its outcome again), at most every third of a term. */
  private askForLines(worker: WorkerConnection, entry: LiveRun): void {
    if (Date.now() - (entry.askedAt ?? 0) < this.leaseMs / 3) return;
    entry.askedAt = Date.now();
    entry.logFailed = false;
    this.sendStart(worker, entry.record);
  }

  private async finished(worker: WorkerConnection, message: Extract<FromWorker, { type: "finished" }>): Promise<void> {
    const entry = this.held(worker, message.id, message.fence);
    if (entry?.record.status !== "running") return this.notHeld(worker, message.id, message.fence);
    const { record } = entry;
    // Log lines were lost to a storage failure since the last ask: no outcome before the rest.
    if (entry.logFailed) return this.askForLines(worker, entry);
    const status = (["succeeded", "failed", "timed_out"] as const).find((s) => s === message.status) ?? "failed";
    const state = message.state === true && (await this.store.hasState(record.id));
    const exitCode = Number.isInteger(message.exitCode) ? message.exitCode : undefined;
    const reason = typeof message.reason === "string" ? message.reason : undefined;
    if (!(await this.end(entry, { status, exitCode, reason, state }))) return;
    this.send(worker, { type: "ack", id: record.id });
    // A launcher runs one run at a time: having finished one, it is free.
    if (worker.current === record.id) worker.current = undefined;
    worker.busy = false;
    await this.dispatch(worker.pool);
  }

  /** The run's outcome, stored under its lease, then in memory: false if the store refused it (it comes again). */
  private async end(entry: LiveRun, outcome: Omit<RunOutcomeRecord, "finishedAt">, note?: string): Promise<boolean> {
    const { record } = entry;
    const finishedAt = now();
    let stored: boolean;
    try {
      // A run no launcher holds (still queued) has no lease to match.
      const claim = record.worker === undefined ? undefined : this.claimOf(record);
      stored = await this.store.finishRun(record.id, claim, { ...outcome, finishedAt }, note);
    } catch (error) {
      this.storageFailed(`store the outcome (${outcome.status})`, error, record);
      return false;
    }
    if (!stored || this.live.get(record.id) !== entry) return false;
    clearTimeout(entry.leaseTimer);
    this.live.delete(record.id);
    Object.assign(record, outcome, { finishedAt, leaseExpiresAt: undefined });
    if (note !== undefined) record.logLines++;
    this.log.info("run finished", { pool: record.pool, run: record.id, status: record.status, reason: record.reason });
    this.notify(entry);
    return true;
  }

  /** A lease given back by a launcher that did not start the run, or an offer expired: queued again, first. */
  private async requeue(entry: LiveRun): Promise<void> {
    const { record } = entry;
    await this.store
      .releaseLease(this.claimOf(record))
      .catch((error) => this.storageFailed("release a lease", error, record));
    clearTimeout(entry.leaseTimer);
    for (const worker of this.workers.get(record.pool) ?? [])
      if (worker.id === record.worker && worker.current === record.id) worker.current = undefined;
    Object.assign(record, { status: "queued", startedAt: undefined, worker: undefined, leaseExpiresAt: undefined });
    this.queue(record.pool).unshift(record.id);
  }

  private revoke(worker: WorkerConnection | undefined, entry: LiveRun, reason: string): void {
    if (!worker) return;
    this.send(worker, { type: "revoked", id: entry.record.id, reason });
    if (worker.current === entry.record.id) worker.current = undefined;
  }

  /** The lease ends at its expiry unless renewed: an offer goes back to the queue, a started run is lost. */
  private armLease(entry: LiveRun): void {
    clearTimeout(entry.leaseTimer);
    entry.leaseTimer = setTimeout(
      () => this.serially(entry.record.worker ?? "", () => this.expire(entry)),
      Math.max(0, (entry.record.leaseExpiresAt ?? 0) - Date.now()),
    );
    entry.leaseTimer.unref();
  }

  private async expire(entry: LiveRun): Promise<void> {
    const { record } = entry;
    if (this.closing || this.live.get(record.id) !== entry || record.leaseExpiresAt === undefined) return;
    // Renewed meanwhile, or the timer fired a little early by the wall clock.
    if (record.leaseExpiresAt > Date.now()) return this.armLease(entry);
    const holder = [...(this.workers.get(record.pool) ?? [])].find((w) => w.id === record.worker);
    this.log.warn("a lease expired", {
      pool: record.pool,
      run: record.id,
      worker: record.worker,
      status: record.status,
    });
    if (record.status === "queued") {
      this.revoke(holder, entry, "its lease expired before the run started");
      await this.requeue(entry);
      return this.dispatch(record.pool);
    }
    const reason = `the launcher running it stopped renewing its lease (${this.leaseMs} ms)`;
    if (await this.end(entry, { status: "lost", reason, state: false })) this.revoke(holder, entry, reason);
    else {
      // The store refused: try again shortly, the run stays as it was meanwhile.
      entry.record.leaseExpiresAt = Date.now() + Math.min(1000, this.leaseMs);
      this.armLease(entry);
    }
  }

  /**
   * Keys changed: queued runs of a client that may no longer use their pool (its key removed or narrowed) end,
   * refused; log streams look again at their request's key (one rotated or removed is cut).
   */
  async keysChanged(mayUse: (client: string, pool: string) => boolean): Promise<void> {
    for (const entry of this.live.values()) this.notify(entry);
    for (const [pool, queue] of this.queues)
      for (const id of queue) {
        const entry = this.live.get(id);
        const owner = entry?.record.owner;
        if (!entry || owner === undefined || entry.record.status !== "queued" || mayUse(owner, pool)) continue;
        const reason = KEY_REVOKED(pool);
        await this.end(entry, { status: "refused", reason, state: false }, `[agentpools: ${reason}]`);
      }
  }

  private notify(entry: LiveRun): void {
    for (const follower of entry.followers) follower();
  }

  private queue(pool: string): string[] {
    let queue = this.queues.get(pool);
    if (!queue) this.queues.set(pool, (queue = []));
    return queue;
  }

  /** The idle launcher used least recently (never used first), so work spreads over all of them. */
  private idle(pool: string): WorkerConnection | undefined {
    let best: WorkerConnection | undefined;
    for (const worker of this.workers.get(pool) ?? []) {
      if (!worker.greeted || worker.current || worker.busy || worker.draining || !worker.socket.open) continue;
      if (!best || worker.lastUsed < best.lastUsed) best = worker;
    }
    return best;
  }

  /** Hand queued runs to idle launchers, one pool's dispatch at a time: each lease is stored before its run is sent. */
  private async dispatch(pool: string): Promise<void> {
    if (this.dispatching.has(pool)) return void this.redispatch.add(pool);
    this.dispatching.add(pool);
    try {
      await this.dispatchNow(pool);
    } catch (error) {
      this.log.error("dispatching runs failed", { pool, error: (error as Error).message });
    } finally {
      this.dispatching.delete(pool);
      if (this.redispatch.delete(pool)) await this.dispatch(pool);
    }
  }

  /**
   * The queued run to go next: the oldest of the key with the fewest runs leased (offered or running), among keys
   * under their share of the pool's launchers; a key over its share goes on only while no other key waits. Leases
   * are counted from the live records, which a restart loads from the store with their owners.
   */
  private next(pool: string): LiveRun | undefined {
    const queue = this.queue(pool);
    const waiting: LiveRun[] = [];
    for (const id of queue.splice(0)) {
      const entry = this.live.get(id);
      if (entry?.record.status === "queued" && entry.record.leaseExpiresAt === undefined) waiting.push(entry);
    }
    queue.push(...waiting.map((entry) => entry.record.id));
    if (waiting.length === 0) return undefined;
    const leased = new Map<string, number>();
    for (const { record } of this.live.values())
      if (record.pool === pool && record.leaseExpiresAt !== undefined)
        leased.set(record.owner ?? "", (leased.get(record.owner ?? "") ?? 0) + 1);
    const held = (entry: LiveRun) => leased.get(entry.record.owner ?? "") ?? 0;
    const launchers = [...(this.workers.get(pool) ?? [])].filter((w) => !w.draining && w.socket.open).length;
    const share = shareOf(Math.max(1, launchers), this.options.clientShare ?? QUEUE_DEFAULTS.clientShare);
    const alone = waiting.every((entry) => entry.record.owner === waiting[0].record.owner);
    const eligible = alone ? waiting : waiting.filter((entry) => held(entry) < share);
    // Among keys holding as many, the one served longest ago (with one launcher every key holds none when it comes
    // free: by age alone, one key's queued runs would all go first); within a key, the oldest run (a run given back
    // goes first again).
    const served = (entry: LiveRun) => this.lastServed.get(`${pool}\n${entry.record.owner ?? ""}`) ?? 0;
    const chosen = eligible.reduce<LiveRun | undefined>(
      (best, e) => (!best || held(e) < held(best) || (held(e) === held(best) && served(e) < served(best)) ? e : best),
      undefined,
    );
    if (!chosen) return undefined;
    queue.splice(queue.indexOf(chosen.record.id), 1);
    this.lastServed.set(`${pool}\n${chosen.record.owner ?? ""}`, ++this.turns);
    return chosen;
  }

  private async dispatchNow(pool: string): Promise<void> {
    const queue = this.queue(pool);
    for (let worker = this.idle(pool); worker && !this.closing; worker = this.idle(pool)) {
      const entry = this.next(pool);
      if (!entry) return;
      const { record } = entry;
      worker.current = record.id;
      worker.lastUsed = ++this.uses;
      const time = Date.now();
      let fence: number | undefined;
      try {
        fence = await this.store.grantLease(record.id, worker.id, time, time + this.leaseMs);
      } catch (error) {
        this.storageFailed("lease a run", error, record);
        fence = undefined;
      }
      if (fence === undefined) {
        // Not leased (the store refused, or holds another lease): try again in a while.
        worker.current = undefined;
        queue.unshift(record.id);
        this.later(pool);
        return;
      }
      Object.assign(record, { worker: worker.id, fence, leaseExpiresAt: time + this.leaseMs });
      this.armLease(entry);
      // Gone meanwhile: the lease stays its own until it comes back or the lease expires.
      if (!worker.socket.open) continue;
      const { id, image, commands, sealedEnvironment, timeoutSeconds, stateFrom } = record;
      this.send(worker, {
        type: "run",
        run: { id, image, commands, sealedEnvironment, timeoutSeconds, stateFrom },
        lease: { fence, termMs: this.leaseMs },
      });
    }
  }

  /** Dispatch again after a storage failure, once per pool at a time. */
  private later(pool: string): void {
    if (this.retrying.has(pool)) return;
    this.retrying.add(pool);
    const timer = setTimeout(
      () => {
        this.timers.delete(timer);
        this.retrying.delete(pool);
        void this.dispatch(pool);
      },
      Math.min(1000, this.leaseMs / 3),
    ).unref();
    this.timers.add(timer);
  }

  /**
   * Submit a run: {image, commands, environment?, timeoutSeconds?, stateFrom?}; its environment is sealed at once. A
   * pool's queue is bounded, and one key (`client`) holds at most its share of it: beyond, 503 with Retry-After.
   */
  async submit(poolName: string, body: unknown, client = ""): Promise<WorkerRun> {
    const pool = this.pools.get(poolName)?.definition;
    if (pool?.kind !== "worker") throw new HttpError(404, `no worker pool named ${poolName}`);
    const { maxQueued = QUEUE_DEFAULTS.maxQueued, clientShare = QUEUE_DEFAULTS.clientShare } = this.options;
    const queued = this.queue(poolName).filter((id) => this.live.get(id)?.record.status === "queued");
    if (queued.length >= maxQueued)
      throw new HttpError(503, `pool ${poolName} has ${queued.length} runs queued`, RETRY_AFTER_SECONDS);
    if (queued.filter((id) => this.live.get(id)?.record.owner === client).length >= shareOf(maxQueued, clientShare))
      throw new HttpError(503, `this key holds its share of pool ${poolName}'s queue`, RETRY_AFTER_SECONDS);
    const request = (body ?? {}) as Record<string, unknown>;
    const unknown = Object.keys(request).filter(
      (key) => !["image", "commands", "environment", "timeoutSeconds", "stateFrom"].includes(key),
    );
    if (unknown.length > 0)
      throw new HttpError(
        400,
        `unknown fields ${unknown.join(", ")}: a run is {image, commands, environment?, timeoutSeconds?, stateFrom?}`,
      );
    const { image, commands, environment = {}, timeoutSeconds, stateFrom } = request;
    if (typeof image !== "string" || !IMAGE.test(image))
      throw new HttpError(
        400,
        `image ${JSON.stringify(image)} must be an image reference such as "public.ecr.aws/docker/library/alpine:3"`,
      );
    if (
      !Array.isArray(commands) ||
      commands.length === 0 ||
      !commands.every((c) => typeof c === "string" && c.length > 0)
    )
      throw new HttpError(400, "commands must be a non-empty list of shell commands (strings)");
    const env = environment as Record<string, unknown>;
    if (typeof env !== "object" || env === null || Array.isArray(env))
      throw new HttpError(400, "environment must be an object of NAME: value");
    for (const [name, value] of Object.entries(env)) {
      if (!ENV_NAME.test(name) || typeof value !== "string")
        throw new HttpError(400, `environment ${JSON.stringify(name)} must be a variable name with a string value`);
    }
    if (
      timeoutSeconds !== undefined &&
      !(Number.isInteger(timeoutSeconds) && (timeoutSeconds as number) >= 1 && (timeoutSeconds as number) <= 86_400)
    ) {
      throw new HttpError(400, `timeoutSeconds ${JSON.stringify(timeoutSeconds)} must be an integer from 1 to 86400`);
    }
    if (stateFrom !== undefined) {
      // Another key's run is refused as one that does not exist: its state never reaches this key's run.
      const source = typeof stateFrom === "string" ? await this.store.getRun(stateFrom) : undefined;
      if (!source || source.pool !== poolName || source.owner !== client || !source.state)
        throw new HttpError(
          400,
          `stateFrom ${JSON.stringify(stateFrom)} must be a finished run of yours in pool ${poolName} that left state`,
        );
    }
    const sealed =
      Object.keys(env).length > 0
        ? (await sealBuffer(this.poolKey(pool), Buffer.from(JSON.stringify(env)))).toString("base64")
        : undefined;
    const record: RunRecord = {
      id: randomUUID(),
      pool: poolName,
      owner: client,
      image,
      commands: commands as string[],
      ...(sealed ? { sealedEnvironment: sealed } : {}),
      ...(timeoutSeconds !== undefined ? { timeoutSeconds: timeoutSeconds as number } : {}),
      ...(stateFrom !== undefined ? { stateFrom: String(stateFrom) } : {}),
      status: "queued",
      fence: 0,
      state: false,
      logLines: 0,
      createdAt: now(),
    };
    // Stored before it is listed or queued: a submission the store refused leaves nothing behind.
    try {
      await this.store.createRun(record);
    } catch (error) {
      this.storageFailed("store a submitted run", error, record);
      throw error;
    }
    this.live.set(record.id, { record, followers: new Set() });
    this.queue(poolName).push(record.id);
    this.log.info("run queued", { pool: poolName, run: record.id, image });
    void this.dispatch(poolName);
    return record;
  }

  /** A run of the pool that this key (`owner`) submitted, live or finished; another key's is as one that is not. */
  async get(pool: string, id: string, owner = ""): Promise<WorkerRun> {
    const record = this.live.get(id)?.record ?? (await this.store.getRun(id));
    if (!record || record.pool !== pool || record.owner !== owner)
      throw new HttpError(404, `no run ${id} in pool ${pool}`);
    return record;
  }

  /** A run's log: what there is, then (follow) each new line as it comes, until the run ends. */
  async streamLog(
    pool: string,
    id: string,
    owner: string,
    res: http.ServerResponse,
    follow: boolean,
    stillAllowed: () => boolean = () => true,
  ): Promise<void> {
    await this.get(pool, id, owner);
    const entry = this.live.get(id);
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
    let sent = 0;
    let reading = false;
    let again = false;
    const flush = async (): Promise<void> => {
      if (reading) return void (again = true);
      reading = true;
      try {
        do {
          again = false;
          // Read before the check: a run's last lines are stored before it shows final.
          const done = !follow || !entry || isFinal(entry.record.status);
          // The key was rotated or removed: not a line more under the old secret (cut, not ended as a finished run).
          if (!stillAllowed()) throw new Error("key changed");
          for (
            let lines = await this.store.readLog(id, sent, LOG_PAGE);
            lines.length > 0 && !res.destroyed;
            lines = await this.store.readLog(id, sent, LOG_PAGE)
          ) {
            if (!stillAllowed()) throw new Error("key changed");
            sent += lines.length;
            if (!res.write(lines.join("\n") + "\n"))
              await new Promise((resolve) => (res.once("drain", resolve), res.once("close", resolve)));
          }
          if (done || res.destroyed) {
            entry?.followers.delete(notify);
            return void res.end();
          }
        } while (again);
      } catch {
        entry?.followers.delete(notify);
        res.destroy();
      } finally {
        reading = false;
      }
    };
    const notify = () => void flush();
    entry?.followers.add(notify);
    res.once("close", () => entry?.followers.delete(notify));
    await flush();
  }

  /** PUT: the sealed state of a run, from the launcher holding its lease. GET: for the launcher of a later run. */
  async transferState(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    poolName: string,
    id: string,
  ): Promise<void> {
    const pool = this.authenticate(req);
    if (!pool || pool.name !== poolName) throw new HttpError(401, "worker pool credentials refused");
    if (req.method === "PUT") {
      const claim = {
        run: id,
        worker: String(req.headers[WORKER_HEADER] ?? ""),
        fence: Number(req.headers[FENCE_HEADER]),
      };
      const entry = this.live.get(id);
      if (!entry || entry.record.pool !== poolName)
        throw new HttpError(404, `no run ${id} in pool ${poolName} is running`);
      try {
        await this.store.putState(claim, req);
      } catch (error) {
        this.storageFailed("store a run's state", error, entry.record);
        throw error;
      }
      res.writeHead(204).end();
      return;
    }
    if (req.method !== "GET") throw new HttpError(405, "state is PUT by a run's worker and read with GET");
    // Only for a run this launcher holds under this fence that starts from it: its owner chose that state.
    const worker = String(req.headers[WORKER_HEADER] ?? "");
    const fence = Number(req.headers[FENCE_HEADER]);
    const reader = [...this.live.values()].some(
      ({ record }) => record.stateFrom === id && record.pool === poolName && this.holds(record, worker, fence),
    );
    const record = reader ? await this.store.getRun(id) : undefined;
    if (!record?.state) throw new HttpError(404, `no run held by this launcher starts from the state of run ${id}`);
    const state = await this.store.openState(id);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    await pipeline(state, res);
  }

  /**
   * The worker API under /_agentpools/api/workers/<pool>/runs..., as the gateway read the
   * target once (target.ts): the pool, run and query come from that reading, never from the URL again.
   */
  handle(
    route: WorkerRoute,
    query: Map<string, string>,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    json: (status: number, value: unknown, headers?: Record<string, string>) => void,
    /** Whether the request's key still may use the pool (it may be removed while a body is read). */
    stillAllowed: () => boolean = () => true,
    /** The request's service key (its id): one client of the pool's queue. */
    client = "",
  ): void {
    const { pool } = route;
    const fail = (error: Error) => {
      if (res.headersSent) res.destroy();
      else if (!(error instanceof HttpError)) json(500, { error: error.message });
      else
        json(
          error.status,
          { error: error.message },
          error.retryAfter ? { "retry-after": String(error.retryAfter) } : {},
        );
      if (!(error instanceof HttpError))
        this.log.error("a worker API request failed", {
          method: req.method,
          route: route.kind,
          pool,
          error: error.message,
        });
    };
    void (async () => {
      if (route.kind === "state") return this.transferState(req, res, pool, route.run);
      if (route.kind === "runs" && req.method === "POST") {
        const parsed = await readJsonBody(req, "{image, commands, environment?, timeoutSeconds?, stateFrom?}");
        if (!stillAllowed()) throw new HttpError(401, KEY_REVOKED(pool));
        return json(201, this.public(await this.submit(pool, parsed, client)));
      }
      if (req.method !== "GET") throw new HttpError(405, "method not allowed");
      if (route.kind === "run")
        return route.logs
          ? this.streamLog(pool, route.run, client, res, query.get("follow") === "1", stillAllowed)
          : json(200, this.public(await this.get(pool, route.run, client)));
      if (this.pools.get(pool)?.definition.kind !== "worker") throw new HttpError(404, `no worker pool named ${pool}`);
      const limit = Number(query.get("limit") ?? 100);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
        throw new HttpError(400, "limit must be an integer from 1 to 1000");
      const before = query.get("before");
      return json(200, {
        runs: (await this.store.listRuns(pool, { owner: client, limit, before })).map((run) =>
          this.public(this.live.get(run.id)?.record ?? run),
        ),
      });
    })().catch(fail);
  }

  /** A run as the API shows it: the sealed environment stays inside (and the owner: the caller). */
  private public(run: WorkerRun) {
    const { sealedEnvironment, leaseExpiresAt, owner: _caller, ...shown } = run;
    return {
      ...shown,
      environmentSealed: sealedEnvironment !== undefined,
      ...(leaseExpiresAt !== undefined ? { leaseExpiresAt: new Date(leaseExpiresAt).toISOString() } : {}),
    };
  }

  /** Runs not yet final, held in memory (what a start loaded and what came since). */
  get liveRuns(): number {
    return this.live.size;
  }

  /**
   * A pool's launchers and counts. A launcher's current run id is shown to the key (`client`) that owns that run
   * only; without a client (the gateway's own caller, in process) to all.
   */
  summary(pool: string, client?: string) {
    const workers = [...(this.workers.get(pool) ?? [])];
    const live = [...this.live.values()].filter((e) => e.record.pool === pool);
    return {
      connections: workers.filter((w) => !w.draining).length,
      activeRequests: workers.filter((w) => w.current).length,
      queued: this.queue(pool).length,
      running: live.filter((e) => e.record.status === "running").length,
      agents: workers.map((w) => ({
        id: w.id,
        remote: w.remote,
        connectedAt: w.connectedAt,
        metadata: w.metadata,
        active: w.current ? 1 : 0,
        parallelism: 1,
        ...(w.current !== undefined && (client === undefined || this.live.get(w.current)?.record.owner === client)
          ? { currentRun: w.current }
          : {}),
        draining: w.draining,
      })),
    };
  }

  /** Stop: no more writes (what is stored stays as it is, as after a crash), launchers dropped, the store closed. */
  async close(): Promise<void> {
    this.closing = true;
    for (const timer of this.timers) clearTimeout(timer);
    for (const entry of this.live.values()) clearTimeout(entry.leaseTimer);
    for (const workers of this.workers.values()) for (const worker of workers) worker.socket.close(1001);
    await Promise.allSettled([...this.chains.values()]);
    await this.store.close();
    if (this.options.dataDir && !this.options.store && servingGateway(this.options.dataDir) === process.pid)
      rmSync(path.join(this.options.dataDir, SERVING_FILE), { force: true });
  }
}
