export const MASK = "[masked]";
/** A line longer than this is cut into pieces, so one endless line cannot grow without bound. */
export const MAX_LINE = 16 * 1024;

/** Replaces every masked value, longest first (one value may contain another). Pure. */
export function masker(values: Iterable<string>): (text: string) => string {
  const secrets = [...new Set([...values].filter((v) => v.length > 0))].sort((a, b) => b.length - a.length);
  if (secrets.length === 0) return (text) => text;
  const pattern = new RegExp(secrets.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g");
  return (text) => text.replace(pattern, MASK);
}

/**
 * Cuts a run's output into masked log lines. A line is masked only once it is whole, so a
 * value split across two reads of the pipe is still caught. An over-long line is cut, but
 * the cut keeps back enough characters that a masked value cannot straddle it.
 */
export class LineSplitter {
  private partial = "";
  private readonly keepBack: number;

  constructor(
    private readonly mask: (text: string) => string,
    private readonly emit: (lines: string[]) => void,
    longestSecret = 0,
  ) {
    this.keepBack = Math.max(0, longestSecret - 1);
  }

  write(chunk: Buffer | string): void {
    const text = this.partial + chunk.toString();
    const parts = text.split("\n");
    this.partial = parts.pop() as string;
    while (this.partial.length > MAX_LINE) {
      const cut = Math.max(1, MAX_LINE - this.keepBack);
      const masked = this.mask(this.partial);
      // Cut the masked text where no secret can straddle: only complete replacements survive masking.
      parts.push(masked.slice(0, cut));
      this.partial = masked.slice(cut);
    }
    const lines = parts.map((line) => this.mask(line.endsWith("\r") ? line.slice(0, -1) : line));
    if (lines.length > 0) this.emit(lines);
  }

  end(): void {
    if (this.partial.length > 0) this.emit([this.mask(this.partial)]);
    this.partial = "";
  }
}
