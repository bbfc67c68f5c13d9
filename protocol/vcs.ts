import type http from "node:http";

/**
 * The VCS link between a VCS agent and the gateway (docs/protocol.md): the path an agent
 * dials, the upgrade it asks for, and which request headers cross it.
 */
export const CONNECT_PATH = "/_agentpools/connect";
export const UPGRADE_PROTOCOL = "agentpools-mux1";

/** Headers that belong to one connection, not to the request: never forwarded. */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host", "http2-settings"]);

export function forwardableHeaders(headers: http.IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name.startsWith(":") || HOP_BY_HOP.has(name.toLowerCase())) continue;
    out[name] = value as string | string[];
  }
  return out;
}
