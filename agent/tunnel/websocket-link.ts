import { encodeMetadata, METADATA_HEADER, ROLE_HEADER } from "../../protocol/link";
import { GatewayLink } from "./session";
import type { Logger } from "../../lib/log";
import { BUILT_FOR } from "../config/variants";
import { dialWebSocket, proxyDispatcher, type LinkSocket } from "./builtin-websocket";

export interface WebSocketLinkOptions {
  gateway: URL;
  path: string;
  role: string;
  /** The upgrade's credentials, made anew for each dial. */
  credentials(): Record<string, string>;
  /** Metadata tags and proxy settings, as every role's settings name them. */
  settings: { metadataTags: Record<string, string>; httpsProxy?: string; noProxy?: string };
  log: Logger;
}

/**
 * A gateway link carrying a WebSocket (the Flows agent's and the launcher's), with keepalive pings; a ping
 * unanswered for 10 s closes it, and the link reconnects. The socket is Node's own client (builtin-websocket.ts):
 * on EC2 through the unit's proxy variables, elsewhere through the settings' proxy.
 */
export abstract class WebSocketLink extends GatewayLink<LinkSocket> {
  protected socket?: LinkSocket;
  private dispatcher?: ReturnType<typeof proxyDispatcher>;

  constructor(options: WebSocketLinkOptions) {
    super({
      gateway: options.gateway,
      path: options.path,
      headers: () => ({
        ...options.credentials(),
        [ROLE_HEADER]: options.role,
        [METADATA_HEADER]: encodeMetadata(options.settings.metadataTags),
      }),
      proxy: options.settings.httpsProxy,
      noProxy: options.settings.noProxy,
      log: options.log,
    });
  }

  get connected(): boolean {
    return !!this.socket?.open && !this.draining;
  }

  /** The WebSocket is open: say hello, listen for messages. */
  protected abstract opened(socket: LinkSocket): void;

  protected dial(headers: Record<string, string>): Promise<LinkSocket> {
    const { gateway, path, timeoutMs, proxy, noProxy } = this.link;
    // On EC2 the unit's environment says the proxy (NODE_USE_ENV_PROXY): Node's global dispatcher. Elsewhere the
    // settings do, made once into a dispatcher of the link's own.
    if (BUILT_FOR.platform !== "ec2" && proxy) this.dispatcher ??= proxyDispatcher(proxy, noProxy);
    return dialWebSocket(new URL(path!, gateway), headers, timeoutMs, this.dispatcher);
  }

  protected serve(socket: LinkSocket): Promise<void> {
    this.socket = socket;
    socket.keepAlive();
    this.opened(socket);
    this.markReady();
    return new Promise((resolve) => socket.once("close", resolve));
  }
}

/** A ping answered (or the deadline): whatever the gateway sent before reading it has arrived. */
export function roundTrip(socket: LinkSocket, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
    const done = () => (clearTimeout(timer), resolve());
    socket.once("pong", done).once("close", done);
    socket.ping();
  });
}
