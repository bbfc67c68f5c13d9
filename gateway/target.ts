import { METRICS_PATH } from "./metrics";
import { FLOWS_CONNECT_PATH } from "../protocol/flows";
import { CONNECT_PATH } from "../protocol/vcs";
import { WORKER_API, WORKER_CONNECT_PATH } from "../protocol/worker";
import { POOL_NAME } from "./pools";

/**
 * What a request to the gateway is for, read once from its raw request-target. The credential
 * it needs (auth.ts), the hub that serves it and every parameter that hub uses (pool, run,
 * query) come from this one reading: nothing re-reads `req.url`, so no two readers can
 * disagree (a WHATWG URL, say, reads `\` as `/` and `#` as the end of the path).
 */
export type Route =
  /** An agent's upgrade: its hub checks the pool's own credentials. */
  | { kind: "connect"; link: "vcs" | "flows" | "workers" }
  /** A launcher's run state: the pool's secret and key proof, checked by the worker hub. */
  | { kind: "state"; pool: string; run: string }
  | { kind: "status" }
  | { kind: "pools" }
  | { kind: "metrics" }
  | { kind: "flows-run"; pool: string }
  | { kind: "runs"; pool: string }
  | { kind: "run"; pool: string; run: string; logs: boolean }
  /** The VCS entry: `path` is the rest of the target (query included) exactly as sent, for the agent to read. */
  | { kind: "vcs"; pool: string; path: string }
  | { kind: "unknown"; path: string };

export const API_PATH = "/_agentpools/api/pools";

export interface Target {
  route: Route;
  /** The gateway's own paths' query: keys decoded and lower-cased, values decoded (empty for the VCS entry). */
  query: Map<string, string>;
}

/** RFC 3986 path and query characters; anything else (`\`, `#`, a space, a control character) is refused. */
const TARGET_CHARS = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;
const RUN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const CONTROL = /[\x00-\x1f\x7f]/;
const MAX_TARGET = 8192;

/** A query key or value decoded as a form is (`+` is a space), or undefined if its escapes are malformed. */
function decode(raw: string): string | undefined {
  if (/%(?![0-9A-Fa-f]{2})/.test(raw)) return undefined;
  try {
    return decodeURIComponent(raw.replace(/\+/g, " "));
  } catch {
    return undefined;
  }
}

/** A path of the gateway's own (it has no escapes). */
function ownRoute(path: string): Route {
  if (path === "/_agentpools/status") return { kind: "status" };
  if (path === API_PATH) return { kind: "pools" };
  if (path === METRICS_PATH) return { kind: "metrics" };
  if (path === CONNECT_PATH) return { kind: "connect", link: "vcs" };
  if (path === FLOWS_CONNECT_PATH) return { kind: "connect", link: "flows" };
  if (path === WORKER_CONNECT_PATH) return { kind: "connect", link: "workers" };
  const unknown: Route = { kind: "unknown", path };
  const flows = /^\/_agentpools\/api\/flows\/([^/]+)\/run$/.exec(path);
  if (flows) return POOL_NAME.test(flows[1]) ? { kind: "flows-run", pool: flows[1] } : unknown;
  if (!path.startsWith(`${WORKER_API}/`)) return unknown;
  const [pool, runs, run, part, ...more] = path.slice(WORKER_API.length + 1).split("/");
  if (!POOL_NAME.test(pool) || runs !== "runs" || more.length > 0) return unknown;
  if (run === undefined) return { kind: "runs", pool };
  if (!RUN_ID.test(run)) return unknown;
  if (part === undefined || part === "logs") return { kind: "run", pool, run, logs: part === "logs" };
  return part === "state" ? { kind: "state", pool, run } : unknown;
}

/**
 * Read a request-target, or say why it has no single reading. Every target: the origin form
 * only (a path; an absolute URL or `*` is refused), URL characters only (no `\\`, `#`, space or
 * control character, which other readers resolve each their own way). The gateway's own paths
 * (`/_agentpools/...`) also take no escape, no empty or dot segment and no repeated query key.
 * The VCS entry (`/<pool>/...`) is the pool's name and the rest exactly as sent: its agent
 * reads that rest by its vendor's rules and refuses what is ambiguous there (canonical.ts).
 */
export function readTarget(raw: string): Target | string {
  if (raw.length > MAX_TARGET) return `the request target is longer than ${MAX_TARGET} characters`;
  if (!TARGET_CHARS.test(raw))
    return "the request target must be a path of URL characters only (no \\, #, spaces, or absolute URL)";
  const queryAt = raw.indexOf("?");
  const path = queryAt === -1 ? raw : raw.slice(0, queryAt);
  const first = path.slice(1).split("/")[0];
  const query = new Map<string, string>();
  if (first === "") return path === "/" ? { route: { kind: "status" }, query } : "the path has an empty segment";
  if (first !== "_agentpools") {
    if (!POOL_NAME.test(first)) return { route: { kind: "unknown", path }, query };
    const rest = raw.slice(1 + first.length);
    return { route: { kind: "vcs", pool: first, path: rest.startsWith("/") ? rest : `/${rest}` }, query };
  }
  if (path.includes("%")) return "the gateway's own paths take no escapes";
  if (
    path
      .split("/")
      .slice(1)
      .some((segment) => segment === "" || /^\.+$/.test(segment))
  )
    return "the path has an empty or a dot segment";
  for (const pair of queryAt === -1 ? [] : raw.slice(queryAt + 1).split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const key = decode(eq === -1 ? pair : pair.slice(0, eq));
    const value = decode(eq === -1 ? "" : pair.slice(eq + 1));
    if (key === undefined || value === undefined || CONTROL.test(key + value))
      return "the query has a malformed escape or a control character";
    if (query.has(key.toLowerCase())) return `the query key ${key} is repeated`;
    query.set(key.toLowerCase(), value);
  }
  return { route: ownRoute(path), query };
}
