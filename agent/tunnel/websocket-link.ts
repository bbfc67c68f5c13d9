import type { Socket } from "node:net";
import { encodeMetadata, METADATA_HEADER, ROLE_HEADER } from "../../protocol/link";
import { GatewayLink } from "./session";
import { acceptKey, newKey, WebSocket } from "../../protocol/websocket";
import type { Logger } from "../../lib/log";

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
 * A gateway link carrying a WebSocket (the Flows agent's and the launcher's): the upgrade
 * with its key check, and keepalive pings; a ping unanswered for 10 s closes it, and the link
 * reconnects.
 */
export abstract class WebSocketLink extends GatewayLink {
  protected socket?: WebSocket;
  private key = "";

  constructor(options: WebSocketLinkOptions) {
    super({
      gateway: options.gateway,
      path: options.path,
      protocol: "websocket",
      headers: () => {
        this.key = newKey();
        return {
          ...options.credentials(),
          [ROLE_HEADER]: options.role,
          [METADATA_HEADER]: encodeMetadata(options.settings.metadataTags),
          "sec-websocket-key": this.key,
          "sec-websocket-version": "13",
        };
      },
      check: (response) => {
        if (response.headers["sec-websocket-accept"] !== acceptKey(this.key))
          throw new Error("the gateway's WebSocket answer does not match our key");
      },
      proxy: options.settings.httpsProxy,
      noProxy: options.settings.noProxy,
      log: options.log,
    });
  }

  get connected(): boolean {
    return !!this.socket?.open && !this.draining;
  }

  /** The WebSocket is open: say hello, listen for messages. */
  protected abstract opened(socket: WebSocket): void;

  protected serve(raw: Socket): Promise<void> {
    const socket = new WebSocket(raw, true);
    this.socket = socket;
    socket.keepAlive();
    this.opened(socket);
    this.markReady();
    return new Promise((resolve) => socket.once("close", resolve));
  }
}

/** A ping answered (or the deadline): whatever the gateway sent before reading it has arrived. */
export function roundTrip(socket: WebSocket, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
    const done = () => (clearTimeout(timer), resolve());
    socket.once("pong", done).once("close", done);
    socket.ping();
  });
}
