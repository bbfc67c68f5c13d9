import type { Socket } from "node:net";
import type { Logger } from "../../lib/log";
import { MuxConnection, type MuxStream, type RequestHead } from "../../protocol/mux";
import { GatewayLink } from "./session";

export interface TunnelOptions {
  gateway: URL;
  token: string;
  role: string;
  metadata: Record<string, string>;
  /** Streams the gateway may have open on this agent at once. */
  parallelism: number;
  proxy?: string;
  noProxy?: string;
  log: Logger;
  onStream(stream: MuxStream, head: RequestHead): void;
  pingIntervalMs?: number;
}

/**
 * The VCS agent's end of the tunnel. Once the gateway accepts the token, the agent's
 * outbound socket carries multiplexed streams that the gateway opens, one per request.
 */
export class Tunnel extends GatewayLink {
  private mux?: MuxConnection;

  constructor(private readonly options: TunnelOptions) {
    super({
      gateway: options.gateway,
      headers: {
        authorization: `Bearer ${options.token}`,
        "x-agentpools-role": options.role,
        "x-agentpools-streams": String(options.parallelism),
        "x-agentpools-metadata": Buffer.from(JSON.stringify(options.metadata)).toString("base64url"),
      },
      proxy: options.proxy,
      noProxy: options.noProxy,
      log: options.log,
    });
  }

  protected serve(socket: Socket): Promise<void> {
    const { log } = this.options;
    const mux = new MuxConnection(socket, {
      maxStreams: this.options.parallelism,
      onStream: this.options.onStream,
      onProtocolError: (message) => log.warn("tunnel closed", { reason: message }),
      pingIntervalMs: this.options.pingIntervalMs,
    });
    this.mux = mux;
    log.info("Connected to the server", { gateway: this.options.gateway.origin, parallelism: this.options.parallelism });
    this.markReady();
    return mux.closedPromise;
  }

  get connected(): boolean {
    return !!this.mux && !this.mux.isClosed && !this.draining;
  }

  /** Requests are in flight (the pool's busy metric). */
  get busy(): boolean {
    return !!this.mux?.size;
  }

  /** GOAWAY: no new streams; those in flight finish, or are cut at the deadline. */
  protected async closeGracefully(deadline: number): Promise<void> {
    if (this.mux && !this.mux.isClosed) await this.mux.close(deadline);
  }
}
