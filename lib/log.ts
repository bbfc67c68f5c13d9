const LEVELS = ["debug", "info", "warn", "error"] as const;
/** The longest value a log line holds whole. */
export const MAX_VALUE = 2048;
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
    // A value is cut at MAX_VALUE characters (its secrets hidden first): what a peer puts in one (a gateway's run ID,
    // an image it names) grows no line past a few of them, nor past what CloudWatch keeps whole, as JSON its alarms read.
    const line = hide(
      JSON.stringify({ time: new Date(), level, role, msg, ...fields }, (_, value) =>
        typeof value === "string" && value.length > MAX_VALUE ? hide(value).slice(0, MAX_VALUE) + "[cut]" : value,
      ),
    );
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
