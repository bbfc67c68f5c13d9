/**
 * The Flows link between a Flows agent and the gateway: JSON text messages on a WebSocket
 * (docs/protocol.md). The gateway sends code to run; the agent answers with its outcome.
 */
export const FLOWS_CONNECT_PATH = "/_agentpools/flows/connect";
/** The longest a run may be given (`timeoutMs`); without one the agent's FLOWS_RUN_TIMEOUT applies. */
export const FLOWS_MAX_RUN_TIMEOUT_MS = 15 * 60_000;

/** Messages on the WebSocket (JSON text frames). */
export type GatewayMessage = { type: "run"; id: string; job: Job; timeoutMs?: number };
export type AgentMessage =
  | { type: "hello"; poolSize: number; executor: string }
  | { type: "result"; id: string; ok: boolean; value?: unknown; error?: { name: string; message: string; stack?: string; code?: string }; console: string[]; durationMs: number }
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
