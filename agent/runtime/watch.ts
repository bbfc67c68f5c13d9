import type { Logger } from "../../lib/log";
import { METRICS, metricsFields } from "../config/metrics";

/**
 * What an instance says of its agent while it runs: every period, its metrics as EMF fields
 * of a log line (shipped with the others: no API call of their own); once the agent has been
 * cut off from its gateway for `unhealthyAfterMs`, a request that Auto Scaling replace the
 * instance (repeated at that interval while it lasts). A draining agent is reported as such and never replaced.
 */
export function watchAgent(
  agent: { connected?(): boolean; busy?(): number | boolean },
  pool: string,
  log: Logger,
  periodMs: number,
  unhealthyAfterMs: number,
  markUnhealthy: () => Promise<unknown>,
) {
  let draining = 0;
  // When the agent lost its gateway, or last asked for a new instance (0 while connected).
  let since = 0;
  const tick = () => {
    const now = Date.now();
    const connected = +(!draining && (agent.connected?.() ?? true));
    log.info(
      "metrics",
      metricsFields(
        pool,
        { [METRICS.connected]: connected, [METRICS.busy]: +(agent.busy?.() ?? 0), [METRICS.draining]: draining },
        now,
      ),
    );
    since = connected || draining ? 0 : since || now;
    if (since && now - since >= unhealthyAfterMs) {
      // Asked again after as long again: Auto Scaling ignores the request during the group's grace period.
      since = now;
      log.error("gateway unreachable: asking for a new instance");
      markUnhealthy().catch((error: Error) => log.warn(error.message));
    }
  };
  const timer = setInterval(tick, periodMs).unref();
  return { drain: () => ((draining = 1), tick()), stop: () => clearInterval(timer) };
}
