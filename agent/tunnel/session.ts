import http2 from "node:http2";
import { interruptibleSleep } from "../runtime/http";
import type { Logger } from "../runtime/log";
import { dialGateway } from "./dial";

/** Per-stream and per-connection flow-control windows: enough for ~100 MB/s at 50 ms RTT. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 32 * 1024 * 1024;
/** Keepalive: more often than common proxy and load-balancer idle timeouts (60 s). */
export const PING_INTERVAL_MS = 20_000;
const PING_TIMEOUT_MS = 10_000;

export interface TunnelOptions {
  gateway: URL;
  token: string;
  role: string;
  metadata: Record<string, string>;
  /** Streams the gateway may open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  parallelism: number;
  proxy?: string;
  noProxy?: string;
  log: Logger;
  onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void;
  pingIntervalMs?: number;
}

/**
 * Ping the peer every interval; a ping unanswered for 10 s destroys the session (the
 * other end, or the path to it, is gone). Returns the timer to clear on close.
 */
export function keepAlive(session: http2.Http2Session, intervalMs: number): NodeJS.Timeout {
  return setInterval(() => {
    const timer = setTimeout(() => session.destroy(new Error("keepalive ping unanswered")), PING_TIMEOUT_MS);
    if (!session.ping((error) => (clearTimeout(timer), error && session.destroy(error)))) clearTimeout(timer);
  }, intervalMs);
}

/** Full-jitter exponential backoff: a random delay up to min(cap, base * 2^attempt). */
export const backoffDelay = (attempt: number, baseMs = 500, capMs = 30_000) => Math.random() * Math.min(capMs, baseMs * 2 ** attempt);

/**
 * The agent's end of the tunnel. The agent dials out; once the gateway accepts its token
 * the roles turn round and the agent serves HTTP/2 on that socket, so the gateway can open
 * streams to it. Reconnects with jittered backoff until drained.
 */
export class Tunnel {
  readonly ready: Promise<void>;
  /** Rejects if the gateway refuses the token: retrying cannot help. */
  readonly stopped: Promise<void>;
  private markReady!: () => void;
  private fail!: (error: Error) => void;
  private finish!: () => void;
  private session?: http2.ServerHttp2Session;
  private draining = false;
  private wake?: () => void;

  constructor(private readonly options: TunnelOptions) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.stopped = new Promise((resolve, reject) => ((this.finish = resolve), (this.fail = reject)));
    this.stopped.catch(() => undefined);
    void this.run();
  }

  private async run(): Promise<void> {
    const { log } = this.options;
    for (let attempt = 0; !this.draining; ) {
      try {
        const socket = await dialGateway(
          this.options.gateway,
          {
            authorization: `Bearer ${this.options.token}`,
            "x-agentpools-role": this.options.role,
            "x-agentpools-metadata": Buffer.from(JSON.stringify(this.options.metadata)).toString("base64url"),
          },
          { proxy: this.options.proxy, noProxy: this.options.noProxy },
        );
        attempt = 0;
        await this.serve(socket);
      } catch (error) {
        const status = (error as { status?: number }).status;
        if (status === 401 || status === 403) {
          this.fail(error as Error);
          return;
        }
        log.warn("cannot reach the gateway", { gateway: this.options.gateway.origin, error: (error as Error).message });
      }
      if (this.draining) break;
      const pause = interruptibleSleep(backoffDelay(attempt++));
      this.wake = pause.wake;
      await pause.done;
    }
    this.finish();
  }

  private serve(socket: import("node:net").Socket): Promise<void> {
    const { log } = this.options;
    const session = http2.performServerHandshake(socket, {
      settings: { maxConcurrentStreams: this.options.parallelism, initialWindowSize: STREAM_WINDOW, enablePush: false },
    });
    this.session = session;
    session.on("connect", () => session.setLocalWindowSize(CONNECTION_WINDOW));
    session.on("stream", (stream, headers) => this.options.onStream(stream, headers));
    session.on("error", (error) => log.warn("tunnel error", { error: error.message }));
    log.info("Connected to the server", { gateway: this.options.gateway.origin, parallelism: this.options.parallelism });
    this.markReady();

    const keepalive = keepAlive(session, this.options.pingIntervalMs ?? PING_INTERVAL_MS);
    return new Promise<void>((resolve) => {
      session.once("close", () => {
        clearInterval(keepalive);
        if (!this.draining) log.warn("disconnected from the gateway; reconnecting");
        resolve();
      });
    });
  }

  /** Connected to the gateway now (not between a drop and a reconnect). */
  get connected(): boolean {
    return !!this.session && !this.session.closed && !this.session.destroyed && !this.draining;
  }

  /** Refuse new streams (GOAWAY), let those in flight finish, and stop reconnecting. */
  async drain(deadline: number): Promise<void> {
    this.draining = true;
    this.wake?.();
    const session = this.session;
    if (session && !session.closed && !session.destroyed) {
      let closed = false;
      const deadlineTimer = interruptibleSleep(Math.max(0, deadline - Date.now()));
      session.close(() => ((closed = true), deadlineTimer.wake()));
      await deadlineTimer.done;
      if (!closed) session.destroy();
    }
    await this.stopped.catch(() => undefined);
  }
}
