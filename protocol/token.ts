/**
 * A pool token names its gateway and pool, and carries the secret the gateway checks:
 * "ap1." + base64url(JSON {gateway, pool, secret}). Agents need nothing else to connect.
 */
export interface PoolToken {
  gateway: string;
  pool: string;
  secret: string;
  /** Worker pools: the pool's certificate (PEM), signed by the gateway from the pool's CSR. */
  certificate?: string;
}

const PREFIX = "ap1.";

export function encodeToken(token: PoolToken): string {
  return PREFIX + Buffer.from(JSON.stringify(token)).toString("base64url");
}

import { gatewayUrlProblem } from "./link";

export function decodeToken(text: string): PoolToken {
  const fail = (why: string): never => {
    throw new Error(`the pool token is not valid: ${why}`);
  };
  if (!text.startsWith(PREFIX)) fail(`it should start with "${PREFIX}"`);
  let token: Partial<PoolToken>;
  try {
    token = JSON.parse(Buffer.from(text.slice(PREFIX.length), "base64url").toString());
  } catch {
    return fail("it does not decode");
  }
  if (typeof token.gateway !== "string" || !URL.canParse(token.gateway)) fail("it names no gateway URL");
  const plain = gatewayUrlProblem(new URL(token.gateway as string));
  if (plain) fail(`its gateway ${plain}`);
  if (typeof token.pool !== "string" || typeof token.secret !== "string" || token.secret.length < 16)
    fail("it names no pool or secret");
  return token as PoolToken;
}
