import { randomUUID } from "node:crypto";
import type http from "node:http";
import type { Socket } from "node:net";
import {
  FLOWS_MAX_RESULT_BYTES,
  FLOWS_MAX_RUN_TIMEOUT_MS,
  FLOWS_MAX_VALUE_BYTES,
  FLOWS_MAX_VALUE_CONTAINERS,
  FLOWS_MAX_VALUE_DEPTH,
  FLOWS_MAX_VALUE_KEYS,
  jsonCost,
  overCaps,
} from "../protocol/flows";
import type { AgentMessage, Answer, GatewayMessage, Job } from "../protocol/flows";
import type { Logger } from "../lib/log";
import { PING_TIMEOUT_MS, POOL_HEADER } from "../protocol/link";
import { acceptWebSocket, isWebSocketUpgrade, parseMessage, type WebSocket } from "../protocol/websocket";
import { bearerToken, KEY_REVOKED } from "./auth";
import { HttpError, JsonText } from "./http";
import { poolFull, secretMatches, type ConnectedAgent, type PoolDefinition, type RefuseUpgrade } from "./pools";
import { QUEUE_DEFAULTS, RETRY_AFTER_SECONDS, shareOf } from "./vcs-hub";

/** The most bytes of Flows answers given but not yet taken a gateway holds by default. */
export const FLOWS_ANSWER_BUDGET_BYTES = 256 * 1024 * 1024;
/** Beyond a run's timeout, how long the gateway waits (for a runtime, then for the answer) by default. */
export const FLOWS_ANSWER_GRACE_MS = 10_000;

/** A run's answer as its client reads it: `Answer` and the run's `durationMs`, as JSON text. */
export type FlowsRunResult = JsonText;

/**
 * A run at the gateway: queued until an agent has a runtime free for it, then sent, until the agent answers it (a
 * cancelled one too: only then is its runtime free).
 */
interface FlowsRun {
  id: string;
  pool: string;
  /** Its job as JSON text, encoded once when it came: sending it later cannot fail. */
  job: string;
  timeoutMs?: number;
  client: string;
  /** Its order of arrival. */
  seq: number;
  /** The agent it was sent to; none while queued. */
  agent?: FlowsAgent;
  resolve(result: FlowsRunResult): void;
  /** Ends the client's wait; a run sent stays until the agent answers. */
  reject(error: Error): void;
  timer?: NodeJS.Timeout;
  /** The gateway gave up on it and told the agent. */
  cancelled: boolean;
  /** Called once it leaves the queue or its agent's runs. */
  left(): void;
  /** Settles once its answer is delivered, or its client gone. */
  taken?: Promise<unknown>;
}

interface FlowsAgent extends ConnectedAgent {
  socket: WebSocket;
  poolSize: number;
  executor: string;
  /** Its hello came (it is read once). */
  greeted: boolean;
  draining: boolean;
  /** Runs sent to it and not answered: at most its pool size (the rest wait here, where no key can jump them). */
  pending: Map<string, FlowsRun>;
  /** When it was last sent a run (a counter): among the least loaded, the least recent gets the next. */
  lastUsed: number;
}

/** The gateway's side of the Flows agents: their WebSockets, and runs sent to them. */
export class FlowsHub {
  private readonly agents = new Map<string, Set<FlowsAgent>>();

  /** Per pool, runs waiting for a free runtime. */
  private readonly queues = new Map<string, FlowsRun[]>();

  private uses = 0;

  private arrivals = 0;

  /**
   * Per pool and client: runs from their start until their answer is taken (the client's response closed). An answer
   * given but not read stays in the gateway's memory, so it counts toward the client's share as a run in flight does.
   */
  private readonly held = new Map<string, number>();

  /**
   * Bytes of answers given but not yet taken, in all and per client: up to 7 MiB each, they are what an unread client
   * makes the gateway hold (runs alone do not bound it: 4 per runtime of a large pool is gigabytes).
   */
  private answerBytes = 0;

  private readonly answerBytesOf = new Map<string, number>();

  constructor(
    private readonly pools: Map<string, { definition: PoolDefinition }>,
    private readonly log: Logger,
    private readonly options: {
      pingIntervalMs?: number;
      pingTimeoutMs?: number;
      maxAgentsPerPool?: number;
      /** The most of a pool's runs at the gateway, and of its runtimes, one key holds. */
      clientShare?: number;
      /** The most bytes of Flows answers given but not yet taken the gateway holds (one key at most clientShare). */
      flowsAnswerBudgetBytes?: number;
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
    const full = poolFull(poolId, this.agents.get(poolId)?.size ?? 0, this.options.maxAgentsPerPool);
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
      greeted: false,
      draining: false,
      pending: new Map(),
      lastUsed: 0,
    };
    const agents = this.agents.get(poolId) ?? new Set();
    this.agents.set(poolId, agents);
    // Whatever an agent's message makes throw ends that link, never the gateway (this is the socket's own event).
    agent.socket.on("message", (text: string) => {
      try {
        this.receive(agent, text);
      } catch (error) {
        this.log.warn("agent sent a message that could not be handled: disconnected", {
          pool: agent.pool,
          agent: agent.id,
          error: (error as Error).message,
        });
        agent.socket.close(1008);
      }
    });
    // An agent that stops answering pings (hung, stopped, cut off) is dropped, and its runs fail.
    let unanswered = false;
    agent.socket.keepAlive(this.options.pingIntervalMs, this.options.pingTimeoutMs);
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
      agent.pending.clear();
      this.log.info("agent disconnected", { pool: poolId, agent: agent.id });
      this.pump(poolId);
    });
    agents.add(agent);
    this.log.info("agent connected", { pool: poolId, agent: agent.id, remote, metadata });
    this.pump(poolId);
  }

  private receive(agent: FlowsAgent, text: string): void {
    // No message of an agent is larger than the result cap, and an agent checks its runs' answers: one that sends a
    // larger message, or passes on an answer too costly to parse, is not trusted further.
    if (Buffer.byteLength(text) > FLOWS_MAX_RESULT_BYTES || overCaps(text)) {
      this.log.warn("agent sent an answer over the caps: disconnected", { pool: agent.pool, agent: agent.id });
      return agent.socket.close(1008);
    }
    const message = parseMessage<AgentMessage>(text);
    if (!message) return;
    if (message.type === "hello") {
      // Once per link; what it says is shown on the pools listing: a short printable line.
      if (agent.greeted) return;
      agent.greeted = true;
      // (Typed before use: String() and Number() of an object whose toString is no function would throw, here in the
      // socket's own event, out of the gateway.)
      const { poolSize, executor } = message as { poolSize?: unknown; executor?: unknown };
      agent.poolSize = Math.max(1, Math.min(64, (typeof poolSize === "number" && poolSize) || 1));
      agent.executor = (typeof executor === "string" && executor.replace(/[^\x20-\x7e]/g, "?").slice(0, 100)) || "?";
      this.pump(agent.pool);
    } else if (message.type === "draining") {
      agent.draining = true;
      this.pump(agent.pool);
    } else if (message.type === "result") {
      const run = agent.pending.get(message.id);
      if (!run) return;
      agent.pending.delete(message.id);
      clearTimeout(run.timer);
      run.left();
      this.pump(agent.pool);
      const { ok, value, error, console, durationMs } = message;
      // Field by field, the error's too: what reaches the client is an answer's fields, whatever the agent sent.
      const fields = error && { name: error.name, message: error.message, stack: error.stack, code: error.code };
      const answer = { ok, value, error: fields, console: Array.isArray(console) ? console : [], durationMs };
      // Encoded here, once: what the answer budget counts is the text the gateway holds for the client.
      const json = new JsonText(JSON.stringify(answer satisfies Answer));
      if (!run.cancelled) {
        // Checked again now: runs admitted while little was held may all answer at once (the budget may be passed by
        // one answer, no more).
        const full = this.budgetFull(run.client);
        if (full) return run.reject(new HttpError(503, `the run ran, but ${full}: its answer is dropped`));
        this.holdAnswer(run.client, Buffer.byteLength(json.text), run.taken);
      }
      run.resolve(json);
    }
  }

  /**
   * Run code on one of the pool's agents; without timeoutMs the agent's default applies. A client gone before the
   * answer (`taken` settled) cancels the run. The run counts toward the client's share until it has left the queue or
   * its agent (answered, cancelled or not) and `taken` has settled (the answer delivered, or the client gone).
   */
  run(pool: string, job: Job, timeoutMs?: number, client = "", taken?: Promise<unknown>): Promise<FlowsRunResult> {
    const definition = this.pools.get(pool)?.definition;
    if (definition?.kind !== "flows") return Promise.reject(new HttpError(404, `no Flows pool named ${pool}`));
    const encoded = encodeJob(job);
    if (encoded.refused !== undefined) return Promise.reject(new HttpError(400, encoded.refused));
    const serving = this.serving(pool);
    if (serving.length === 0) return Promise.reject(new HttpError(503, `no agent of pool ${pool} is connected`));
    // Runs at the gateway (each up to a MiB of code) are bounded: four per runtime, at least 16. One client holds at
    // most its share of them, as on the VCS path.
    const bound = Math.max(16, 4 * serving.reduce((n, a) => n + a.poolSize, 0));
    const queue = this.queues.get(pool) ?? [];
    this.queues.set(pool, queue);
    if (serving.reduce((n, a) => n + a.pending.size, queue.length) >= bound)
      return Promise.reject(new HttpError(503, `pool ${pool} has ${bound} runs in flight`, RETRY_AFTER_SECONDS));
    const holder = `${pool}\n${client}`;
    if ((this.held.get(holder) ?? 0) >= shareOf(bound, this.clientShare))
      return Promise.reject(new HttpError(503, `this key holds its share of pool ${pool}'s runs`, RETRY_AFTER_SECONDS));
    const full = this.budgetFull(client);
    if (full) return Promise.reject(new HttpError(503, full, RETRY_AFTER_SECONDS));
    let left!: () => void;
    const gone = new Promise<void>((resolve) => (left = resolve));
    // Its promise's resolve and reject join it at once (a promise's executor runs in its constructor).
    const run = {
      id: randomUUID(),
      pool,
      job: encoded.text,
      timeoutMs,
      client,
      seq: ++this.arrivals,
      cancelled: false,
      taken,
      left,
    } as FlowsRun;
    const answer = new Promise<FlowsRunResult>((resolve, reject) => Object.assign(run, { resolve, reject }));
    queue.push(run);
    // The agents serving are those counted above: nothing ran in between.
    this.pump(pool, serving);
    // Still waiting for a runtime: as long as it may run (and the grace). Once sent, pump sets its answer's timer.
    if (!run.agent) {
      const waitMs = this.waitMs(run);
      run.timer = setTimeout(
        () => this.giveUp(run, 504, `no runtime of pool ${pool} came free within ${waitMs} ms`),
        waitMs,
      );
    }
    this.held.set(holder, (this.held.get(holder) ?? 0) + 1);
    const release = () => {
      const count = (this.held.get(holder) as number) - 1;
      if (count) this.held.set(holder, count);
      else this.held.delete(holder);
    };
    void taken?.then(() => this.giveUp(run, 499, "the client went away"));
    void Promise.allSettled([gone, taken]).then(release);
    return answer;
  }

  /** Why no more answers may be held for this key now (its share of the budget, or the whole budget, is full). */
  private budgetFull(client: string): string | undefined {
    const budget = this.options.flowsAnswerBudgetBytes ?? FLOWS_ANSWER_BUDGET_BYTES;
    if ((this.answerBytesOf.get(client) ?? 0) >= shareOf(budget, this.clientShare))
      return "answers not yet taken fill this key's share";
    return this.answerBytes >= budget ? "answers not yet taken fill the gateway's answer budget" : undefined;
  }

  /** Counts an answer's bytes toward the budget until it is taken. */
  private holdAnswer(client: string, bytes: number, taken = Promise.resolve<unknown>(undefined)): void {
    const add = (n: number) => {
      this.answerBytes += n;
      const mine = (this.answerBytesOf.get(client) ?? 0) + n;
      if (mine > 0) this.answerBytesOf.set(client, mine);
      else this.answerBytesOf.delete(client);
    };
    add(bytes);
    void taken.then(() => add(-bytes));
  }

  /** The pool's agents that take runs. */
  private serving(pool: string): FlowsAgent[] {
    return [...(this.agents.get(pool) ?? [])].filter((a) => !a.draining);
  }

  /**
   * Sends queued runs to agents with a runtime free: the least loaded agent (runs per runtime; among equals, the one
   * used least recently), and the run of the client with the fewest runs at the agents (among equals, the oldest). No
   * client holds more than its share of the pool's runtimes, so one key's long runs never hold them all while another
   * key waits (as on the VCS path, even when no other key is there). With no agent left to serve, the queue fails.
   */
  private pump(pool: string, serving?: FlowsAgent[]): void {
    const queue = this.queues.get(pool);
    if (!queue?.length) return;
    serving ??= this.serving(pool);
    if (serving.length === 0) {
      for (const run of queue.splice(0)) this.end(run, new HttpError(503, `no agent of pool ${pool} is connected`));
      return;
    }
    // Nothing to do while every runtime is taken (checked before any counting: this runs on every agent message).
    if (serving.every((a) => a.pending.size >= a.poolSize)) return;
    const load = (a: FlowsAgent) => a.pending.size / a.poolSize;
    const better = (a: FlowsAgent, b: FlowsAgent) =>
      load(a) < load(b) || (load(a) === load(b) && a.lastUsed < b.lastUsed);
    const atAgents = new Map<string, number>();
    for (const agent of serving) for (const run of agent.pending.values()) inc(atAgents, run.client);
    const held = (run: FlowsRun) => atAgents.get(run.client) ?? 0;
    const share = shareOf(
      serving.reduce((n, a) => n + a.poolSize, 0),
      this.clientShare,
    );
    for (;;) {
      const agent = serving.reduce((best, a) => (better(a, best) ? a : best));
      const eligible = queue.filter((r) => held(r) < share);
      if (agent.pending.size >= agent.poolSize || eligible.length === 0) return;
      const run = eligible.reduce((best, r) => (held(r) < held(best) ? r : best));
      queue.splice(queue.indexOf(run), 1);
      // The run leaves first; its answer cannot be read before this turn has registered it. pump() runs inside
      // message and close handlers: a throw here would leave them uncaught and end the gateway, so a run that cannot
      // be sent fails alone.
      try {
        agent.socket.send(runMessage(run));
      } catch (error) {
        this.log.error("a Flows run could not be sent to an agent", {
          pool,
          id: run.id,
          error: (error as Error).message,
        });
        this.end(run, new HttpError(500, "the run could not be sent to an agent"));
        continue;
      }
      inc(atAgents, run.client);
      agent.lastUsed = ++this.uses;
      run.agent = agent;
      agent.pending.set(run.id, run);
      // The agent enforces the run's timeout from its start; this covers a lost answer.
      clearTimeout(run.timer);
      const waitMs = this.waitMs(run);
      run.timer = setTimeout(() => this.giveUp(run, 504, `no answer from the agent within ${waitMs} ms`), waitMs);
    }
  }

  /** A queued run ends: its client gets `why`. */
  private end(run: FlowsRun, why: HttpError): void {
    clearTimeout(run.timer);
    run.reject(why);
    run.left();
  }

  private get clientShare(): number {
    return this.options.clientShare ?? QUEUE_DEFAULTS.clientShare;
  }

  /** How long the gateway waits for a run (for a runtime, then for its answer): its timeout and the grace. */
  private waitMs(run: FlowsRun): number {
    return (run.timeoutMs ?? FLOWS_MAX_RUN_TIMEOUT_MS) + (this.options.flowsAnswerGraceMs ?? FLOWS_ANSWER_GRACE_MS);
  }

  /**
   * Gives up on a run: its client gets `why` at once. A queued run just leaves the queue; an agent is told to drop or
   * end a run it holds, and answers when it has (in milliseconds, unless its answers queue behind large ones on a
   * slow link). One not answered within the ping timeout is counted gone (the agent is not dropped for it: that
   * would fail every run on its link). Every answered run passes here once its client has the answer: the error (and
   * its stack) is made only where it is given.
   */
  private giveUp(run: FlowsRun, status: number, message: string): void {
    const queue = this.queues.get(run.pool) ?? [];
    if (!run.agent) {
      const at = queue.indexOf(run);
      if (at < 0) return;
      queue.splice(at, 1);
      return this.end(run, new HttpError(status, message));
    }
    const agent = run.agent;
    if (agent.pending.get(run.id) !== run || run.cancelled) return;
    run.cancelled = true;
    clearTimeout(run.timer);
    run.reject(new HttpError(status, message));
    agent.socket.send(JSON.stringify({ type: "cancel", id: run.id } satisfies GatewayMessage));
    this.log.info("run cancelled", { pool: agent.pool, agent: agent.id, id: run.id, reason: message });
    run.timer = setTimeout(() => {
      this.log.warn("agent did not answer a cancelled run in time: its place is counted free", {
        pool: agent.pool,
        agent: agent.id,
        id: run.id,
      });
      agent.pending.delete(run.id);
      run.left();
      this.pump(agent.pool);
    }, this.options.pingTimeoutMs ?? PING_TIMEOUT_MS);
  }

  /** Runs not yet answered for a client that may no longer use their pool (its key removed or narrowed): 401, cancelled. */
  keysChanged(mayUse: (client: string, pool: string) => boolean): void {
    const runs: FlowsRun[] = [];
    for (const queue of this.queues.values()) runs.push(...queue);
    for (const agents of this.agents.values()) for (const agent of agents) runs.push(...agent.pending.values());
    for (const run of runs) if (!mayUse(run.client, run.pool)) this.giveUp(run, 401, KEY_REVOKED(run.pool));
  }

  summary(pool: string) {
    const agents = [...(this.agents.get(pool) ?? [])];
    return {
      connections: agents.filter((a) => !a.draining).length,
      activeRequests: agents.reduce((n, a) => n + a.pending.size, 0),
      waiting: this.queues.get(pool)?.length ?? 0,
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

/** The message sending a run (a GatewayMessage): its job is JSON text already. */
const runMessage = ({ id, job, timeoutMs }: FlowsRun) =>
  `{"type":"run","id":${JSON.stringify(id)},"job":${job}${timeoutMs === undefined ? "" : `,"timeoutMs":${JSON.stringify(timeoutMs)}`}}`;

/**
 * A client's job as JSON text, or why it is refused: its inputs are held to the caps of an agent's answer (depth,
 * objects and arrays, keys), and the job as a whole to the bytes of an answer's value. Encoded once, here: inputs too
 * deep to encode (JSON.parse reads any depth, JSON.stringify does not) are refused when they come, never found
 * when they are sent.
 */
export function encodeJob(job: Job): { text: string; refused?: undefined } | { refused: string } {
  let inputs: string | undefined;
  try {
    inputs = job.inputs === undefined ? undefined : JSON.stringify(job.inputs);
  } catch (error) {
    // For a body read as JSON, only nesting too deep for the encoder's stack; from an in-process caller, a cycle too.
    return error instanceof RangeError
      ? { refused: `inputs nest deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}` }
      : { refused: `inputs must be JSON values: ${(error as Error).message}` };
  }
  const cost = inputs === undefined ? undefined : jsonCost(inputs, FLOWS_MAX_VALUE_DEPTH);
  if (cost === "depth") return { refused: `inputs nest deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}` };
  if (cost === "keys") return { refused: `inputs hold more than the cap of ${FLOWS_MAX_VALUE_KEYS} object keys` };
  if (cost) return { refused: `inputs hold more than the cap of ${FLOWS_MAX_VALUE_CONTAINERS} objects and arrays` };
  const text = `{"kind":${JSON.stringify(job.kind)},"code":${JSON.stringify(job.code)}${inputs === undefined ? "" : `,"inputs":${inputs}`}}`;
  const bytes = Buffer.byteLength(text);
  if (bytes > FLOWS_MAX_VALUE_BYTES)
    return { refused: `the job is ${bytes} bytes as sent, over the cap of ${FLOWS_MAX_VALUE_BYTES} bytes` };
  return { text };
}

const inc = (counts: Map<string, number>, key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
