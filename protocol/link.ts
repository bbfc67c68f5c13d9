/** What every agent link shares, whatever the pool's kind (docs/protocol.md). */

/** Keepalive: more often than common proxy and load-balancer idle timeouts (60 s). */
export const PING_INTERVAL_MS = 20_000;
