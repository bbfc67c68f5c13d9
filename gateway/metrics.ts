// The gateway's pools as Prometheus text (exposition format 0.0.4), for autoscalers (KEDA) and dashboards.
import { POOL_GAUGES } from "../protocol/pool-metrics";

export { METRICS_PATH } from "../protocol/pool-metrics";

interface PoolSummary {
  name: string;
  kind: string;
  connections: number;
  waiting?: number;
  queued?: number;
  agents: { active: number; draining?: boolean }[];
}

const GAUGES = [
  [
    POOL_GAUGES.queued,
    "Work waiting at the gateway for an agent of the pool (worker runs queued, VCS requests and Flows runs waiting).",
    (p: PoolSummary) => (p.queued ?? 0) + (p.waiting ?? 0),
  ],
  [POOL_GAUGES.connected, "Agents connected and not draining.", (p: PoolSummary) => p.connections],
  [
    POOL_GAUGES.busy,
    "Connected agents with work in flight.",
    (p: PoolSummary) => p.agents.filter((a) => a.active > 0 && !a.draining).length,
  ],
] as const;

/** Pool names are [A-Za-z0-9_-] (pools.ts): nothing in a label value needs escaping, but escape anyway. */
const label = (value: string) => value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));

export function renderMetrics(pools: PoolSummary[]): string {
  const lines: string[] = [];
  for (const [name, help, value] of GAUGES) {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    for (const pool of pools) lines.push(`${name}{pool="${label(pool.name)}",kind="${pool.kind}"} ${value(pool)}`);
  }
  return lines.join("\n") + "\n";
}
