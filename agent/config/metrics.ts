/**
 * The pool metrics: what a runtime publishes and what the components alarm and (later) scale
 * on, named once here. Zod-free: the runtime bundle carries this module.
 *
 * On AWS a runtime writes them as CloudWatch embedded metric format (EMF) fields into a log
 * line of the stream it already ships, so they cost no API call of their own. Every metric
 * carries one dimension, the pool's Auto Scaling group, and each instance writes one data
 * point a period: over the group, Sum(AgentConnected) is the count of connected agents and
 * Sum(AgentBusy) / Sum(AgentConnected) the busy share. A new metric is one more entry in
 * METRICS; a new dimension set, one more in DIMENSION_SETS.
 */
export const METRICS_NAMESPACE = "agentpools";

/** The dimension naming the pool: its Auto Scaling group. */
export const POOL_DIMENSION = "AutoScalingGroupName";
export const DIMENSION_SETS = [[POOL_DIMENSION]];

/** Metric names by what they count; each is 0 to 1 per instance and data point. */
export const METRICS = {
  /** The agent holds a working connection to its gateway. */
  connected: "AgentConnected",
  /**
   * The share of the agent's capacity in use: a launcher 0 or 1 (a run), a VCS agent its open
   * streams over its parallelism, a Flows agent its runs over its runtime pool. Its Average
   * over the group is the pool's busy share, what the scaling policy tracks.
   */
  busy: "AgentBusy",
  /** The agent is draining: it takes no new work and is about to stop. */
  draining: "AgentDraining",
} as const;
export type MetricKey = keyof typeof METRICS;

/** How often a runtime writes a data point (seconds); alarms use periods of this length. */
export const METRICS_PERIOD_SECONDS = 60;

/**
 * An instance's boot, in seconds from its launch (IMDS's pendingTime), written once when its agent first connects: the
 * runtime started (the boot script and its packages before it), the agent connected. Their Average (and Maximum) over
 * the group is how long a new instance takes to serve.
 */
export const BOOT_METRICS = {
  runtime: "BootRuntimeStarted",
  connected: "BootAgentConnected",
} as const;
export type BootKey = keyof typeof BOOT_METRICS;

/** The EMF fields of one data point of one instance (the given metrics, by name), to merge into a JSON log line. */
export function metricsFields(
  pool: string,
  values: Record<string, number>,
  timestamp: number,
): Record<string, unknown> {
  return {
    _aws: {
      Timestamp: timestamp,
      CloudWatchMetrics: [
        {
          Namespace: METRICS_NAMESPACE,
          Dimensions: DIMENSION_SETS,
          Metrics: Object.keys(values).map((Name) => ({ Name })),
        },
      ],
    },
    [POOL_DIMENSION]: pool,
    ...values,
  };
}
