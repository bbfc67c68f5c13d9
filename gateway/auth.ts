import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type http from "node:http";
import { FLOWS_CONNECT_PATH } from "../protocol/flows";
import { CONNECT_PATH } from "../protocol/vcs";
import { WORKER_API, WORKER_CONNECT_PATH } from "../protocol/worker";
import { POOL_NAME } from "./pools";

/**
 * Who may use the gateway's service side. Agents prove their pool with its token (each hub
 * checks its own kind); a service proves itself with a service key: "apk1.<id>.<secret>",
 * made by `main.js add-key`, of which the gateway keeps the id, a name, the SHA-256 of the
 * secret and, optionally, the pools it may use.
 */
export interface ServiceKeyDefinition {
  id: string;
  name: string;
  secretSha256: string;
  /** The pools this key may use; every pool when absent. */
  pools?: string[];
}

/** Where a service sends its key: everywhere, and on the gateway's own API also as `Authorization: Bearer`. */
export const KEY_HEADER = "x-agentpools-key";
const KEY = /^apk1\.([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$/;
export const KEY_ID = /^[0-9a-f]{12}$/;

const digest = (secret: string) => createHash("sha256").update(secret, "utf8").digest();

/** A new key; the key itself is shown once and not stored. */
export function createServiceKey(name: string, pools?: string[]): { definition: ServiceKeyDefinition; key: string } {
  if (!/^[A-Za-z0-9 _.@-]{1,64}$/.test(name))
    throw new Error(`key name ${JSON.stringify(name)} must be 1-64 letters, digits, spaces or _ . @ -`);
  for (const pool of pools ?? [])
    if (!POOL_NAME.test(pool)) throw new Error(`pool name ${JSON.stringify(pool)} is not a pool name`);
  const id = randomBytes(6).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return {
    definition: { id, name, secretSha256: digest(secret).toString("hex"), ...(pools ? { pools } : {}) },
    key: `apk1.${id}.${secret}`,
  };
}

/** What a request is for, read from its path alone: which credential it needs, and for which pool. */
export type Route =
  | { kind: "agent" } // an agent's upgrade, or a launcher's run state: the pool's own credentials, checked by its hub
  | { kind: "status" }
  | { kind: "pools" }
  | { kind: "metrics" }
  | { kind: "flows-run"; pool: string }
  | { kind: "workers"; pool: string }
  | { kind: "vcs"; pool: string; path: string }
  | { kind: "unknown" };

export const API_PATH = "/_agentpools/api/pools";
const FLOWS_RUN = /^\/_agentpools\/api\/flows\/([A-Za-z0-9_-]+)\/run$/;
const WORKER_RUNS = new RegExp(`^${WORKER_API}/([A-Za-z0-9_-]+)/runs(?:/[^/]+(/logs|/state)?)?$`);
const VCS_ENTRY = /^\/([A-Za-z0-9][A-Za-z0-9_-]*)(\/[^]*)?$/;

export function routeOf(url: string): Route {
  const path = url.split("?")[0];
  if (path === CONNECT_PATH || path === FLOWS_CONNECT_PATH || path === WORKER_CONNECT_PATH) return { kind: "agent" };
  if (path === "/" || path === "/_agentpools/status") return { kind: "status" };
  if (path === API_PATH) return { kind: "pools" };
  if (path === "/_agentpools/metrics") return { kind: "metrics" };
  const flows = FLOWS_RUN.exec(path);
  if (flows) return { kind: "flows-run", pool: flows[1] };
  const workers = WORKER_RUNS.exec(path);
  if (workers) return workers[2] === "/state" ? { kind: "agent" } : { kind: "workers", pool: workers[1] };
  if (path.startsWith("/_agentpools/")) return { kind: "unknown" };
  const vcs = VCS_ENTRY.exec(url);
  return vcs ? { kind: "vcs", pool: vcs[1], path: vcs[2] ?? "/" } : { kind: "unknown" };
}

const LOOPBACK = /^(?:127\.|::1$|::ffff:127\.)/;

export type Verdict = { ok: true; key?: ServiceKeyDefinition } | { ok: false; status: 401 | 403; error: string };

/** The one check every service-side request passes before anything else reads it. */
export class ServiceAuth {
  private readonly keys: Map<string, ServiceKeyDefinition & { digest: Buffer }>;

  constructor(
    keys: ServiceKeyDefinition[],
    /** The status page needs no key from a loopback address (a browser on the gateway's host). */
    private readonly statusOnLoopback = false,
  ) {
    this.keys = new Map(keys.map((key) => [key.id, { ...key, digest: Buffer.from(key.secretSha256, "hex") }]));
  }

  /** The service key a request carries, if it is a valid one (compared in constant time). */
  private keyOf(req: http.IncomingMessage, route: Route): ServiceKeyDefinition | undefined {
    // On the VCS entry, Authorization is the VCS's credential and crosses untouched.
    const bearer = route.kind === "vcs" ? undefined : /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1];
    const header = req.headers[KEY_HEADER];
    const match = KEY.exec(typeof header === "string" ? header : (bearer ?? ""));
    const key = match && this.keys.get(match[1]);
    if (!match || !key) return undefined;
    return timingSafeEqual(digest(match[2]), key.digest) ? key : undefined;
  }

  /** May this request go on? Agents' routes are their hubs' to check. */
  check(req: http.IncomingMessage, route: Route): Verdict {
    if (route.kind === "agent") return { ok: true };
    if (route.kind === "status" && this.statusOnLoopback && LOOPBACK.test(req.socket.remoteAddress ?? ""))
      return { ok: true };
    const key = this.keyOf(req, route);
    if (!key) return { ok: false, status: 401, error: `a service key is required (${KEY_HEADER}: apk1.…)` };
    if ("pool" in route && !this.allows(key, route.pool))
      return { ok: false, status: 403, error: `this key may not use pool ${route.pool}` };
    return { ok: true, key };
  }

  /** Whether a key may use a pool (an answer that does not say whether the pool exists). */
  allows(key: ServiceKeyDefinition | undefined, pool: string): boolean {
    return !key?.pools || key.pools.includes(pool);
  }
}
