import { randomUUID } from "node:crypto";
import type http from "node:http";
import type { Socket } from "node:net";
import { FLOWS_MAX_RUN_TIMEOUT_MS, overCaps } from "../protocol/flows";
import type { AgentMessage, Answer, GatewayMessage, Job } from "../protocol/flows";
import type { Logger } from "../lib/log";
import { PING_TIMEOUT_MS, POOL_HEADER } from "../protocol/link";
import { acceptWebSocket, isWebSocketUpgrade, parseMessage, type WebSocket } from "../protocol/websocket";
import { bearerToken, KEY_REVOKED } from "./auth";
import { HttpError } from "./http";
import { poolFull, secretMatches, type ConnectedAgent, type PoolDefinition, type RefuseUpgrade } from "./pools";
import { QUEUE_DEFAULTS, RETRY_AFTER_SECONDS, shareOf } from "./vcs-hub";

export interface FlowsRunResult extends Answer {
  durationMs: number;
}

/** A run sent to an agent, until the agent answers it (a cancelled one too: then its place there is free). */
interface SentRun {
  resolve(result: FlowsRunResult): void;
  /** Ends the client's wait; the run stays until the agent answers. */
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  client: string;
  /** The gateway gave up on it and told the agent. */
  cancelled: boolean;
  /** Called once it leaves the agent's runs. */
  left(): void;
}

interface FlowsAgent extends ConnectedAgent {
  socket: WebSocket;
  poolSize: number;
  executor: string;
  draining: boolean;
  pending: Map<string, SentRun>;
  /** When it was last sent a run (a counter): among the least loaded, the least recent gets the next. */
  lastUsed: number;
}

/** The gateway's side of the Flows agents: their WebSockets, and runs sent to them. */
export class FlowsHub {
  private readonly agents = new Map<string, Set<FlowsAgent>>();

  private uses = 0;

  /**
   * Per pool and client: runs from their start until their answer is taken (the client's response closed). An answer
   * given but not read stays in the gateway's memory, so it counts toward the client's share as a run in flight does.
   */
  private readonly held = new Map<string, number>();

  constructor(
    private readonly pools: Map<string, { definition: PoolDefinition }>,
    private readonly log: Logger,
    private readonly keepalive: {
      pingIntervalMs?: number;
      pingTimeoutMs?: number;
      maxAgentsPerPool?: number;
      /** Beyond a run's timeout, how long the gateway waits for its answer before cancelling it (504). */
      flowsAnswerGraceMs?: number;
    } = {},
  ) {}

  /** An agent's upgrade request: pool ID and token, then the WebSocket. */
  accept(
    req: http.IncomingMessage,
    socket: Socket,
    head: Buffer,
    metadata: Record<string, string>,
    refuse: RefuseUpgrade,
  ): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (!isWebSocketUpgrade(req.headers)) return refuse(400, "not a WebSocket upgrade", { remote });
    const poolId = String(req.headers[POOL_HEADER] ?? "");
    const token = bearerToken(req) ?? "";
    const pool = this.pools.get(poolId);
    if (!pool || pool.definition.kind !== "flows" || !secretMatches(pool.definition, token))
      return refuse(401, "pool ID or token refused", { remote, pool: poolId });
    const full = poolFull(poolId, this.agents.get(poolId)?.size ?? 0, this.keepalive.maxAgentsPerPool);
    if (full) return refuse(503, full, { remote });

    const webSocket = acceptWebSocket(req.headers, socket, head);
    const agent: FlowsAgent = {
      id: randomUUID(),
      pool: poolId,
      remote,
      metadata,
      connectedAt: new Date().toISOString(),
      socket: webSocket,
      poolSize: 1,
      executor: "unknown",
      draining: false,
      pending: new Map(),
      lastUsed: 0,
    };
    const agents = this.agents.get(poolId) ?? new Set();
    this.agents.set(poolId, agents);
    agent.socket.on("message", (text: string) => this.receive(agent, text));
    // An agent that stops answering pings (hung, stopped, cut off) is dropped, and its runs fail.
    let unanswered = false;
    agent.socket.keepAlive(this.keepalive.pingIntervalMs, this.keepalive.pingTimeoutMs);
    agent.socket.once("timeout", () => {
      unanswered = true;
      const runs = agent.pending.size;
      this.log.warn("agent stopped answering pings: disconnected", { pool: poolId, agent: agent.id, remote, runs });
    });
    agent.socket.once("close", () => {
      agents.delete(agent);
      const reason = `the agent ${unanswered ? "stopped answering" : "disconnected"} during the run`;
      for (const [, run] of agent.pending) {
        clearTimeout(run.timer);
        run.reject(new HttpError(502, reason));
        run.left();
      }
      this.log.info("agent disconnected", { pool: poolId, agent: agent.id });
    });
    agents.add(agent);
    this.log.info("agent connected", { pool: poolId, agent: agent.id, remote, metadata });
  }

  private receive(agent: FlowsAgent, text: string): void {
    // An agent checks its runs' answers: one that passes on an answer too costly to parse is not trusted further.
    if (overCaps(text)) {
      this.log.warn("agent sent an answer over the caps: disconnected", { pool: agent.pool, agent: agent.id });
      return agent.socket.close(1008);
    }
    const message = parseMessage<AgentMessage>(text);
    if (!message) return;
    if (message.type === "hello") {
      agent.poolSize = Math.max(1, Math.min(64, Number(message.poolSize) || 1));
      agent.executor = String(message.executor);
    } else if (message.type === "draining") {
      agent.draining = true;
    } else if (message.type === "result") {
      const run = agent.pending.get(message.id);
      if (!run) return;
      agent.pending.delete(message.id);
      clearTimeout(run.timer);
      run.left();
      const { ok, value, error, console, durationMs } = message;
      // Field by field, the error's too: what reaches the client is an answer's fields, whatever the agent sent.
      const fields = error && { name: error.name, message: error.message, stack: error.stack, code: error.code };
      run.resolve({ ok, value, error: fields, console: Array.isArray(console) ? console : [], durationMs });
    }
  }

  /**
   * Run code on one of the pool's agents: the least busy; without timeoutMs the agent's default applies. A client
   * gone before the answer (`taken` settled) cancels the run. The run counts toward the client's share until the agent
   * has answered it (cancelled or not) and `taken` has settled (the answer delivered, or the client gone).
   */
  run(pool: string, job: Job, timeoutMs?: number, client = "", taken?: Promise<unknown>): Promise<FlowsRunResult> {
    const definition = this.pools.get(pool)?.definition;
    if (definition?.kind !== "flows") return Promise.reject(new HttpError(404, `no Flows pool named ${pool}`));
    const candidates = [...(this.agents.get(pool) ?? [])].filter((a) => !a.draining);
    if (candidates.length === 0) return Promise.reject(new HttpError(503, `no agent of pool ${pool} is connected`));
    // Runs in flight (each up to a MiB of code) are bounded: four per runtime, at least 16; the
    // rest wait at the agents. One client holds at most its share of them, as on the VCS path.
    const bound = Math.max(16, 4 * candidates.reduce((n, a) => n + a.poolSize, 0));
    if (candidates.reduce((n, a) => n + a.pending.size, 0) >= bound)
      return Promise.reject(new HttpError(503, `pool ${pool} has ${bound} runs in flight`, RETRY_AFTER_SECONDS));
    const holder = `${pool}\n${client}`;
    if ((this.held.get(holder) ?? 0) >= shareOf(bound, QUEUE_DEFAULTS.clientShare))
      return Promise.reject(new HttpError(503, `this key holds its share of pool ${pool}'s runs`, RETRY_AFTER_SECONDS));
    // The least loaded (runs in flight per runtime); among equals, the one used least recently.
    const load = (a: FlowsAgent) => a.pending.size / a.poolSize;
    const better = (a: FlowsAgent, b: FlowsAgent) =>
      load(a) < load(b) || (load(a) === load(b) && a.lastUsed < b.lastUsed);
    const agent = candidates.reduce((best, a) => (better(a, best) ? a : best));
    agent.lastUsed = ++this.uses;
    const id = randomUUID();
    let left!: () => void;
    const atAgent = new Promise<void>((resolve) => (left = resolve));
    const answer = new Promise<FlowsRunResult>((resolve, reject) => {
      // The run leaves first; its answer cannot be read before this turn has registered it.
      agent.socket.send(JSON.stringify({ type: "run", id, job, timeoutMs } satisfies GatewayMessage));
      // The agent enforces the run's timeout from its start; this covers a run that waited at the agent, or a lost answer.
      const waitMs = (timeoutMs ?? FLOWS_MAX_RUN_TIMEOUT_MS) + this.graceMs;
      const timer = setTimeout(
        () => this.cancel(agent, id, new HttpError(504, `no answer from the agent within ${waitMs} ms`)),
        waitMs,
      );
      agent.pending.set(id, { resolve, reject, timer, client, cancelled: false, left });
    });
    this.held.set(holder, (this.held.get(holder) ?? 0) + 1);
    const release = () => {
      const count = (this.held.get(holder) as number) - 1;
      if (count) this.held.set(holder, count);
      else this.held.delete(holder);
    };
    // A client that hangs up leaves its run at the agent, where it holds a place until the agent answers the cancel.
    void taken?.then(() => this.cancel(agent, id, new HttpError(499, "the client went away")));
    void Promise.allSettled([atAgent, taken]).then(release);
    return answer;
  }

  private get graceMs(): number {
    return this.keepalive.flowsAnswerGraceMs ?? 10_000;
  }

  /**
   * Gives up on a run: its client gets `why` at once; the agent is told to drop or end it, and answers when it has (in
   * milliseconds, unless its answers queue behind large ones on a slow link). One not answered within the ping timeout
   * is counted gone (the agent is not dropped for it: that would fail every run on its link).
   */
  private cancel(agent: FlowsAgent, id: string, why: HttpError): void {
    const run = agent.pending.get(id);
    if (!run || run.cancelled) return;
    run.cancelled = true;
    clearTimeout(run.timer);
    run.reject(why);
    agent.socket.send(JSON.stringify({ type: "cancel", id } satisfies GatewayMessage));
    this.log.info("run cancelled", { pool: agent.pool, agent: agent.id, id, reason: why.message });
    run.timer = setTimeout(() => {
      this.log.warn("agent did not answer a cancelled run in time: its place is counted free", {
        pool: agent.pool,
        agent: agent.id,
        id,
      });
      agent.pending.delete(id);
      run.left();
    }, this.keepalive.pingTimeoutMs ?? PING_TIMEOUT_MS);
  }

  /** Runs not yet answered for a client that may no longer use their pool (its key removed or narrowed): 401, cancelled. */
  keysChanged(mayUse: (client: string, pool: string) => boolean): void {
    for (const [pool, agents] of this.agents)
      for (const agent of agents)
        for (const [id, run] of agent.pending)
          if (!mayUse(run.client, pool)) this.cancel(agent, id, new HttpError(401, KEY_REVOKED(pool)));
  }

  summary(pool: string) {
    const agents = [...(this.agents.get(pool) ?? [])];
    return {
      connections: agents.filter((a) => !a.draining).length,
      activeRequests: agents.reduce((n, a) => n + a.pending.size, 0),
      agents: agents.map((a) => ({
        id: a.id,
        remote: a.remote,
        connectedAt: a.connectedAt,
        metadata: a.metadata,
        active: a.pending.size,
        parallelism: a.poolSize,
        executor: a.executor,
        draining: a.draining,
      })),
    };
  }

  close(): void {
    for (const agents of this.agents.values()) for (const agent of agents) agent.socket.close(1001);
  }
}
