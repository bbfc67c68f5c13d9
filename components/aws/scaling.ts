/**
 * How an AWS pool scales, what protects its busy agents, and what shows it: the arguments
 * (zod, with AWS's rules), and pure functions that render the target-tracking metric math,
 * the scale-from-zero alarm, the dashboard and the alarms, each tested against AWS's
 * documented rules (scaling.test.ts).
 */
import { z } from "zod";
import {
  BOOT_METRICS,
  METRICS,
  METRICS_NAMESPACE,
  METRICS_PERIOD_SECONDS,
  POOL_DIMENSION,
} from "../../agent/config/metrics";
import type { RoleName } from "../../agent/config/roles";

/** The pool's busy share the policy keeps, by default: 30% of the agents idle, ready for a burst. */
export const DEFAULT_TARGET_BUSY_PERCENT = 70;

// CloudWatch: a namespace or metric name 1-255 characters (a namespace not starting with ":"),
// dimension names 1-255 and values 1-1024 characters, at most 30 dimensions.
const cloudWatchName = (what: string) =>
  z
    .string()
    .min(1)
    .max(255, { error: `${what}: CloudWatch takes at most 255 characters` });
export const demandMetricSchema = z.strictObject({
  namespace: cloudWatchName("a namespace").regex(/^[^:]/, { error: 'must not start with ":"' }),
  metricName: cloudWatchName("a metric name"),
  dimensions: z
    .record(cloudWatchName("a dimension name"), z.string().min(1).max(1024))
    .refine((d) => Object.keys(d).length <= 30, { error: "CloudWatch takes at most 30 dimensions" })
    .default({}),
  /** How the period's data points of the demand become one number (the queue length: Maximum). */
  statistic: z.enum(["Maximum", "Average", "Sum", "Minimum", "SampleCount"]).default("Maximum"),
});
export type DemandMetric = z.output<typeof demandMetricSchema>;

export const scalingSchema = z.strictObject({
  /** false: a fixed-size group of desiredCapacity (or minSize), no policy. */
  enabled: z.boolean().default(true),
  /** The pool's average busy share, in percent, the policy keeps the group at. */
  targetBusyPercent: z.number().gt(0).max(100).default(DEFAULT_TARGET_BUSY_PERCENT),
  /**
   * Work the service has queued for this pool (a CloudWatch metric it publishes). Each queued
   * item counts as one busy agent more: the pool grows before its agents are all taken, and
   * from zero when minSize is 0.
   */
  demandMetric: demandMetricSchema.optional(),
  /** How long a new instance's data points are left out of the policy's metric (seconds). */
  instanceWarmupSeconds: z.int().min(0).max(3600).default(METRICS_PERIOD_SECONDS),
});

/** Warm pools hold stopped (or running) instances that have already booted; on-demand pools only. */
export const warmPoolSchema = z.strictObject({
  minSize: z.int().min(0).max(1000).default(0),
  /** Instances in the warm pool and the group together; absent: the group's maxSize. */
  maxPreparedCapacity: z.int().min(0).max(1000).optional(),
  /** Hibernated would need hibernation in the launch template, which the pools do not set. */
  poolState: z.enum(["Stopped", "Running"]).default("Stopped"),
  reuseOnScaleIn: z.boolean().default(false),
});

/** The scaling arguments every AWS pool takes. */
export const scalingShape = {
  scaling: scalingSchema.prefault({}),
  warmPool: warmPoolSchema.optional(),
  /** Instances are replaced after this many days in service (AWS: 1 to 365), through the same drain. */
  maxInstanceLifetimeDays: z.int().min(1).max(365).optional(),
};

interface ScalingRelations {
  minSize: number;
  maxSize: number;
  mixedInstances?: unknown;
  warmPool?: z.output<typeof warmPoolSchema>;
}

/** What AWS refuses across fields. */
export function scalingProblems(args: ScalingRelations): { path: string[]; input: unknown; message: string }[] {
  const problems = [];
  if (args.warmPool && args.mixedInstances) {
    problems.push({
      path: ["warmPool"],
      input: "given",
      message:
        "cannot be used with mixedInstances: AWS allows no warm pool in a group with a mixed instances policy or Spot Instances",
    });
  }
  const prepared = args.warmPool?.maxPreparedCapacity;
  if (prepared !== undefined && prepared < args.minSize) {
    problems.push({
      path: ["warmPool", "maxPreparedCapacity"],
      input: prepared,
      message: `must be at least minSize (${args.minSize}): it counts the group's instances too`,
    });
  }
  return problems;
}

/** How long scale-in protection outlives the agent's last work: a run's end lifts it at once; requests come in bursts. */
export const PROTECTION_LINGER_SECONDS: Record<RoleName, number> = { launcher: 0, "vcs-agent": 60, "flows-agent": 60 };

type Stat = { namespace: string; metricName: string; dimensions: Record<string, string>; stat: string };
/** One query of a target-tracking policy's metric math: a metric's statistic, or an expression over other ids. */
export type MetricQuery = { id: string; label?: string; returnData: boolean } & (
  { metricStat: Stat } | { expression: string }
);

const poolMetric = (group: string, namespace: string, metricName: string, stat: string): Stat => ({
  namespace,
  metricName,
  dimensions: { [POOL_DIMENSION]: group },
  stat,
});

/**
 * The metric the policy tracks: the pool's busy share in percent, Average(AgentBusy) × 100,
 * plus, with a demand metric, the demand per instance in service: a queued item counts as a
 * busy agent, so 2 instances, 1 busy, 3 queued read (0.5 + 3 / 2) × 100 = 200%, and a target of
 * 70 asks for 2 × 200 / 70 ≈ 6 instances.
 */
export function busyShareQueries(group: string, demand?: DemandMetric): MetricQuery[] {
  const busy: MetricQuery = {
    id: "busy",
    metricStat: poolMetric(group, METRICS_NAMESPACE, METRICS.busy, "Average"),
    returnData: false,
  };
  if (!demand)
    return [busy, { id: "load", label: "Busy share (%)", expression: "100 * FILL(busy, 0)", returnData: true }];
  return [
    busy,
    {
      id: "inservice",
      metricStat: poolMetric(group, "AWS/AutoScaling", "GroupInServiceInstances", "Average"),
      returnData: false,
    },
    { id: "demand", metricStat: { ...demand, stat: demand.statistic }, returnData: false },
    {
      id: "load",
      label: "Busy share with queued work (%)",
      expression: "100 * (FILL(busy, 0) + FILL(demand, 0) / MAX([FILL(inservice, 0), 1]))",
      returnData: true,
    },
  ];
}

const METRIC_ID = /^[a-z][A-Za-z0-9_]{0,254}$/;
/**
 * AWS's rules for a target-tracking policy's metric math (PutScalingPolicy): ids that start
 * with a lower-case letter, unique; exactly one query returns data; an expression names only
 * ids defined beside it; a query is a metric or an expression, not both.
 */
export function metricQueryProblems(queries: MetricQuery[]): string[] {
  const problems: string[] = [];
  const ids = queries.map((q) => q.id);
  for (const id of ids)
    if (!METRIC_ID.test(id)) problems.push(`id "${id}" must start with a lower-case letter, then letters, digits or _`);
  if (new Set(ids).size !== ids.length) problems.push("ids must be unique");
  if (queries.filter((q) => q.returnData).length !== 1) problems.push("exactly one query must return data");
  for (const q of queries) {
    if ("metricStat" in q && "expression" in q) problems.push(`${q.id}: a metric or an expression, not both`);
    if ("expression" in q) {
      const names = q.expression.replace(/\b[A-Z][A-Z_]*\(/g, "(").match(/\b[a-z][A-Za-z0-9_]*\b/g) ?? [];
      for (const name of names)
        if (!ids.includes(name) || name === q.id) problems.push(`${q.id}: names "${name}", not another query's id`);
    }
  }
  return problems;
}

/** The alarm (metric math) that starts a pool at zero when work is queued: no policy scales out from no capacity. */
export function fromZeroQueries(group: string, demand: DemandMetric): MetricQuery[] {
  return [
    { id: "demand", metricStat: { ...demand, stat: demand.statistic }, returnData: false },
    {
      id: "desired",
      metricStat: poolMetric(group, "AWS/AutoScaling", "GroupDesiredCapacity", "Maximum"),
      returnData: false,
    },
    {
      id: "start",
      label: "Work queued, no capacity",
      expression: "IF(FILL(demand, 0) > 0 AND FILL(desired, 0) < 1, 1, 0)",
      returnData: true,
    },
  ];
}

/** Minutes of pending instances that mean none connects: the launch hook's timeout and a margin. */
export const neverConnectPeriods = (launchTimeoutSeconds: number) =>
  Math.ceil(launchTimeoutSeconds / METRICS_PERIOD_SECONDS) + 5;

/** CloudWatch dashboard names: up to 255 of A-Z a-z 0-9 - _ (a pool's name may hold a dot). */
export const dashboardName = (group: string) => group.replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 255);

/**
 * A pool's dashboard: connected and busy agents, demand, boot phases, runtime errors, the
 * group's size and scaling activity, the alarms. CloudWatch's dashboard body: widgets on a
 * 24-column grid, each metric as [namespace, name, dimension, value, {options}].
 */
export function dashboardBody(input: {
  group: string;
  region: string;
  demand?: DemandMetric;
  errorsMetric: string;
  alarmArns: string[];
}): string {
  const { group, region, demand } = input;
  const period = METRICS_PERIOD_SECONDS;
  const ours = (name: string, options: Record<string, unknown>) => [
    METRICS_NAMESPACE,
    name,
    POOL_DIMENSION,
    group,
    options,
  ];
  const asg = (name: string) => ["AWS/AutoScaling", name, POOL_DIMENSION, group, { stat: "Maximum" }];
  const graph = (title: string, metrics: unknown[][], y: number, x: number, extra: Record<string, unknown> = {}) => ({
    type: "metric",
    x,
    y,
    width: 12,
    height: 6,
    properties: { title, region, period, view: "timeSeries", stacked: false, metrics, ...extra },
  });
  const demandLine = demand
    ? [
        [
          demand.namespace,
          demand.metricName,
          ...Object.entries(demand.dimensions).flat(),
          { stat: demand.statistic, label: "Queued work" },
        ],
      ]
    : [];
  const widgets = [
    graph(
      "Agents: connected, busy, draining",
      [
        ours(METRICS.connected, { stat: "Sum", label: "Connected" }),
        ours(METRICS.draining, { stat: "Sum", label: "Draining" }),
        ...demandLine,
      ],
      0,
      0,
    ),
    graph(
      "Busy share (%)",
      [
        [{ expression: "100 * busy", label: "Busy share", id: "share" }],
        ours(METRICS.busy, { stat: "Average", id: "busy", visible: false }),
      ],
      0,
      12,
      { yAxis: { left: { min: 0, max: 100 } } },
    ),
    graph(
      "Group size and scaling activity",
      ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances", "GroupTerminatingInstances"].map(
        asg,
      ),
      6,
      0,
    ),
    graph(
      "Boot phases (seconds from launch)",
      Object.values(BOOT_METRICS).map((name) => ours(name, { stat: "Average" })),
      6,
      12,
    ),
    graph("Runtime errors", [[METRICS_NAMESPACE, input.errorsMetric, { stat: "Sum", label: "Errors" }]], 12, 0),
    { type: "alarm", x: 12, y: 12, width: 12, height: 6, properties: { title: "Alarms", alarms: input.alarmArns } },
  ];
  return JSON.stringify({ widgets });
}
