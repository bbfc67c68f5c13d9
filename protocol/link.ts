/** What every agent link shares, whatever the pool's kind (docs/protocol.md). */

/** Keepalive: more often than common proxy and load-balancer idle timeouts (60 s). */
export const PING_INTERVAL_MS = 20_000;
/** A ping unanswered this long closes the link: a peer that stopped answering is gone in at most 30 s. */
export const PING_TIMEOUT_MS = 10_000;

/**
 * A WebSocket agent's ping as a text message, for clients that cannot send a ping frame (Node's own, the EC2
 * bundles' client): the gateway answers it with PONG_MESSAGE in order, after whatever it sent before reading it.
 */
export const PING_MESSAGE = '{"type":"ping"}';
export const PONG_MESSAGE = '{"type":"pong"}';

/** The largest WebSocket message either side takes; a larger one closes the connection (1009). */
export const WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024;

/** Headers of an agent's upgrade request (Node names them in lower case). */
export const ROLE_HEADER = "x-agentpools-role";
/** The agent's metadata tags: base64url of a JSON object of strings. */
export const METADATA_HEADER = "x-agentpools-metadata";
/** The pool a Flows agent or a launcher connects for (a VCS agent's token names it). */
export const POOL_HEADER = "x-agentpools-pool";

export const encodeMetadata = (tags: Record<string, string>) => Buffer.from(JSON.stringify(tags)).toString("base64url");

/** Hosts a gateway is dialled at in plain http://, as URL reads them (127.0.0.1 for 127.1): loopback only. */
const LOOPBACK_HOST = /^(localhost|127(\.\d+){3}|\[::1\])$/;
/** What a gateway URL may be, said in every refusal. */
export const GATEWAY_URLS = "https://, or http:// only to localhost, 127.0.0.0/8 or [::1]";

/**
 * Why an agent may not dial this gateway URL, or undefined. An agent sends its pool's token to its gateway: over a
 * network, only inside TLS. Shown: the scheme and host, never credentials or a path.
 */
export function gatewayUrlProblem(url: URL): string | undefined {
  if (url.protocol === "https:" || (url.protocol === "http:" && LOOPBACK_HOST.test(url.hostname))) return undefined;
  return `${url.protocol}//${url.host} is not allowed: use ${GATEWAY_URLS}`;
}

/** A JSON text message, or undefined if it is not JSON (such a message is ignored, not fatal). */
export function parseMessage<T>(text: string): T | undefined {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}
