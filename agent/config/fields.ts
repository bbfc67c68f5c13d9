import { z } from "zod";
import { IMAGE_REFERENCE } from "../../protocol/image";
import { GATEWAY_URLS, gatewayUrlProblem } from "../../protocol/link";
import { durationMs, MAX_TIMER_MS } from "./duration";

export { durationMs };

/**
 * How a setting reaches the runtime. Every setting is an environment variable (the form
 * the reference agents document), so a pool configured by a component, a Kubernetes
 * manifest or a plain `docker run` all speak the same names.
 */
export interface SettingMeta {
  /** The variable name; for `map` settings the prefix, for `indexed` settings the stem. */
  env: string;
  /** The command-line flag, where the reference agent documents one. */
  flag?: string;
  /** Kept in Secrets Manager or a Kubernetes Secret: never rendered into user-data or a ConfigMap. */
  secret?: boolean;
  /** `map`: one variable per key (PREFIX + key). `indexed`: PREFIX + FIELD + "_" + index. */
  encoding?: "map" | "indexed";
  /** For `indexed`: the variable infix of each item field. */
  fields?: Record<string, string>;
  /** Checked by the runtime's validator beyond what JSON Schema says ("regex" must compile). */
  format?: "regex";
}

/** Attach the variable metadata to a setting's schema. */
export function setting<T extends z.ZodType>(schema: T, meta: SettingMeta): T {
  return schema.meta({ ...meta }) as T;
}

/** A Go-style duration of more than nothing: "0s" would time every run out at once. */
export const DURATION_PATTERN = /^(?=[^1-9]*[1-9])([0-9]+(ms|s|m|h))+$/;

/** A Go-style duration ("90s", "7m", "1h30m"), as the reference launcher takes; a timer's, so shorter than Node's longest. */
export const duration = z
  .string()
  .regex(DURATION_PATTERN, { error: 'must be a duration longer than zero, such as "90s", "7m" or "1h30m"' })
  // durationMs stops at MAX_TIMER_MS: a duration it cut is refused.
  .refine((text) => durationMs(text) < MAX_TIMER_MS, {
    error: "must be shorter than 596h (2^31 - 1 ms, about 24.8 days: a longer timer fires at once)",
  });

/**
 * Control characters (C0, DEL, C1): a setting that lands in a file the boot script writes (dnf.conf, daemon.json, a
 * systemd unit) or on a command line lands as it is. Spelt as a range, not \p{Cc}: the runtime reads patterns from
 * the exported JSON Schema with a RegExp without the u flag.
 */
export const CONTROL = String.raw`\x00-\x1f\x7f-\x9f`;
const NO_CONTROL = new RegExp(`^[^${CONTROL}]*$`);
export const NO_CONTROL_ERROR = "must hold no control character (line break, tab, NUL, \\x0b...)";

/**
 * An endpoint: scheme, host, optional port and path. The control check comes first, on the text as given (z.url's own
 * check trims it), and keeps JSON Schema's "uri" format. Every URL setting is plain configuration (user-data, a pod's
 * spec) and the agent joins paths to it or hands it on whole: a query or fragment has no use there, and a token in
 * one would be readable by anyone who reads the configuration.
 */
export const httpUrl = z
  .string()
  .regex(NO_CONTROL, { error: NO_CONTROL_ERROR })
  // z.url() would check first; as a check after the regex, the deprecated method is the one way to say it.
  .url({ protocol: /^https?$/, error: "must be an http:// or https:// URL" })
  .refine((url) => !/[?#]/.test(url), {
    error:
      "must have no query (?...) or fragment (#...): the agent has no use for one, and it would be readable in the pool's configuration",
  });

/** A gateway an agent dials with its pool's token: never plain http:// over a network (the runtime checks it too). */
export const gatewayUrl = httpUrl.refine((url) => !gatewayUrlProblem(new URL(url)), {
  error: `must be ${GATEWAY_URLS}: the agent sends its pool's token there`,
});

export const absolutePath = z.string().regex(new RegExp(`^/[^,${CONTROL}]*$`), {
  error: "must be an absolute path (starting with /) without commas or control characters",
});

export const envVarName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: "must be an environment variable name (letters, digits, _)" });

export const metadataTags = z
  .record(
    z.string().regex(/^[A-Za-z0-9_]{1,64}$/, { error: "tag names are letters, digits and _ (at most 64)" }),
    z
      .string()
      .max(256, { error: "tag values are at most 256 characters" })
      .regex(NO_CONTROL, { error: NO_CONTROL_ERROR }),
  )
  .default({});

export const regexSource = z.string().refine(
  (source) => {
    try {
      new RegExp(source);
      return true;
    } catch {
      return false;
    }
  },
  { error: "must be a valid regular expression" },
);

/**
 * One NO_PROXY entry in a form every reader of it on an agent understands (the runtime's
 * dialer, Node's NODE_USE_ENV_PROXY, Docker, curl): "*", a host name or IP address, a
 * ".domain" or "*.domain" suffix, an optional ":port". CIDR ranges are not among them.
 * Checked by the components (a refinement: the runtime bundle does not carry it).
 */
const NO_PROXY_ENTRY = String.raw`(\*|(\*?\.)?[\w-]+(\.[\w-]+)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?`;
export const NO_PROXY_PATTERN = new RegExp(`^${NO_PROXY_ENTRY}(,${NO_PROXY_ENTRY})*$`);

/** Proxy settings, read by the runtime for its own outbound connections. */
export const proxySettings = {
  httpsProxy: setting(httpUrl.optional(), { env: "HTTPS_PROXY" }),
  noProxy: setting(
    z
      .string()
      .regex(/^[^\s]*$/, { error: "must be a comma-separated list of hosts without spaces" })
      .refine((list) => NO_PROXY_PATTERN.test(list), {
        error:
          'must be a comma-separated list of host names, IP addresses, ".domain" suffixes or "*", each optionally with ":port"; CIDR ranges are not read by the runtime',
      })
      .optional(),
    { env: "NO_PROXY" },
  ),
};

/** A regex, not a refinement: the runtime checks the same pattern from the exported JSON Schema. */
export const imageReference = z.string().regex(IMAGE_REFERENCE, {
  error:
    "must be an image reference: [registry[:port]/]path[:tag][@sha256:digest], the path in lower case " +
    '(e.g. "node:24.21.0-alpine", "registry.corp:5000/team/agent:V1.2")',
});
