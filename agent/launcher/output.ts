import { StringDecoder } from "node:string_decoder";

export const MASK = "[masked]";
/** A line longer than this is cut into pieces, so one endless line cannot grow without bound. */
export const MAX_LINE = 16 * 1024;
/** The launcher's own log lines read `[agentpools: ...]`; a run's line that would read so gets this mark. */
export const RUN_LINE_MARK = "[run] ";

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * The values to mask, longest first (one value may contain another), as one pattern. A value
 * that spans lines is also masked line by line, so printing part of it (a PEM key's body)
 * shows nothing either. Pure.
 */
export function maskPattern(values: Iterable<string>): { pattern?: RegExp; longest: number } {
  const all = [...values].flatMap((value) => (value.includes("\n") ? [value, ...value.split(/\r?\n/).filter((line) => line.length >= 8)] : [value]));
  const secrets = [...new Set(all.filter((v) => v.length > 0))].sort((a, b) => b.length - a.length);
  return secrets.length > 0 ? { pattern: new RegExp(secrets.map(escapeRegExp).join("|"), "g"), longest: secrets[0].length } : { longest: 0 };
}

/** Escapes, controls and blanks that a log viewer does not show, stripped for the comparison below. */
// eslint-disable-next-line no-control-regex -- terminal escapes are what is matched
const INVISIBLE = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|[\p{C}\p{Z}\s]/gu;

/** A run's line that would read as the launcher's own gets a mark in front. Pure. */
export const markRunLine = (line: string) => (/^\[agentpools/i.test(line.replace(INVISIBLE, "")) ? RUN_LINE_MARK + line : line);

/**
 * One output stream of a run (stdout or stderr) as log lines: bytes decoded as UTF-8 across
 * reads (a character split between two reads stays whole), masked values replaced before the
 * text is cut into lines (so a value that spans lines, or arrives over several reads, is still
 * caught: the end of the text is held back until no value can still be arriving), lines cut
 * at MAX_LINE, and lines that would read as the launcher's own marked. Every read costs time
 * in proportion to its size: nothing is rescanned.
 */
export class RunOutput {
  private readonly decoder = new StringDecoder("utf8");
  private readonly pattern: RegExp | undefined;
  private readonly keepBack: number;
  /** Decoded text not yet masked: at most keepBack characters between reads. */
  private pending = "";
  /** Masked text of the line in progress. */
  private line = "";

  constructor(
    secrets: Iterable<string>,
    private readonly emit: (lines: string[]) => void,
  ) {
    const { pattern, longest } = maskPattern(secrets);
    this.pattern = pattern;
    this.keepBack = Math.max(0, longest - 1);
  }

  write(chunk: Buffer | string): void {
    this.pending += typeof chunk === "string" ? chunk : this.decoder.write(chunk);
    this.flush(false);
  }

  end(): void {
    this.pending += this.decoder.end();
    this.flush(true);
    if (this.line.length > 0) this.emit([markRunLine(this.line)]);
    this.line = "";
  }

  /** Masks and passes on what no later read can change: all of it at the end. */
  private flush(all: boolean): void {
    const text = this.pending;
    // A value starting before `limit` lies wholly in the text already: it can be decided now.
    const limit = all ? text.length : text.length - this.keepBack;
    let masked = "";
    let cursor = 0;
    if (this.pattern) {
      this.pattern.lastIndex = 0;
      for (let match = this.pattern.exec(text); match && match.index < limit; match = this.pattern.exec(text)) {
        masked += text.slice(cursor, match.index) + MASK;
        cursor = match.index + match[0].length;
      }
    }
    const end = Math.max(cursor, limit);
    this.pending = text.slice(end);
    this.cut(masked + text.slice(cursor, end));
  }

  private cut(text: string): void {
    const parts = (this.line + text).split("\n");
    this.line = parts.pop() as string;
    const lines: string[] = [];
    for (let part of parts) {
      if (part.endsWith("\r")) part = part.slice(0, -1);
      do lines.push(markRunLine(part.slice(0, MAX_LINE)));
      while ((part = part.slice(MAX_LINE)).length > 0);
    }
    for (; this.line.length > MAX_LINE; this.line = this.line.slice(MAX_LINE)) lines.push(markRunLine(this.line.slice(0, MAX_LINE)));
    if (lines.length > 0) this.emit(lines);
  }
}
