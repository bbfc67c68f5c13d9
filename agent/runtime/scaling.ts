import type { Logger } from "../../lib/log";
import { BOOT_METRICS, metricsFields } from "../config/metrics";
import type { InstanceMetadata } from "./aws";
import { sleep } from "./http";

/**
 * Scale-in protection while the agent holds work: on as soon as it is busy, off `lingerMs`
 * after it last was (a VCS agent's requests come in bursts: a call per burst, not per
 * request), and off once one busy stretch has lasted `boundMs`, whatever the agent says (a
 * stuck agent must not pin its instance). The first sync lifts what a crashed runtime may
 * have left on. `sync` applies a change at once and settles when AWS has it (a launcher
 * waits for it before it accepts a run); a poll catches the rest.
 */
export function protectWhileBusy(
  busy: () => number | boolean,
  set: (on: boolean) => Promise<unknown>,
  log: Logger,
  boundMs: number,
  lingerMs: number,
  pollMs: number,
) {
  let on: boolean | undefined;
  let since = 0;
  let last = -Infinity;
  let done = false;
  let chain = Promise.resolve();
  const apply = async (want: boolean) => {
    if (want === on) return;
    try {
      await set(want);
      on = want;
      log.info(
        want ? "protected from scale-in" : "scale-in protection lifted",
        since && !want ? { busySeconds: (Date.now() - since) / 1000 } : {},
      );
    } catch (error) {
      log.warn("could not set scale-in protection", { error: (error as Error).message });
    }
  };
  const sync = () =>
    (chain = chain.then(() => {
      if (done) return;
      const now = Date.now();
      const working = +busy() > 0;
      since = working ? since || now : 0;
      if (working && now - since < boundMs) last = now;
      return apply(now - last < lingerMs || last === now);
    }));
  const timer = setInterval(sync, pollMs);
  timer.unref();
  sync();
  /** Stop watching; `lift` takes the protection off (not for an instance already terminating). */
  const stop = (lift: boolean) => (
    clearInterval(timer),
    (done = true),
    (chain = chain.then(() => (lift ? apply(false) : undefined)))
  );
  return { sync, stop };
}

/** A spot interruption notice (with its time) or a rebalance recommendation, if IMDS has one (404 otherwise). */
export async function interruption(imds: InstanceMetadata): Promise<{ reason: string; at?: number } | undefined> {
  const read = (path: string) => imds.get(`/latest/meta-data/${path}`).catch(() => "");
  const spot = await read("spot/instance-action");
  if (spot) return { reason: "spot interruption", at: Date.parse(JSON.parse(spot).time) };
  return (await read("events/recommendations/rebalance")) ? { reason: "rebalance recommendation" } : undefined;
}

/**
 * An instance of a warm pool: its launch hook completed (so it is stopped, or kept running,
 * ready), it waits without connecting until Auto Scaling puts it in service.
 */
export async function whileWarmed(
  imds: InstanceMetadata,
  ready: () => Promise<unknown>,
  pollMs: number,
): Promise<void> {
  for (let waiting = false; (await imds.targetLifecycleState())?.startsWith("Warmed:"); waiting = true) {
    if (!waiting) await ready();
    await sleep(pollMs);
  }
}

/** The instance's boot (BOOT_METRICS), once its agent is first connected. */
export function reportBoot(pool: string, launchedAt: number, startedAt: number, log: Logger): void {
  const seconds = (at: number) => Math.max(0, (at - launchedAt) / 1000);
  log.info(
    "boot",
    metricsFields(
      pool,
      { [BOOT_METRICS.runtime]: seconds(startedAt), [BOOT_METRICS.connected]: seconds(Date.now()) },
      Date.now(),
    ),
  );
}
