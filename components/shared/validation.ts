import type { z } from "zod";
import { showValue } from "./redact";

/** A component's arguments were refused; nothing was created. */
export class InvalidArgumentsError extends Error {
  constructor(
    readonly component: string,
    readonly resourceName: string,
    readonly problems: string[],
  ) {
    super(`${component} "${resourceName}": invalid arguments:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "InvalidArgumentsError";
  }
}

function pathOf(path: PropertyKey[]): string {
  return path.reduce<string>(
    (text, key) => (typeof key === "number" ? `${text}[${key}]` : text ? `${text}.${String(key)}` : String(key)),
    "",
  );
}

/** One line a problem: the field, the value that was given (never for secrets) and what is allowed. */
export function formatIssues(error: z.ZodError, secretFields: readonly string[] = []): string[] {
  return error.issues.map((issue) => {
    const field = pathOf(issue.path) || "(arguments)";
    if (issue.code === "unrecognized_keys") {
      return `${issue.keys.map((key) => pathOf([...issue.path, key])).join(", ")}: not a known argument`;
    }
    // A record's bad key is reported generically; the key's own schema says what is allowed.
    const message = issue.code === "invalid_key" && issue.issues.length > 0 ? issue.issues[0].message : issue.message;
    const secret = secretFields.includes(String(issue.path[0]));
    const input = (issue as { input?: unknown }).input;
    // Shown only as far as safe: URL credentials and PEM bodies taken out, long values cut.
    const shown = input === undefined ? undefined : showValue(input);
    const given =
      secret || shown === undefined || (typeof input === "string" && message.includes(shown)) ? "" : ` (got ${shown})`;
    return `${field}: ${message}${given}`;
  });
}

/** Parse plain arguments with their schema, or throw one error that lists every problem. */
export function parseArguments<T extends z.ZodType>(
  component: string,
  resourceName: string,
  schema: T,
  args: unknown,
  secretFields: readonly string[] = [],
): z.output<T> {
  const result = schema.safeParse(args, { reportInput: true });
  if (!result.success)
    throw new InvalidArgumentsError(component, resourceName, formatIssues(result.error, secretFields));
  return result.data;
}
