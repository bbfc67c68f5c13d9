/** The longest a Node.js timer waits: a longer one fires at once (with a warning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Parse a duration ("90s", "7m", "1h30m", see DURATION_PATTERN) into milliseconds, at most MAX_TIMER_MS: each is a
 * timer's. Free of zod: the runtime uses it.
 */
export function durationMs(text: string): number {
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const [, amount, suffix] of text.matchAll(/([0-9]+)(ms|s|m|h)/g)) total += Number(amount) * unit[suffix];
  return Math.min(total, MAX_TIMER_MS);
}
