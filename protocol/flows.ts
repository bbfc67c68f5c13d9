/**
 * The Flows link between a Flows agent and the gateway: JSON text messages on a WebSocket
 * (docs/protocol.md). The gateway sends code to run; the agent answers with its outcome.
 */
export const FLOWS_CONNECT_PATH = "/_agentpools/flows/connect";
/** The longest a run may be given (`timeoutMs`); without one the agent's FLOWS_RUN_TIMEOUT applies. */
export const FLOWS_MAX_RUN_TIMEOUT_MS = 15 * 60_000;

/** A run's timeout when its caller gives none, unless the agent's FLOWS_RUN_TIMEOUT says otherwise. */
export const FLOWS_RUN_TIMEOUT_DEFAULT = "60s";

/**
 * Bounds of an answer, so that one run's answer never reaches the WebSocket's message limit
 * (which would close the agent's connection and every run on it): a larger result or console
 * fails that run with an error naming the cap.
 */
export const FLOWS_MAX_VALUE_BYTES = 4 * 1024 * 1024;
export const FLOWS_MAX_VALUE_DEPTH = 256;
export const FLOWS_MAX_CONSOLE_LINES = 1000;
export const FLOWS_MAX_CONSOLE_BYTES = 1024 * 1024;
/** Objects and arrays in one answer: what parsing an answer costs grows with them, not with its bytes. */
export const FLOWS_MAX_VALUE_CONTAINERS = 100_000;
/** Keys of objects in one answer, for the same reason (keys cost the most where each is new). */
export const FLOWS_MAX_VALUE_KEYS = 250_000;
/** Characters of each of an error's fields (name, message, stack, code): the runtime cuts a longer one. */
export const FLOWS_MAX_ERROR_CHARS = 64 * 1024;

/**
 * What would make a JSON text too costly to parse (and to walk, re-encode, parse again on the
 * other side): nesting deeper than `maxDepth` objects and arrays, more than `maxContainers` of
 * them, or more than `maxKeys` keys (a colon outside strings). Read in one pass over its characters, never parsed; undefined when within both.
 */
export function jsonCost(
  text: string,
  maxDepth: number,
  maxContainers = FLOWS_MAX_VALUE_CONTAINERS,
  maxKeys = FLOWS_MAX_VALUE_KEYS,
) {
  let depth = 0;
  let containers = 0;
  let keys = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      // A string, skipped to its closing quote (a backslash escapes what follows it).
      for (let next; ++i < text.length && (next = text.charCodeAt(i)) !== 34;) if (next === 92) i++;
    } else if (c === 91 || c === 123) {
      if (++depth > maxDepth) return "depth";
      if (++containers > maxContainers) return "containers";
    } else if (c === 93 || c === 125) depth--;
    else if (c === 58 && ++keys > maxKeys) return "keys";
  }
  return undefined;
}

/** Why a JSON text (an answer, a result message) is too costly to read, in words; undefined when it is not. */
export function overCaps(text: string): string | undefined {
  // The answer's or message's own object is one level above its value.
  const cost = jsonCost(text, FLOWS_MAX_VALUE_DEPTH + 1);
  if (cost === "depth") return `the result nests deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}`;
  if (cost === "keys") return `the answer holds more than the cap of ${FLOWS_MAX_VALUE_KEYS} object keys`;
  if (cost) return `the answer holds more than the cap of ${FLOWS_MAX_VALUE_CONTAINERS} objects and arrays`;
  return undefined;
}

/** The whole result message as sent, escapes included: under half of WEBSOCKET_MAX_MESSAGE. */
export const FLOWS_MAX_RESULT_BYTES = 7 * 1024 * 1024;

/**
 * Messages on the WebSocket (JSON text frames). A run the gateway gave up on (its client gone, its
 * key removed, no answer in time) is cancelled: the agent drops it if it has not started, ends its
 * runtime if it has, and answers it either way, which is when the gateway counts its place free.
 */
export type GatewayMessage = { type: "run"; id: string; job: Job; timeoutMs?: number } | { type: "cancel"; id: string };

/**
 * Runs an agent holds at most, per runtime of its pool: the gateway sends it one per runtime (and may count a
 * cancelled run gone before its late answer). A gateway that sends more is not trusted further: the agent reconnects.
 */
export const FLOWS_AGENT_RUNS_PER_RUNTIME = 2;
/**
 * A run's ID, as a gateway makes it (a UUID), is at most this long: an agent ignores a run with a longer one (it logs
 * each run's ID, and a gateway's megabyte IDs would fill the instance's disk and the pool's log group).
 */
export const FLOWS_MAX_RUN_ID_CHARS = 128;

/** The error a cancelled run ends with. */
export const FLOWS_CANCELLED = "the run was cancelled: the gateway gave up on it";
export type AgentMessage =
  | { type: "hello"; poolSize: number; executor: string }
  | {
      type: "result";
      id: string;
      ok: boolean;
      value?: unknown;
      error?: { name: string; message: string; stack?: string; code?: string };
      console: string[];
      durationMs: number;
    }
  | { type: "draining" };

export interface Job {
  /** "expression": a JavaScript expression; "block": a function body that may `return`. */
  kind: "expression" | "block";
  code: string;
  inputs?: unknown;
}

export interface Answer {
  ok: boolean;
  value?: unknown;
  error?: { name: string; message: string; stack?: string; code?: string };
  console: string[];
}
