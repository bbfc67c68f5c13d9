import { StringDecoder } from "node:string_decoder";

export const MASK = "[masked]";

/** `text` as a regular expression that matches it and nothing else. */
export const literally = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** A line longer than this is cut into pieces, so one endless line cannot grow without bound. */
export const MAX_LINE = 16 * 1024;
const PIECES = new RegExp(`[^]{1,${MAX_LINE}}`, "g");
/** The launcher's own log lines read `[agentpools: ...]`; a run's line that would read so gets this mark. */
export const RUN_LINE_MARK = "[run] ";

/**
 * A run's line that would read as the launcher's own gets a mark: `[agentpools` after anything
 * but letters (blanks, controls, digits, punctuation) and terminal escapes, which a viewer may
 * not show. Marking a line that only looks close costs nothing. Pure.
 */
export const markRunLine = (line: string) =>
  // eslint-disable-next-line no-control-regex -- terminal escapes are what is matched
  /^(\x1b\[[\d;?]*[a-z]|[^a-z])*\[agentpools/i.test(line) ? RUN_LINE_MARK + line : line;

/**
 * One output stream of a run (stdout or stderr) as log lines: bytes decoded as UTF-8 across
 * reads (a character split between two reads stays whole), masked values (longest first, as
 * literals: one may contain another) replaced before the text is cut into lines, so a value
 * that spans lines or reads is still caught: the end of the text is held back until no value
 * can still be arriving. Lines are cut at MAX_LINE, and lines that would read as the launcher's
 * own marked. Each read costs time in proportion to its size: nothing is scanned twice.
 */
export function runOutput(
  secrets: Iterable<string>,
  emit: (lines: string[]) => void,
): { write(chunk: Buffer): void; end(): void } {
  const decoder = new StringDecoder();
  const values = [...new Set(secrets)].filter(Boolean).sort((a, b) => b.length - a.length);
  const pattern = values.length ? new RegExp(values.map(literally).join("|"), "g") : undefined;
  const keep = Math.max(0, (values[0]?.length ?? 0) - 1);
  /** Decoded text not yet masked (fewer characters than the longest value), and the masked line in progress. */
  let held = "";
  let line = "";
  const take = (text: string, all: boolean) => {
    text = held + text;
    // A value starting before `limit` lies wholly in the text already: it can be decided now.
    let limit = all ? text.length : text.length - keep;
    let masked = "";
    let at = 0;
    for (const match of pattern ? text.matchAll(pattern) : []) {
      if (match.index >= limit) break;
      masked += text.slice(at, match.index) + MASK;
      at = match.index + match[0].length;
    }
    limit = Math.max(at, limit);
    held = text.slice(limit);
    const parts = (line + masked + text.slice(at, limit)).split("\n");
    line = parts.pop() as string;
    for (; line.length > MAX_LINE; line = line.slice(MAX_LINE)) parts.push(line.slice(0, MAX_LINE));
    if (parts.length) emit(parts.flatMap((part) => part.replace(/\r$/, "").match(PIECES) ?? [""]).map(markRunLine));
  };
  return {
    write: (chunk) => take(decoder.write(chunk), false),
    end() {
      take(decoder.end(), true);
      if (line) emit([markRunLine(line)]);
      line = "";
    },
  };
}
