import { hash, randomBytes, timingSafeEqual } from "node:crypto";
import type http from "node:http";
import { POOL_NAME } from "./pools";
import type { Route } from "./target";

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

const digest = (secret: string) => hash("sha256", secret, "buffer");

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

/** What a request whose key was removed (or no longer allows the pool) while it waited is answered. */
export const KEY_REVOKED = (pool: string) => `the service key no longer allows pool ${pool}`;

const LOOPBACK = /^(?:127\.|::1$|::ffff:127\.)/;

/**
 * A request's bearer credential (the scheme in any case, RFC 7235). None when Authorization is given more than once:
 * Node keeps the first, a proxy in front of the gateway may read another.
 */
export function bearerToken(req: Pick<http.IncomingMessage, "headers" | "rawHeaders">): string | undefined {
  let given = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i].toLowerCase() === "authorization") given++;
  return given === 1 ? /^Bearer +(\S+)$/i.exec(req.headers.authorization ?? "")?.[1] : undefined;
}

export type Verdict = { ok: true; key?: ServiceKeyDefinition } | { ok: false; status: 401 | 403; error: string };

/** The one check every service-side request passes before anything else reads it. */
export class ServiceAuth {
  private keys = new Map<string, ServiceKeyDefinition & { digest: Buffer }>();

  constructor(
    keys: ServiceKeyDefinition[],
    /** The status page needs no key from a loopback address (a browser on the gateway's host). */
    private readonly statusOnLoopback = false,
  ) {
    this.replace(keys);
  }

  /** Serve with these keys from the next request on (a removed key is refused at once); the ids added and removed. */
  replace(keys: ServiceKeyDefinition[]): { added: string[]; removed: string[] } {
    const before = this.keys;
    this.keys = new Map(keys.map((key) => [key.id, { ...key, digest: Buffer.from(key.secretSha256, "hex") }]));
    const same = (a?: ServiceKeyDefinition, b?: ServiceKeyDefinition) => JSON.stringify(a) === JSON.stringify(b);
    const changed = (from: typeof before, to: typeof before) =>
      [...from.values()].filter((key) => !same(to.get(key.id), key)).map((key) => key.id);
    return { added: changed(this.keys, before), removed: changed(before, this.keys) };
  }

  /** The service key a request carries, if it is a valid one (compared in constant time). */
  private keyOf(req: http.IncomingMessage, route: Route): ServiceKeyDefinition | undefined {
    const header = req.headers[KEY_HEADER];
    // Authorization only without the key's own header; on the VCS entry it is the VCS's credential and crosses untouched.
    const given = typeof header === "string" ? header : route.kind === "vcs" ? undefined : bearerToken(req);
    const match = KEY.exec(given ?? "");
    const key = match && this.keys.get(match[1]);
    if (!match || !key) return undefined;
    return timingSafeEqual(digest(match[2]), key.digest) ? key : undefined;
  }

  /** May this request go on? Agents' routes (a connection, a launcher's run state) are their hubs' to check. */
  check(req: http.IncomingMessage, route: Route): Verdict {
    if (route.kind === "connect" || route.kind === "state") return { ok: true };
    if (route.kind === "status" && this.statusOnLoopback && LOOPBACK.test(req.socket.remoteAddress ?? ""))
      return { ok: true };
    const key = this.keyOf(req, route);
    if (!key) return { ok: false, status: 401, error: `a service key is required (${KEY_HEADER}: apk1.…)` };
    if ("pool" in route && !this.allows(key, route.pool))
      return { ok: false, status: 403, error: `this key may not use pool ${route.pool}` };
    return { ok: true, key };
  }

  /** Whether this key is still served with the same secret (neither rotated nor removed). */
  stillServes(key: ServiceKeyDefinition): boolean {
    return this.keys.get(key.id)?.secretSha256 === key.secretSha256;
  }

  /** Whether the key of this id is served and may use this pool. */
  mayUse(id: string, pool: string): boolean {
    const key = this.keys.get(id);
    return key !== undefined && this.allows(key, pool);
  }

  /** Whether a key may use a pool (an answer that does not say whether the pool exists). */
  allows(key: ServiceKeyDefinition | undefined, pool: string): boolean {
    return !key?.pools || key.pools.includes(pool);
  }
}
