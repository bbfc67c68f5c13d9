import http2 from "node:http2";
import { interruptibleSleep } from "../runtime/http";
import type { Logger } from "../runtime/log";
import type { Socket } from "node:net";
import { dialGateway, type DialOptions } from "./dial";

/** Per-stream and per-connection flow-control windows: enough for ~100 MB/s at 50 ms RTT. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 32 * 1024 * 1024;
/** DATA frames up to 256 KiB (the default is 16 KiB): fewer frames per megabyte streamed. */
export const MAX_FRAME = 256 * 1024;
/** Keepalive: more often than common proxy and load-balancer idle timeouts (60 s). */
export const PING_INTERVAL_MS = 20_000;
const PING_TIMEOUT_MS = 10_000;

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

export interface LinkOptions extends DialOptions {
  gateway: URL;
  /** Headers of the upgrade request (credentials, role, metadata), made anew for each dial. */
  headers: Record<string, string> | (() => Record<string, string>);
  log: Logger;
}

/**
 * A connection the agent keeps to its gateway: dial out, serve until the connection ends,
 * reconnect with jittered backoff, until drained. Subclasses say what runs on the socket.
 */
export abstract class GatewayLink {
  readonly ready: Promise<void>;
  /** Rejects if the gateway refuses the credentials (401/403): retrying cannot help. */
  readonly stopped: Promise<void>;
  protected markReady!: () => void;
  protected draining = false;
  private fail!: (error: Error) => void;
  private finish!: () => void;
  private wake?: () => void;

  constructor(protected readonly link: LinkOptions) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.stopped = new Promise((resolve, reject) => ((this.finish = resolve), (this.fail = reject)));
    this.stopped.catch(() => undefined);
    setImmediate(() => void this.run());
  }

  /** Serve one connection; resolves when it has ended. Call markReady() once it is live. */
  protected abstract serve(socket: Socket): Promise<void>;
  /** Close the live connection gracefully, by the deadline at the latest. */
  protected abstract closeGracefully(deadline: number): Promise<void>;
  /** Connected to the gateway now (not between a drop and a reconnect). */
  abstract get connected(): boolean;

  private async run(): Promise<void> {
    const { log, gateway, headers, ...dial } = this.link;
    for (let attempt = 0; !this.draining; ) {
      try {
        const socket = await dialGateway(gateway, typeof headers === "function" ? headers() : headers, dial);
        attempt = 0;
        await this.serve(socket);
        if (!this.draining) log.warn("disconnected from the gateway; reconnecting");
      } catch (error) {
        const status = (error as { status?: number }).status;
        if (status === 401 || status === 403) {
          this.fail(error as Error);
          return;
        }
        log.warn("cannot reach the gateway", { gateway: gateway.origin, error: (error as Error).message });
      }
      if (this.draining) break;
      const pause = interruptibleSleep(backoffDelay(attempt++));
      this.wake = pause.wake;
      await pause.done;
    }
    this.finish();
  }

  /** Stop reconnecting and close the connection gracefully. */
  async drain(deadline: number): Promise<void> {
    this.draining = true;
    this.wake?.();
    await this.closeGracefully(deadline);
    await this.stopped.catch(() => undefined);
  }
}

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
 * The agent's end of the HTTP/2 tunnel. Once the gateway accepts the token the roles turn
 * round and the agent serves HTTP/2 on its outbound socket, so the gateway can open streams to it.
 */
export class Tunnel extends GatewayLink {
  private session?: http2.ServerHttp2Session;

  constructor(private readonly options: TunnelOptions) {
    super({
      gateway: options.gateway,
      headers: {
        authorization: `Bearer ${options.token}`,
        "x-agentpools-role": options.role,
        "x-agentpools-metadata": Buffer.from(JSON.stringify(options.metadata)).toString("base64url"),
      },
      proxy: options.proxy,
      noProxy: options.noProxy,
      log: options.log,
    });
  }

  protected serve(socket: Socket): Promise<void> {
    const { log } = this.options;
    const session = http2.performServerHandshake(socket, {
      settings: { maxConcurrentStreams: this.options.parallelism, initialWindowSize: STREAM_WINDOW, maxFrameSize: MAX_FRAME, enablePush: false },
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
        resolve();
      });
    });
  }

  get connected(): boolean {
    return !!this.session && !this.session.closed && !this.session.destroyed && !this.draining;
  }

  /** GOAWAY: no new streams; those in flight finish, or are cut at the deadline. */
  protected async closeGracefully(deadline: number): Promise<void> {
    const session = this.session;
    if (!session || session.closed || session.destroyed) return;
    let closed = false;
    const deadlineTimer = interruptibleSleep(Math.max(0, deadline - Date.now()));
    session.close(() => ((closed = true), deadlineTimer.wake()));
    await deadlineTimer.done;
    if (!closed) session.destroy();
  }
}
