import { randomUUID } from "node:crypto";
import type http from "node:http";
import http2 from "node:http2";
import type { Socket } from "node:net";
import type { Logger } from "../lib/log";
import { PING_INTERVAL_MS, PING_TIMEOUT_MS, ROLE_HEADER } from "../protocol/link";
import { decodeToken } from "../protocol/token";
import {
  CONNECTION_WINDOW,
  keepAlive,
  SESSION_OPTIONS,
  SETTINGS,
  STREAMS,
  UPGRADE_PROTOCOL,
  type HeaderMap,
} from "../protocol/vcs";
import { bearerToken, KEY_REVOKED } from "./auth";
import { HttpError } from "./http";
import { poolFull, secretMatches, type ConnectedAgent, type PoolDefinition, type RefuseUpgrade } from "./pools";
import { WriteBudget } from "./vcs-writes";

interface VcsAgent extends ConnectedAgent {
  role: string;
  session: http2.ClientHttp2Session;
  active: number;
  /** When a stream was last given to it (a counter): ties go to the one idle longest. */
  lastUsed: number;
  draining: boolean;
}

interface Waiter {
  client: string;
  grant(slot: Slot): void;
  fail(error: HttpError): void;
  timer: NodeJS.Timeout;
}

interface PoolState {
  agents: Set<VcsAgent>;
  waiters: Waiter[];
  /** Streams each client holds now, requests it has waiting, and when it was last given a stream (a counter). */
  clients: Map<string, { active: number; waiting: number; served: number }>;
  /** Agent connections admitted and not yet closed (in their handshake, or agents). */
  links: number;
}

/** One of an agent's streams, held for one exchange. release() frees it, once, whatever ends the exchange. */
export interface Slot {
  agent: VcsAgent;
  release(): void;
}

export interface VcsHubOptions {
  /** How long a request waits for a free stream (default 60 s). */
  queueTimeoutMs?: number;
  /** Requests that may wait per pool (default 1,000): beyond it, 503 with Retry-After. */
  maxQueued?: number;
  /** The part of a pool's streams, and of its queue, one client may hold (default 0.75). */
  clientShare?: number;
  /** Agent connections per pool, handshakes included (default MAX_AGENTS_PER_POOL). */
  maxAgentsPerPool?: number;
  pingIntervalMs?: number;
  /** Bytes of write bodies held at once to be checked, for every pool (default 16 MiB). */
  writeBudgetBytes?: number;
}

export const QUEUE_DEFAULTS = { queueTimeoutMs: 60_000, maxQueued: 1000, clientShare: 0.75 };
/** What a 503 tells a client to wait before trying again. */
export const RETRY_AFTER_SECONDS = 2;

/** One client's part of `total` (streams, or places in the queue): at least 1; below `total` when the share is. */
export const shareOf = (total: number, share: number) =>
  Math.max(1, Math.min(Math.floor(total * share + 1e-9), share < 1 ? total - 1 : total));

const busy = (message: string) => new HttpError(503, message, RETRY_AFTER_SECONDS);

/**
 * The gateway's side of VCS pools. Each agent's connection is an HTTP/2 session on which the
 * gateway is the client; a request takes one stream of the pool's least busy agent (ties: the
 * one idle longest), or waits in a bounded queue that serves first the client holding the
 * fewest streams. No client holds more than its share of a pool's streams.
 */
export class VcsHub {
  /** Write bodies held to be checked, for every pool. */
  readonly writes: WriteBudget;
  private readonly state = new Map<string, PoolState>();
  private readonly options: Required<Omit<VcsHubOptions, "pingIntervalMs" | "maxAgentsPerPool" | "writeBudgetBytes">> &
    VcsHubOptions;
  private uses = 0;

  constructor(
    private readonly pools: Map<string, { definition: PoolDefinition }>,
    private readonly log: Logger,
    options: VcsHubOptions = {},
  ) {
    this.options = {
      ...QUEUE_DEFAULTS,
      ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
    };
    this.writes = new WriteBudget(options.writeBudgetBytes);
  }

  private pool(name: string): PoolState {
    let state = this.state.get(name);
    if (!state) this.state.set(name, (state = { agents: new Set(), waiters: [], clients: new Map(), links: 0 }));
    return state;
  }

  /** A VCS agent's upgrade request: a VCS pool's token and the vcs-agent role, then HTTP/2. */
  accept(
    req: http.IncomingMessage,
    socket: Socket,
    head: Buffer,
    metadata: Record<string, string>,
    refuse: RefuseUpgrade,
  ): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (String(req.headers.upgrade).toLowerCase() !== UPGRADE_PROTOCOL)
      return refuse(400, `not an agent connection (upgrade to ${UPGRADE_PROTOCOL})`, { remote });
    let claimed: string | undefined;
    let definition: PoolDefinition | undefined;
    try {
      const token = decodeToken(bearerToken(req) ?? "");
      claimed = token.pool;
      const pool = this.pools.get(token.pool)?.definition;
      // A token of a Flows or worker pool never opens a VCS tunnel, whatever role it claims.
      if (pool?.kind === "vcs" && req.headers[ROLE_HEADER] === "vcs-agent" && secretMatches(pool, token.secret))
        definition = pool;
    } catch {
      // not a token at all
    }
    if (!definition)
      return refuse(401, "token refused (a VCS pool's token, role vcs-agent)", { remote, pool: claimed });
    const state = this.pool(definition.name);
    const full = poolFull(definition.name, state.links, this.options.maxAgentsPerPool);
    if (full) return refuse(503, full, { remote });
    state.links++;
    socket.once("close", () => state.links--);

    // The agent starts HTTP/2 as soon as it reads the 101: hold its bytes in the socket's
    // buffer, and start the session only once the 101 is flushed (a write still in flight
    // when HTTP/2 takes over a TLS socket is handed to the session, which Node rejects).
    socket.pause();
    if (head.length > 0) socket.unshift(head);
    socket.setNoDelay(true);
    const name = definition.name;
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`,
      (error) => {
        if (error) return void socket.destroy();
        this.startSession(socket, {
          id: randomUUID(),
          pool: name,
          role: "vcs-agent",
          remote,
          metadata,
          connectedAt: new Date().toISOString(),
        });
      },
    );
  }

  private startSession(socket: Socket, fields: Omit<VcsAgent, "session" | "active" | "lastUsed" | "draining">): void {
    const session = http2.connect(`http://${fields.pool}.agents`, {
      createConnection: () => socket,
      ...SESSION_OPTIONS,
      settings: SETTINGS,
      maxReservedRemoteStreams: 0,
    });
    // Paused to hold the agent's first bytes until the session took them: flowing again, so the
    // socket's end is seen, and then the connection is over (the link has no half-open state).
    socket.resume();
    socket.once("end", () => socket.destroy());
    const agent: VcsAgent = { ...fields, session, active: 0, lastUsed: 0, draining: false };
    const state = this.pool(agent.pool);
    const close = (reason: string) => {
      this.log.warn("agent connection closed", { pool: agent.pool, agent: agent.id, reason });
      session.destroy();
      socket.destroy();
    };
    // An agent that upgrades and then says nothing holds a socket for no one.
    const handshake = setTimeout(() => close("no HTTP/2 settings from the agent"), PING_TIMEOUT_MS);
    session.on("error", (error) =>
      this.log.warn("agent connection error", { pool: agent.pool, agent: agent.id, error: error.message }),
    );
    session.once("remoteSettings", (settings) => {
      clearTimeout(handshake);
      const streams = settings.maxConcurrentStreams ?? 0;
      if (streams < STREAMS.min || streams > STREAMS.max)
        return close(`SETTINGS_MAX_CONCURRENT_STREAMS must be ${STREAMS.min}-${STREAMS.max}, not ${streams}`);
      session.setLocalWindowSize(CONNECTION_WINDOW);
      state.agents.add(agent);
      this.log.info("agent connected", {
        pool: agent.pool,
        agent: agent.id,
        remote: agent.remote,
        metadata: agent.metadata,
        parallelism: streams,
      });
      this.serveWaiters(agent.pool);
    });
    session.on("goaway", () => (agent.draining = true));
    const keepalive = keepAlive(session, this.options.pingIntervalMs ?? PING_INTERVAL_MS);
    session.once("close", () => {
      clearTimeout(handshake);
      clearInterval(keepalive);
      if (state.agents.delete(agent)) this.log.info("agent disconnected", { pool: agent.pool, agent: agent.id });
    });
  }

  /** Streams an agent serves at once, as its SETTINGS say (within the protocol's range). */
  private capacity(agent: VcsAgent): number {
    return Math.min(STREAMS.max, agent.session.remoteSettings?.maxConcurrentStreams ?? 0);
  }

  private usable(agent: VcsAgent): boolean {
    return !agent.draining && !agent.session.closed && !agent.session.destroyed;
  }

  /**
   * What one client may hold: its share of the pool's streams, rounded down, and (a share
   * under 1) never every stream of a pool that has more than one: 1 of 2, 2 of 3, 3 of 4.
   */
  private clientLimit(state: PoolState): number {
    let total = 0;
    for (const agent of state.agents) if (this.usable(agent)) total += this.capacity(agent);
    return shareOf(total, this.options.clientShare);
  }

  private client(state: PoolState, client: string) {
    let entry = state.clients.get(client);
    if (!entry) state.clients.set(client, (entry = { active: 0, waiting: 0, served: 0 }));
    return entry;
  }

  private forgetIfIdle(state: PoolState, client: string): void {
    const entry = state.clients.get(client);
    if (entry && entry.active === 0 && entry.waiting === 0) state.clients.delete(client);
  }

  /** The least busy agent with a free stream (by share of its streams in use), then the one idle longest. */
  private pick(state: PoolState): VcsAgent | undefined {
    let best: VcsAgent | undefined;
    for (const agent of state.agents) {
      const capacity = this.capacity(agent);
      if (!this.usable(agent) || agent.active >= capacity) continue;
      if (!best) best = agent;
      else {
        const [load, bestLoad] = [agent.active / capacity, best.active / this.capacity(best)];
        if (load < bestLoad || (load === bestLoad && agent.lastUsed < best.lastUsed)) best = agent;
      }
    }
    return best;
  }

  private take(state: PoolState, agent: VcsAgent, client: string): Slot {
    agent.active++;
    agent.lastUsed = ++this.uses;
    const entry = this.client(state, client);
    entry.active++;
    entry.served = this.uses;
    let released = false;
    return {
      agent,
      release: () => {
        if (released) return;
        released = true;
        agent.active--;
        entry.active--;
        this.forgetIfIdle(state, client);
        this.serveWaiters(agent.pool);
      },
    };
  }

  /**
   * Give freed streams to waiters, fairly between clients: the client holding the fewest
   * streams first, then the one served least recently (turns), then the longest waiting.
   */
  private serveWaiters(pool: string): void {
    const state = this.pool(pool);
    while (state.waiters.length > 0) {
      const agent = this.pick(state);
      if (!agent) return;
      const limit = this.clientLimit(state);
      let chosen = -1;
      let best: { active: number; served: number } | undefined;
      for (let i = 0; i < state.waiters.length; i++) {
        const entry = this.client(state, state.waiters[i].client);
        if (entry.active >= limit) continue;
        if (!best || entry.active < best.active || (entry.active === best.active && entry.served < best.served))
          [chosen, best] = [i, entry];
      }
      if (chosen === -1) return;
      const [waiter] = state.waiters.splice(chosen, 1);
      clearTimeout(waiter.timer);
      this.client(state, waiter.client).waiting--;
      waiter.grant(this.take(state, agent, waiter.client));
    }
  }

  /** Requests waiting for a client that may no longer use their pool (its key removed or narrowed) leave: 401. */
  keysChanged(mayUse: (client: string, pool: string) => boolean): void {
    for (const [pool, state] of this.state)
      for (const waiter of state.waiters.filter((w) => !mayUse(w.client, pool)))
        waiter.fail(new HttpError(401, KEY_REVOKED(pool)));
  }

  /**
   * A stream of the pool for this client: now, after a bounded wait, or a 503 with
   * Retry-After. A request whose client goes away while waiting (`signal`) leaves the queue.
   */
  acquire(pool: string, client: string, signal?: AbortSignal): Promise<Slot> {
    const state = this.pool(pool);
    if (![...state.agents].some((a) => this.usable(a)))
      return Promise.reject(busy(`no agent of pool ${pool} is connected`));
    const limit = this.clientLimit(state);
    const entry = this.client(state, client);
    const agent = entry.active < limit && state.waiters.length === 0 ? this.pick(state) : undefined;
    if (agent) return Promise.resolve(this.take(state, agent, client));
    // Others wait (or this client is at its share): join the queue, which serves fairly.
    const { queueTimeoutMs, maxQueued, clientShare } = this.options;
    if (state.waiters.length >= maxQueued || entry.waiting >= shareOf(maxQueued, clientShare)) {
      this.forgetIfIdle(state, client);
      return Promise.reject(busy(`pool ${pool} has ${state.waiters.length} requests waiting: try again shortly`));
    }
    return new Promise<Slot>((resolve, reject) => {
      const leave = (error: HttpError) => {
        const at = state.waiters.indexOf(waiter);
        if (at === -1) return;
        state.waiters.splice(at, 1);
        clearTimeout(waiter.timer);
        entry.waiting--;
        this.forgetIfIdle(state, client);
        reject(error);
      };
      const waiter: Waiter = {
        client,
        grant: (slot) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(slot);
        },
        fail: leave,
        timer: setTimeout(
          () => leave(busy(`every agent of pool ${pool} stayed busy for ${queueTimeoutMs} ms`)),
          queueTimeoutMs,
        ),
      };
      const onAbort = () => leave(new HttpError(499, "the client went away while waiting"));
      signal?.addEventListener("abort", onAbort, { once: true });
      entry.waiting++;
      state.waiters.push(waiter);
      this.serveWaiters(pool);
    });
  }

  /**
   * Open a stream for one request on a slot's agent. The slot is released when the stream
   * closes, however it closes; a stream that cannot be opened releases it at once.
   */
  open(
    slot: Slot,
    head: { method: string; path: string; headers: HeaderMap; length?: number },
    hasBody: boolean,
  ): http2.ClientHttp2Stream {
    let stream: http2.ClientHttp2Stream;
    try {
      const headers: http2.OutgoingHttpHeaders = { ...head.headers, ":method": head.method, ":path": head.path };
      if (head.length !== undefined) headers["content-length"] = head.length;
      stream = slot.agent.session.request(headers, { endStream: !hasBody });
    } catch (error) {
      // Stream ids run out after 2^30 requests (or the session broke): this connection takes
      // no more; streams in flight finish and the agent dials again.
      if ((error as { code?: string }).code === "ERR_HTTP2_OUT_OF_STREAMS") {
        slot.agent.draining = true;
        slot.agent.session.close();
      }
      slot.release();
      throw new HttpError(502, `the agent could not take the request: ${(error as Error).message}`);
    }
    stream.once("close", slot.release);
    return stream;
  }

  summary(pool: string) {
    const state = this.pool(pool);
    const agents = [...state.agents];
    return {
      connections: agents.filter((a) => !a.draining).length,
      activeRequests: agents.reduce((sum, a) => sum + a.active, 0),
      waiting: state.waiters.length,
      agents: agents.map((a) => ({
        id: a.id,
        role: a.role,
        remote: a.remote,
        connectedAt: a.connectedAt,
        metadata: a.metadata,
        active: a.active,
        parallelism: this.capacity(a),
        draining: a.draining,
      })),
    };
  }

  close(): void {
    for (const state of this.state.values()) {
      for (const waiter of [...state.waiters]) waiter.fail(busy("the gateway is stopping"));
      for (const agent of state.agents) agent.session.destroy();
      state.agents.clear();
    }
  }
}
