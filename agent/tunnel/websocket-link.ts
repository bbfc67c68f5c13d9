import type { Socket } from "node:net";
import { GatewayLink, PING_INTERVAL_MS } from "./session";
import { acceptKey, newKey, WebSocket } from "./websocket";
import type { Logger } from "../runtime/log";

export interface WebSocketLinkOptions {
  gateway: URL;
  path: string;
  /** The upgrade's credentials and metadata, made anew for each dial. */
  headers(): Record<string, string>;
  proxy?: string;
  noProxy?: string;
  log: Logger;
}

/**
 * A gateway link carrying a WebSocket (the Flows agent's and the launcher's): the upgrade
 * with its key check, and a ping whenever the link has been quiet; an unanswered ping closes
 * it, and the link reconnects.
 */
export abstract class WebSocketLink extends GatewayLink {
  protected socket?: WebSocket;
  private key = "";

  constructor(options: WebSocketLinkOptions) {
    super({
      gateway: options.gateway,
      path: options.path,
      protocol: "websocket",
      headers: () => ((this.key = newKey()), { ...options.headers(), "sec-websocket-key": this.key, "sec-websocket-version": "13" }),
      check: (response) => {
        if (response.headers["sec-websocket-accept"] !== acceptKey(this.key)) throw new Error("the gateway's WebSocket answer does not match our key");
      },
      proxy: options.proxy,
      noProxy: options.noProxy,
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
    let answered = true;
    socket.on("pong", () => (answered = true));
    const keepalive = setInterval(() => {
      if (!answered) return socket.close(1001);
      answered = false;
      socket.ping();
    }, PING_INTERVAL_MS);
    this.opened(socket);
    this.markReady();
    return new Promise((resolve) => {
      socket.once("close", () => {
        clearInterval(keepalive);
        resolve();
      });
    });
  }
}
