/** What every agent link shares, whatever the pool's kind (docs/protocol.md). */

/** Keepalive: more often than common proxy and load-balancer idle timeouts (60 s). */
export const PING_INTERVAL_MS = 20_000;
/** A ping unanswered this long closes the link: a peer that stopped answering is gone in at most 30 s. */
export const PING_TIMEOUT_MS = 10_000;

/** Headers of an agent's upgrade request (Node names them in lower case). */
export const ROLE_HEADER = "x-agentpools-role";
/** The agent's metadata tags: base64url of a JSON object of strings. */
export const METADATA_HEADER = "x-agentpools-metadata";
/** The pool a Flows agent or a launcher connects for (a VCS agent's token names it). */
export const POOL_HEADER = "x-agentpools-pool";

export const encodeMetadata = (tags: Record<string, string>) => Buffer.from(JSON.stringify(tags)).toString("base64url");
