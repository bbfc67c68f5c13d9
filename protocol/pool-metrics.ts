/**
 * What the gateway publishes about each pool, for autoscalers outside it (KEDA, a metrics
 * adapter): the pool names it knows and the Prometheus gauges it serves per pool. The gateway
 * serves them; the Kubernetes components build their autoscalers' queries from the same names.
 */

/** Pool names: VCS pools appear in URLs; Flows pool IDs are such names too. */
export const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

/** The gateway's Prometheus endpoint (authenticated with a service key, like the rest of its API). */
export const METRICS_PATH = "/_agentpools/metrics";

/** The per-pool gauges, each labelled pool="<name>" and kind="<pool kind>". */
export const POOL_GAUGES = {
  queued: "agentpools_queued",
  connected: "agentpools_connected_agents",
  busy: "agentpools_busy_agents",
} as const;
