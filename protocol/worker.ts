/**
 * The worker link between a launcher and the gateway: JSON text messages on a WebSocket
 * (docs/protocol.md). Run state travels beside it over HTTP, sealed for the pool's key.
 */
export const WORKER_CONNECT_PATH = "/_agentpools/workers/connect";
export const WORKER_API = "/_agentpools/api/workers";

/** The path of a run's sealed state at the gateway (PUT by the worker that ran it, GET by a later run). */
export const statePath = (pool: string, run: string) => `${WORKER_API}/${pool}/runs/${run}/state`;

/** What a launcher is asked to run. The environment is sealed for the pool's key (base64). */
export interface RunSpec {
  id: string;
  image: string;
  commands: string[];
  sealedEnvironment?: string;
  timeoutSeconds?: number;
  /** A finished run of the same pool whose state this run starts from. */
  stateFrom?: string;
}

export const FINAL_STATUSES = ["succeeded", "failed", "timed_out", "refused", "lost"] as const;
export type FinalStatus = (typeof FINAL_STATUSES)[number];
export type RunStatus = "queued" | "running" | FinalStatus;

export interface RunOutcome {
  status: Exclude<FinalStatus, "refused" | "lost">;
  exitCode?: number;
  reason?: string;
  /** The run left state, and it is stored (sealed) at the gateway. */
  state: boolean;
}

export type ToWorker =
  | { type: "run"; run: RunSpec }
  /** After a reconnect: the gateway holds the first `lines` log lines of a run the worker named. */
  | { type: "resume"; id: string; lines: number; known: boolean }
  | { type: "ack"; id: string };

export type FromWorker =
  | { type: "hello"; worker: string; runs: string[] }
  | { type: "accepted"; id: string }
  /** retry: not refused for what it is (the worker is busy or draining); queue it again. */
  | { type: "refused"; id: string; reason: string; retry?: boolean }
  /** Lines from index `from` of the run's log (masked already); resent lines are ignored. */
  | { type: "log"; id: string; from: number; lines: string[] }
  | ({ type: "finished"; id: string } & RunOutcome)
  | { type: "draining" };

/** The proof of the pool's private key a launcher sends when connecting, and what it signs. */
export const PROOF_HEADER = "x-agentpools-proof";
export const proofPayload = (pool: string, timestamp: string) => Buffer.from(`agentpools-worker-connect\n${pool}\n${timestamp}`);
