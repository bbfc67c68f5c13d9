import { subscribe } from "node:diagnostics_channel";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { BUILT_FOR } from "../config/built-for";
import {
  PING_INTERVAL_MS,
  PING_MESSAGE,
  PING_TIMEOUT_MS,
  PONG_MESSAGE,
  WEBSOCKET_MAX_MESSAGE,
} from "../../protocol/link";

/**
 * What a role needs of its WebSocket to the gateway: protocol/websocket.ts's client, or Node's own below. Events:
 * "message" (text), "pong" (what `ping` returned for the ping it answers, or Node's client: any), "timeout", "close".
 */
export interface LinkSocket extends EventEmitter {
  readonly open: boolean;
  /** `sent` is called once the socket has written the message (or the link is gone). */
  send(text: string, sent?: () => void): void;
  /** Bytes sent but not yet written to the connection. */
  buffered(): number;
  /** Sends a ping; returns what the "pong" event answering it carries. */
  ping(): string;
  close(code?: number): void;
  keepAlive(intervalMs?: number, timeoutMs?: number): void;
}

type Dispatcher = { dispatch(...args: unknown[]): boolean };
/** undici's global dispatcher (Node's, which NODE_USE_ENV_PROXY makes the environment's proxy), once undici is loaded. */
const globalDispatcher = () => (globalThis as Record<symbol, Dispatcher>)[Symbol.for("undici.globalDispatcher.1")];

// Node's WebSocket tells neither a refused handshake's status nor why a connection failed: undici's diagnostics
// channels do (process-wide, so only the answer to a handshake's path counts).
let status: number | undefined;
let failure = "";
let path = "";
let listening = false;
function listen() {
  subscribe("undici:request:headers", (event) => {
    const { request, response } = event as { request: { path: string }; response: { statusCode: number } };
    if (request.path === path) status = response.statusCode;
  });
  subscribe("undici:client:connectError", (event) => (failure = (event as { error: Error }).error.message));
  listening = true;
}

/**
 * The gateway's WebSocket with Node's built-in client (undici's), as the EC2 bundles dial it (in user-data its bytes
 * count; elsewhere protocol/websocket.ts's codec, lighter per message): through Node's global dispatcher, which goes by
 * the unit's HTTPS_PROXY, NO_PROXY and NODE_USE_ENV_PROXY, trusting NODE_EXTRA_CA_CERTS, checking the
 * handshake's accept key, answering the gateway's pings. It cannot send a ping frame: its keepalive is PING_MESSAGE,
 * which the gateway answers in order. Resolves once open; rejects with the refusal's status (401 and 403 are final)
 * or the connection's error.
 */
export function dialWebSocket(url: URL, headers: Record<string, string>, timeoutMs = 10_000): Promise<LinkSocket> {
  if (!listening) listen();
  status = undefined;
  failure = "";
  path = url.pathname;
  // Node's client keeps the connection of a link closed without the gateway's close frame (one that stopped
  // answering) until the kernel gives up on it: the connection is taken from the handshake, to end it.
  let connection: Socket | undefined;
  const watch = (handler: { onUpgrade(...args: unknown[]): unknown }) =>
    new Proxy(handler, {
      get: (target, key) =>
        key === "onUpgrade"
          ? (...args: unknown[]) => ((connection = args[2] as Socket), target.onUpgrade(...args))
          : Reflect.get(target, key),
    });
  const ws = new WebSocket(url, {
    headers,
    // With the message cap of protocol/link.ts rather than undici's 128 MiB: a gateway's larger message closes the
    // link (1009) before it is held.
    dispatcher: {
      dispatch: (options: unknown, handler: Parameters<typeof watch>[0]) =>
        globalDispatcher().dispatch(options, watch(handler)),
      webSocketOptions: { maxPayloadSize: WEBSOCKET_MAX_MESSAGE },
    } as unknown as WebSocketInit["dispatcher"],
  });
  /** Closes, and ends the connection a moment later (time for the close frame), whether or not the gateway answers. */
  const end = () => {
    ws.close();
    const held = connection;
    if (held) setTimeout(() => held.destroy(), 1000).unref();
  };
  const link = new EventEmitter() as LinkSocket & { open: boolean };
  let heard = () => {};
  const finish = () => link.open && ((link.open = false), link.emit("close"));
  link.send = (text, sent) => {
    // Only the Flows agent waits for a message to leave (a run's result, as it drains): the launcher's bundle leaves
    // the waiting out.
    if (BUILT_FOR.role === "launcher") return void (link.open && ws.send(text));
    if (!link.open) return sent?.();
    ws.send(text);
    if (!sent) return;
    // No event says the bytes left: undici's buffer is watched, first on the loop's next turn (a message the kernel
    // took whole has left by then: answers one after another do not wait a tick each), then every 5 ms.
    const check = (): unknown => (ws.bufferedAmount && link.open ? setTimeout(check, 5) : sent());
    setImmediate(check);
  };
  link.buffered = () => ws.bufferedAmount;
  // Text pings carry nothing to match: any pong answers (the gateway answers each in order, after what it sent before).
  link.ping = () => (link.send(PING_MESSAGE), PONG_MESSAGE);
  // Not waiting for the gateway's close frame: a gateway that stopped answering sends none.
  link.close = () => (end(), finish());
  link.keepAlive = (intervalMs = PING_INTERVAL_MS, timeoutMs = PING_TIMEOUT_MS) => {
    let deadline: NodeJS.Timeout | undefined;
    const tick = setInterval(() => {
      deadline ??= setTimeout(() => (link.emit("timeout"), link.close()), timeoutMs);
      link.ping();
    }, intervalMs);
    heard = () => (deadline = void clearTimeout(deadline));
    link.once("close", () => (clearInterval(tick), clearTimeout(deadline)));
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(end, timeoutMs);
    ws.onopen = () => (clearTimeout(timer), (link.open = true), resolve(link));
    ws.onmessage = ({ data }) => link.open && (heard(), link.emit(data === PONG_MESSAGE ? "pong" : "message", data));
    ws.onclose = () => {
      clearTimeout(timer);
      if (link.open) finish();
      else
        reject(
          Object.assign(
            new Error(
              status
                ? `the gateway refused the connection: ${status}`
                : `the gateway did not answer the upgrade${failure && `: ${failure}`}`,
            ),
            { status },
          ),
        );
    };
  });
}
