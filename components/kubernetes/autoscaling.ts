import { z } from "zod";
import { httpUrl } from "../../agent/config/fields";
import { POOL_GAUGES, POOL_NAME } from "../../protocol/pool-metrics";
import { dnsSubdomain, labelMap, quantityValue } from "./api-rules";

/**
 * A pool's optional autoscaler, checked against KEDA's and Kubernetes' own rules (KEDA's
 * ScaledObject webhook, the API server's HorizontalPodAutoscaler validation) before anything
 * is created.
 *
 * KEDA with a `prometheus` trigger is the queue-driven choice: the Prometheus a platform team
 * already runs scrapes the gateway's `/_agentpools/metrics` with the service key (the key stays
 * in one scrape configuration, not in a Secret in every pool's namespace), keeps the history,
 * and lets one query add queued work to busy agents. KEDA can also scale a pool to zero, which
 * a HorizontalPodAutoscaler cannot without an alpha feature gate. The `hpa` form is for clusters
 * with a metrics adapter (prometheus-adapter, a cloud's) and no KEDA.
 */

const INT32_MAX = 2 ** 31 - 1;
const replicas = (min: number) => z.int().min(min).max(INT32_MAX);

/** A Prometheus server KEDA queries: its URL is in the ScaledObject, readable by anyone who can read that. */
const serverAddress = httpUrl.refine((url) => !/^[a-z]+:\/\/[^/]*@/i.test(url), {
  error:
    "must not contain credentials: they would be readable in the ScaledObject; use authentication (a TriggerAuthentication)",
});

/** The default query: work a pool has or is waiting for, counted in agents. */
export const poolDemandQuery = (pool: string) =>
  `sum(${POOL_GAUGES.queued}{pool="${pool}"}) + sum(${POOL_GAUGES.busy}{pool="${pool}"})`;

const keda = z
  .strictObject({
    kind: z.literal("keda"),
    /** The Prometheus (or compatible: Thanos, Mimir, VictoriaMetrics) query API that scrapes the gateway. */
    serverAddress,
    /** The pool's name at the gateway (the `pool` label of its gauges). */
    pool: z
      .string()
      .regex(POOL_NAME, {
        error: "must be a gateway pool name: letters, digits, - and _, at most 63, starting with a letter or digit",
      })
      .optional(),
    /** A PromQL query of your own instead (relabelled metrics, several gateways); one value, in agents. */
    query: z.string().trim().min(1).optional(),
    /**
     * Work per replica, in agents (busy or queued): 0.7 keeps three in ten idle, as the AWS pools'
     * default 70% busy target; 1 runs exactly as many pods as there is work.
     */
    threshold: z.number().gt(0).default(0.7),
    /** Above this value a pool at zero replicas gets its first one (KEDA's activation). */
    activationThreshold: z.number().min(0).default(0),
    minReplicas: replicas(0).default(1),
    maxReplicas: replicas(1).default(10),
    /** How often KEDA queries, in seconds (KEDA's default 30). */
    pollingIntervalSeconds: z.int().min(1).max(INT32_MAX).default(15),
    /** How long the value must stay at or below activation before a pool goes from one replica to zero. */
    cooldownSeconds: z.int().min(0).max(INT32_MAX).default(300),
    /** A TriggerAuthentication (or ClusterTriggerAuthentication) holding the Prometheus server's credentials. */
    authentication: z
      .strictObject({
        name: dnsSubdomain,
        kind: z.enum(["TriggerAuthentication", "ClusterTriggerAuthentication"]).default("TriggerAuthentication"),
        modes: z.array(z.enum(["bearer", "basic", "tls", "custom"])).min(1),
      })
      .optional(),
  })
  .superRefine((spec, ctx) => {
    if ((spec.pool === undefined) === (spec.query === undefined))
      ctx.addIssue({
        code: "custom",
        path: ["pool"],
        input: spec.pool,
        message: "give exactly one of pool (the gateway's pool name) and query (your own PromQL), not both",
      });
    if (spec.minReplicas > spec.maxReplicas)
      ctx.addIssue({
        code: "custom",
        path: ["minReplicas"],
        input: spec.minReplicas,
        message: `must not exceed maxReplicas (${spec.maxReplicas})`,
      });
  });

/** A quantity above zero, as the API server wants a metric target. */
const positiveQuantity = z.union([z.string(), z.number()]).superRefine((value, ctx) => {
  const amount = typeof value === "number" ? value : quantityValue(value);
  if (amount === undefined || !(amount > 0))
    ctx.addIssue({
      code: "custom",
      input: value,
      message: 'must be a Kubernetes quantity above zero, e.g. "700m", "1" or 0.7',
    });
});

/** Metric names are path segments of the metrics API: not "." or "..", no "/" or "%". */
const metricName = z.string().refine((name) => name !== "" && name !== "." && name !== ".." && !/[/%]/.test(name), {
  error: 'must be a metric name: not empty, "." or "..", without "/" or "%"',
});

const hpa = z
  .strictObject({
    kind: z.literal("hpa"),
    // Scale to zero needs the HPAScaleToZero feature gate (alpha): the API server refuses 0 otherwise.
    minReplicas: z
      .int()
      .min(1, {
        error:
          'must be at least 1: a HorizontalPodAutoscaler scales to zero only behind an alpha feature gate (kind "keda" can)',
      })
      .max(INT32_MAX)
      .default(1),
    maxReplicas: replicas(1).default(10),
    metric: z
      .strictObject({
        /** External: one value for the pool (e.g. the gateway's gauges through prometheus-adapter). Pods: per pod. */
        type: z.enum(["External", "Pods"]),
        name: metricName,
        /** Labels the adapter selects the series by, e.g. { pool: "workers" }. */
        matchLabels: labelMap.optional(),
        /** Target per pod. */
        averageValue: positiveQuantity.optional(),
        /** Target for the whole metric (External only). */
        value: positiveQuantity.optional(),
      })
      .superRefine((metric, ctx) => {
        if (metric.type === "Pods" && metric.value !== undefined)
          ctx.addIssue({
            code: "custom",
            path: ["value"],
            input: metric.value,
            message: "is not allowed for a Pods metric: give averageValue",
          });
        else if ((metric.value === undefined) === (metric.averageValue === undefined))
          ctx.addIssue({
            code: "custom",
            path: ["averageValue"],
            message: `give ${metric.type === "Pods" ? "averageValue" : "either averageValue or value, not both"}`,
          });
      }),
    /** How long a lower recommendation must last before pods are removed (Kubernetes' default 300, at most 3600). */
    scaleDownStabilizationSeconds: z.int().min(0).max(3600).optional(),
  })
  .superRefine((spec, ctx) => {
    if (spec.minReplicas > spec.maxReplicas)
      ctx.addIssue({
        code: "custom",
        path: ["minReplicas"],
        input: spec.minReplicas,
        message: `must not exceed maxReplicas (${spec.maxReplicas})`,
      });
  });

export const autoscaling = z.discriminatedUnion("kind", [keda, hpa]);
export type Autoscaling = z.output<typeof autoscaling>;

export interface ScaleTarget {
  apiVersion: "apps/v1";
  kind: "Deployment" | "StatefulSet";
  name: string;
}

/** A ScaledObject's spec for a pool (pure: tested by rendering it). */
export function scaledObjectSpec(spec: z.output<typeof keda>, target: ScaleTarget) {
  const metadata: Record<string, string> = {
    serverAddress: spec.serverAddress,
    query: spec.query ?? poolDemandQuery(spec.pool as string),
    threshold: String(spec.threshold),
    activationThreshold: String(spec.activationThreshold),
    // No answer (a lost scrape, an unknown pool) is an error, not "no work": KEDA keeps the
    // current replicas instead of scaling the pool in.
    ignoreNullValues: "false",
    ...(spec.authentication ? { authModes: spec.authentication.modes.join(",") } : {}),
  };
  return {
    scaleTargetRef: target,
    minReplicaCount: spec.minReplicas,
    maxReplicaCount: spec.maxReplicas,
    pollingInterval: spec.pollingIntervalSeconds,
    cooldownPeriod: spec.cooldownSeconds,
    triggers: [
      {
        type: "prometheus",
        metricType: "AverageValue",
        metadata,
        ...(spec.authentication
          ? { authenticationRef: { name: spec.authentication.name, kind: spec.authentication.kind } }
          : {}),
      },
    ],
  };
}

/** A HorizontalPodAutoscaler's spec (autoscaling/v2) for a pool. */
export function hpaSpec(spec: z.output<typeof hpa>, target: ScaleTarget) {
  const { metric } = spec;
  const quantity = (value: string | number) => String(value);
  const identifier = {
    name: metric.name,
    ...(metric.matchLabels ? { selector: { matchLabels: metric.matchLabels } } : {}),
  };
  const goal =
    metric.value !== undefined
      ? { type: "Value", value: quantity(metric.value) }
      : { type: "AverageValue", averageValue: quantity(metric.averageValue as string | number) };
  return {
    scaleTargetRef: target,
    minReplicas: spec.minReplicas,
    maxReplicas: spec.maxReplicas,
    metrics: [
      metric.type === "External"
        ? { type: "External", external: { metric: identifier, target: goal } }
        : { type: "Pods", pods: { metric: identifier, target: goal } },
    ],
    ...(spec.scaleDownStabilizationSeconds !== undefined
      ? { behavior: { scaleDown: { stabilizationWindowSeconds: spec.scaleDownStabilizationSeconds } } }
      : {}),
  };
}
