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

/** Metric names by what they count; each is 0 or 1 per instance and data point. */
export const METRICS = {
  /** The agent holds a working connection to its gateway. */
  connected: "AgentConnected",
  /** The agent has work in flight (a run, a request). */
  busy: "AgentBusy",
  /** The agent is draining: it takes no new work and is about to stop. */
  draining: "AgentDraining",
} as const;
export type MetricKey = keyof typeof METRICS;

/** How often a runtime writes a data point (seconds); alarms use periods of this length. */
export const METRICS_PERIOD_SECONDS = 60;

/** The EMF fields of one data point of one instance (every metric), to merge into a JSON log line. */
export function metricsFields(pool: string, values: Record<MetricKey, number>, timestamp: number): Record<string, unknown> {
  const names = Object.values(METRICS);
  return {
    _aws: { Timestamp: timestamp, CloudWatchMetrics: [{ Namespace: METRICS_NAMESPACE, Dimensions: DIMENSION_SETS, Metrics: names.map((Name) => ({ Name })) }] },
    [POOL_DIMENSION]: pool,
    ...Object.fromEntries(Object.entries(METRICS).map(([key, name]) => [name, values[key as MetricKey]])),
  };
}
