import type http2 from "node:http2";
import { PING_TIMEOUT_MS } from "./link";

/**
 * The VCS link between a VCS agent and the gateway (docs/protocol.md §1-§5): the path an
 * agent dials, the upgrade it asks for, the HTTP/2 settings both ends hold to, and which
 * request headers cross it. Both sides import these; nothing here is written twice.
 */
export const CONNECT_PATH = "/_agentpools/connect";
/** HTTP/2 with the roles turned round: the agent, which dialled, is the HTTP/2 server. */
export const UPGRADE_PROTOCOL = "agentpools-h2";

/** Streams one agent serves at once (its parallelism, HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
export const STREAMS = { min: 1, max: 64, default: 4 } as const;

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * Flow-control windows: what a sender may have in flight on one stream and on the whole
 * connection before the reader's consumer has taken it. They are also the most a peer that
 * never reads can make the other side hold per stream and per connection.
 */
export const STREAM_WINDOW = 4 * MiB;
export const CONNECTION_WINDOW = 16 * MiB;
/** DATA frames up to 256 KiB (HTTP/2's default is 16 KiB): fewer frames per megabyte. */
export const MAX_FRAME_SIZE = 256 * KiB;
/** A request or response head, uncompressed; an HTTP/1.1 head at the gateway is at most 16 KiB. */
export const MAX_HEADER_LIST_SIZE = 64 * KiB;
export const MAX_HEADER_PAIRS = 128;
/** Header fields a client's request may have at the gateway: what a stream carries, less its pseudo-headers and length. */
export const MAX_REQUEST_HEADERS = MAX_HEADER_PAIRS - 8;

/**
 * Node's session options for either end: each one bounds what the peer can make this side
 * hold. Header compression tables, queued frames and unacknowledged pings and settings count
 * against maxSessionMemory (MB); past it new streams are refused. A peer that floods control
 * frames it never reads the answers to is cut off by nghttp2 (about 1,000 queued answers).
 */
export const SESSION_OPTIONS = {
  maxSessionMemory: 32,
  maxOutstandingPings: 2,
  maxHeaderListPairs: MAX_HEADER_PAIRS,
  maxSettings: 16,
  maxDeflateDynamicTableSize: 4 * KiB,
} satisfies http2.SessionOptions;

/** What each end announces in its SETTINGS. The agent adds maxConcurrentStreams (its parallelism). */
export const SETTINGS = {
  initialWindowSize: STREAM_WINDOW,
  maxFrameSize: MAX_FRAME_SIZE,
  maxHeaderListSize: MAX_HEADER_LIST_SIZE,
  headerTableSize: 4 * KiB,
  enablePush: false,
} satisfies http2.Settings;

/**
 * Ping the peer every interval; a ping unanswered for PING_TIMEOUT_MS destroys the session
 * (the other end, or the path to it, is gone). Returns the timer to clear on close.
 */
export function keepAlive(session: http2.Http2Session, intervalMs: number): NodeJS.Timeout {
  return setInterval(() => {
    if (session.destroyed || session.closed) return;
    const timer = setTimeout(() => session.destroy(new Error("keepalive ping unanswered")), PING_TIMEOUT_MS);
    if (!session.ping((error) => (clearTimeout(timer), error && session.destroy(error)))) clearTimeout(timer);
  }, intervalMs);
}

// Sets marked pure so a bundle that takes only the dialling constants (the launcher's) leaves them out.

/** Methods whose requests have no body: one that comes with a body is refused, never forwarded. */
export const BODILESS_METHODS: ReadonlySet<string> = /* @__PURE__ */ new Set([
  "GET",
  "HEAD",
  "DELETE",
  "OPTIONS",
  "TRACE",
  "CONNECT",
]);

/**
 * What never crosses a hop in an answer: what belongs to one connection (RFC 9110 7.6.1, and
 * HTTP/2's own), framing (a length is set again from what was counted), and our own names.
 */
const DROPPED =
  /^(?::|x-agentpools-|proxy-|(?:connection|keep-alive|te|trailer|transfer-encoding|upgrade|host|http2-settings|content-length|expect)$)/i;

/** Headers that must appear once: a second value is an ambiguity some server would resolve differently. */
export const SINGULAR_HEADERS: ReadonlySet<string> = /* @__PURE__ */ new Set([
  "authorization",
  "private-token",
  "job-token",
  "content-type",
  "content-length",
  "content-encoding",
  "transfer-encoding",
  "host",
  "git-protocol",
]);

export type HeaderMap = Record<string, string | string[]>;

/** An answer's headers as they cross a hop: names lower-cased, those above dropped. */
export function forwardableHeaders(headers: Record<string, string | string[] | number | undefined>): HeaderMap {
  const out: HeaderMap = {};
  for (const [name, value] of Object.entries(headers))
    if (value !== undefined && !DROPPED.test(name))
      out[name.toLowerCase()] = typeof value === "number" ? String(value) : value;
  return out;
}

/**
 * The request headers that cross to the VCS, all others dropped: what git's smart HTTP and the
 * vendors' REST APIs read (content negotiation, credentials, git's protocol version, cache
 * validators, GitHub's API version, Azure DevOps' and Bitbucket's no-redirect and XSRF opt-outs).
 * Anything else (client-IP, method-override, sendfile, impersonation headers, in any spelling)
 * would only let a client choose what some server in front of the VCS believes.
 */
const REQUEST_HEADERS =
  /^(?:accept(?:-encoding|-language)?|authorization|private-token|job-token|content-(?:type|encoding)|user-agent|git-protocol|if-none-match|if-modified-since|x-github-api-version|x-tfs-fedauthredirect|x-atlassian-token)$/i;

/** A request's headers as they may reach the VCS: names lower-cased, only those above. */
export function requestHeaders(headers: Record<string, string | string[] | number | undefined>): HeaderMap {
  const out: HeaderMap = {};
  for (const [name, value] of Object.entries(headers))
    if (value !== undefined && REQUEST_HEADERS.test(name)) out[name.toLowerCase()] = String(value);
  return out;
}

/** The first singular header given more than once, if any. */
export function repeatedSingular(headers: Record<string, string | string[] | number | undefined>): string | undefined {
  return Object.keys(headers).find(
    (name) =>
      SINGULAR_HEADERS.has(name.toLowerCase()) &&
      Array.isArray(headers[name]) &&
      (headers[name] as string[]).length > 1,
  );
}

/** Query keys that carry credentials (GitLab's private_token, OAuth's access_token, ...). */
const CREDENTIAL_KEY = /token|secret|passw|signature|^sig$|^key$|api[-_]?key|^code$|^auth/i;

/** Calls `found(rawKey, rawValue)` for each query pair whose key names a credential (pairs split on & and ;). */
function eachCredential(query: string, found: (key: string, value: string) => string): string {
  return query.replace(/([^&;=]*)=([^&;]*)/g, (pair, key: string, value: string) => {
    let name = key;
    try {
      name = decodeURIComponent(key.replace(/\+/g, " "));
    } catch {
      // An undecodable key is judged as sent.
    }
    return CREDENTIAL_KEY.test(name) ? found(key, value) : pair;
  });
}

/** A request target fit for a log line: the values of credential query keys replaced. */
export function redactTarget(target: string): string {
  const at = target.indexOf("?");
  return at === -1
    ? target
    : `${target.slice(0, at)}?${eachCredential(target.slice(at + 1), (key) => `${key}=[redacted]`)}`;
}

/** The credential values a target's query carries (raw and decoded), to blank out wherever they reappear. */
export function queryCredentials(target: string): string[] {
  const values: string[] = [];
  const at = target.indexOf("?");
  if (at !== -1)
    eachCredential(target.slice(at + 1), (_, value) => {
      values.push(value);
      try {
        values.push(decodeURIComponent(value.replace(/\+/g, " ")));
      } catch {
        // kept raw only
      }
      return "";
    });
  return values;
}
