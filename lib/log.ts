const LEVELS = ["debug", "info", "warn", "error"] as const;
/** The longest string value a log line holds whole, and the longest line. */
export const MAX_VALUE = 2048;
export const MAX_LINE = 8192;
export type Level = (typeof LEVELS)[number];
export type Fields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  /** Never print this value again, wherever it turns up. */
  redact(secret: string): void;
}

/**
 * JSON lines on stdout (one object a line: time, level, role, msg, fields). Every known
 * secret value is replaced before a line leaves the process, so a careless field
 * cannot leak a token into the journal or CloudWatch.
 */
export function createLogger(
  role: string,
  sinks: ((line: string) => void)[] = [(line) => process.stdout.write(line + "\n")],
): Logger {
  const secrets = new Set<string>();
  const hide = (text: string) => {
    for (const secret of secrets) text = text.replaceAll(secret, "[redacted]");
    return text;
  };
  const emit = (level: Level, msg: string, fields?: Fields) => {
    let line = "";
    try {
      // A string value is cut at MAX_VALUE characters, its secrets hidden first (a request's path, a gateway's run ID):
      // the line keeps its other fields.
      line = hide(
        JSON.stringify({ time: new Date(), level, role, msg, ...fields }, (_, value) =>
          typeof value === "string" && value.length > MAX_VALUE ? hide(value).slice(0, MAX_VALUE) + "[cut]" : value,
        ),
      );
    } catch {
      // A value nested deeper than the stack goes (a peer's): said below.
    }
    // A line past MAX_LINE all the same (a peer's keys, arrays or numbers) or that could not be written: its message
    // alone, its secrets hidden before the cut. No peer grows a line past a few KB, nor past one CloudWatch event.
    if (!line || line.length > MAX_LINE)
      // (An eighth of the line: a character escapes to six at most, as a control character does.)
      line = hide(JSON.stringify({ time: new Date(), level, role, msg: hide(msg).slice(0, MAX_LINE / 8), cut: true }));
    for (const sink of sinks) sink(line);
  };
  const log = {
    redact(secret) {
      // Short values would blank out ordinary words; every real credential is longer.
      if (secret.length >= 8) {
        secrets.add(secret);
        secrets.add(JSON.stringify(secret).slice(1, -1));
      }
    },
  } as Logger;
  for (const level of LEVELS) log[level] = (msg, fields) => emit(level, msg, fields);
  return log;
}
