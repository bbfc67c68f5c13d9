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
/** The whole result message as sent, escapes included: under half of WEBSOCKET_MAX_MESSAGE. */
export const FLOWS_MAX_RESULT_BYTES = 7 * 1024 * 1024;

/** Messages on the WebSocket (JSON text frames). */
export type GatewayMessage = { type: "run"; id: string; job: Job; timeoutMs?: number };
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
