import type { Socket } from "node:net";
import { encodeMetadata, METADATA_HEADER, ROLE_HEADER } from "../../protocol/link";
import { GatewayLink } from "./session";
import { acceptKey, newKey, WebSocket } from "../../protocol/websocket";
import type { Logger } from "../../lib/log";
import { BUILT_FOR } from "../config/built-for";
import { dialGateway } from "./dial";
import { dialWebSocket, type LinkSocket } from "./builtin-websocket";

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
 * unanswered for 10 s closes it, and the link reconnects. On EC2 the socket is Node's own client, which dials with
 * the unit's proxy variables (builtin-websocket.ts), about 650 bytes less in user-data; elsewhere, where bytes do
 * not count, protocol/websocket.ts's codec over dial.ts's connection (the settings' proxy), with the upgrade's key
 * checked here: it costs about 0.2 ms less per Flows run (bench:flows, both clients timed in turn).
 */
export abstract class WebSocketLink extends GatewayLink<LinkSocket> {
  protected socket?: LinkSocket;

  constructor(options: WebSocketLinkOptions) {
    super({
      gateway: options.gateway,
      path: options.path,
      headers: () => ({
        ...options.credentials(),
        [ROLE_HEADER]: options.role,
        [METADATA_HEADER]: encodeMetadata(options.settings.metadataTags),
      }),
      log: options.log,
      // How dial.ts upgrades, and through which proxy: Node's client on EC2 needs neither.
      ...(BUILT_FOR.platform === "ec2"
        ? {}
        : { protocol: "websocket", proxy: options.settings.httpsProxy, noProxy: options.settings.noProxy }),
    });
  }

  get connected(): boolean {
    return !!this.socket?.open && !this.draining;
  }

  /** The WebSocket is open: say hello, listen for messages. */
  protected abstract opened(socket: LinkSocket): void;

  protected async dial(headers: Record<string, string>): Promise<LinkSocket> {
    const { gateway, path, timeoutMs } = this.link;
    if (BUILT_FOR.platform === "ec2") return dialWebSocket(new URL(path!, gateway), headers, timeoutMs);
    const key = newKey();
    const raw: Socket = await dialGateway(
      gateway,
      { ...headers, "sec-websocket-key": key, "sec-websocket-version": "13" },
      {
        ...this.link,
        check: (response) => {
          if (response.headers["sec-websocket-accept"] !== acceptKey(key))
            throw new Error("the gateway's WebSocket answer does not match our key");
        },
      },
    );
    return new WebSocket(raw, true);
  }

  protected serve(socket: LinkSocket): Promise<void> {
    this.socket = socket;
    socket.keepAlive();
    this.opened(socket);
    this.markReady();
    return new Promise((resolve) => socket.once("close", resolve));
  }
}

/**
 * This ping answered (or the deadline): whatever the gateway sent before reading it has arrived. A pong that answers
 * another ping (a keepalive's, sent earlier) or none does not count.
 */
export function roundTrip(socket: LinkSocket, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
    const done = () => (clearTimeout(timer), resolve());
    const mine = socket.ping();
    socket.on("pong", (payload: string) => payload === mine && done()).once("close", done);
  });
}
