import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { encodeToken } from "../protocol/token";
import { POOL_NAME } from "../protocol/pool-metrics";

/** Pool names (protocol/pool-metrics.ts): VCS pools appear in URLs; Flows pool IDs are such names too. */
export { POOL_NAME };

export const POOL_KINDS = ["vcs", "flows", "worker"] as const;
export type PoolKind = (typeof POOL_KINDS)[number];

/** What the gateway keeps of a pool: its name, kind and the SHA-256 of its secret, never the secret. */
export interface PoolDefinition {
  name: string;
  kind: PoolKind;
  secretSha256: string;
  /** Worker pools: the certificate the gateway signed from the pool's CSR (public). */
  certificate?: string;
}

/** What the gateway knows of every connected agent, whatever its kind. */
export interface ConnectedAgent {
  id: string;
  pool: string;
  remote: string;
  metadata: Record<string, string>;
  connectedAt: string;
}

/**
 * Agent connections one pool may hold at once, of any kind (an Auto Scaling group during an
 * instance refresh holds up to twice its size): beyond it an agent is refused with 503, so a
 * token holder cannot make the gateway hold sockets without end.
 */
export const MAX_AGENTS_PER_POOL = 256;

/** How a hub refuses an agent's upgrade: the status and reason it answers, and what is logged. */
export type RefuseUpgrade = (status: number, reason: string, details: Record<string, unknown>) => void;

/** Why one more agent may not join a pool holding `connected` of them, if it may not. */
export const poolFull = (pool: string, connected: number, max = MAX_AGENTS_PER_POOL) =>
  connected >= max ? `pool ${pool} has ${max} agents connected already` : undefined;

const digest = (secret: string) => createHash("sha256").update(secret, "utf8").digest();

/**
 * A new pool and the token its agents use; the token is shown once and not stored. A worker
 * pool's token also carries its certificate (signed from the pool's CSR, see certificates.ts).
 */
export function createPool(
  name: string,
  kind: PoolKind,
  gatewayUrl: string,
  certificate?: string,
): { pool: PoolDefinition; token: string } {
  if (!POOL_NAME.test(name))
    throw new Error(`pool name ${JSON.stringify(name)} must be letters, digits, dashes and underscores (at most 63)`);
  if ((kind === "worker") !== (certificate !== undefined))
    throw new Error("a worker pool needs the certificate signed from its CSR, and only a worker pool has one");
  const secret = randomBytes(32).toString("base64url");
  // A Flows agent is told its pool ID and gateway separately, so its token is the bare secret.
  const token = kind === "flows" ? secret : encodeToken({ gateway: gatewayUrl, pool: name, secret, certificate });
  return {
    pool: { name, kind, secretSha256: digest(secret).toString("hex"), ...(certificate ? { certificate } : {}) },
    token,
  };
}

/** Compare a presented secret with the stored digest, in constant time. */
export function secretMatches(pool: PoolDefinition, secret: string): boolean {
  const expected = Buffer.from(pool.secretSha256, "hex");
  const actual = digest(secret);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
