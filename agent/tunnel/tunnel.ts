import http2 from "node:http2";
import type { Socket } from "node:net";
import type { Logger } from "../../lib/log";
import { encodeMetadata, METADATA_HEADER, PING_INTERVAL_MS, ROLE_HEADER } from "../../protocol/link";
import { CONNECTION_WINDOW, keepAlive, SESSION_OPTIONS, SETTINGS } from "../../protocol/vcs";
import { interruptibleSleep } from "../runtime/http";
import { dialGateway } from "./dial";
import { GatewayLink } from "./session";

export interface TunnelOptions {
  gateway: URL;
  token: string;
  role: string;
  metadata: Record<string, string>;
  /** Streams the gateway may open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  parallelism: number;
  proxy?: string;
  noProxy?: string;
  log: Logger;
  onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void;
  pingIntervalMs?: number;
}

/**
 * The VCS agent's end of the tunnel. Once the gateway accepts the token the roles turn round:
 * the agent serves HTTP/2 on the socket it dialled, and the gateway opens one stream per request.
 */
export class Tunnel extends GatewayLink<Socket> {
  private session?: http2.ServerHttp2Session;
  private socket?: Socket;
  private streams = 0;

  constructor(private readonly options: TunnelOptions) {
    super({
      gateway: options.gateway,
      headers: {
        authorization: `Bearer ${options.token}`,
        [ROLE_HEADER]: options.role,
        [METADATA_HEADER]: encodeMetadata(options.metadata),
      },
      proxy: options.proxy,
      noProxy: options.noProxy,
      log: options.log,
    });
  }

  protected dial(headers: Record<string, string>): Promise<Socket> {
    return dialGateway(this.link.gateway, headers, this.link);
  }

  protected serve(socket: Socket): Promise<void> {
    const { log } = this.options;
    const session = http2.performServerHandshake(socket, {
      ...SESSION_OPTIONS,
      settings: { ...SETTINGS, maxConcurrentStreams: this.options.parallelism },
      // Streams beyond the limit, resets in a burst: the gateway is misbehaving, not busy.
      maxSessionRejectedStreams: 16,
      maxSessionInvalidFrames: 16,
    });
    this.session = session;
    this.socket = socket;
    // Paused by the dial to hold the gateway's first bytes: flowing again so its end is seen.
    socket.resume();
    socket.once("end", () => socket.destroy());
    session.on("connect", () => session.setLocalWindowSize(CONNECTION_WINDOW));
    session.on("stream", (stream, headers) => {
      this.streams++;
      stream.once("close", () => this.streams--);
      this.options.onStream(stream, headers);
    });
    session.on("error", (error) => log.warn("tunnel closed", { reason: error.message }));
    session.on("frameError", (type, code) => log.warn("tunnel frame error", { type, code }));
    log.info("Connected to the server", {
      gateway: this.options.gateway.origin,
      parallelism: this.options.parallelism,
    });
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

  /** The share of its streams in use (the pool's busy metric). */
  get busy(): number {
    return this.streams / this.options.parallelism;
  }

  /** GOAWAY: no new streams; those in flight finish, or are cut at the deadline. */
  protected async closeGracefully(deadline: number): Promise<void> {
    const session = this.session;
    if (!session || session.closed || session.destroyed) return;
    let closed = false;
    const deadlineTimer = interruptibleSleep(Math.max(0, deadline - Date.now()));
    session.close(() => ((closed = true), deadlineTimer.wake()));
    await deadlineTimer.done;
    // Past the deadline: streams still open are reset with an error (never NO_ERROR, which Node's
    // client reads as a complete answer), and the socket goes too.
    if (!closed) {
      session.destroy(new Error("the drain deadline passed with requests in flight"));
      this.socket?.destroy();
    }
  }
}
