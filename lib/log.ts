const LEVELS = ["debug", "info", "warn", "error"] as const;
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
  const emit = (level: Level, msg: string, fields?: Fields) => {
    let line = JSON.stringify({ time: new Date(), level, role, msg, ...fields });
    for (const secret of secrets) line = line.replaceAll(secret, "[redacted]");
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
