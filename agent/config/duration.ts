/** Parse a duration ("90s", "7m", "1h30m", see DURATION_PATTERN) into milliseconds. Free of zod: the runtime uses it. */
export function durationMs(text: string): number {
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const [, amount, suffix] of text.matchAll(/([0-9]+)(ms|s|m|h)/g)) total += Number(amount) * unit[suffix];
  return total;
}
