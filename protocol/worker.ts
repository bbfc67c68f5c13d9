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

/**
 * A run is handed over under a lease, stored by the gateway before the run is sent: the
 * launcher's ID, a fencing number that every new lease on the run raises, and an expiry the
 * launcher renews every `termMs / 3`. A launcher starts a run only on the gateway's `start`,
 * which the gateway sends only while the lease is the run's; a lease taken away (`revoked`)
 * stops the run. So a run sent twice (a gateway restart, a dropped connection) runs once.
 */
export interface Lease {
  fence: number;
  termMs: number;
}

/** A lease's term a launcher takes: from 100 ms to a day (outside it, it keeps the term it had). */
export const LEASE_TERM_MS = { min: 100, max: 86_400_000 };

/** A lease a launcher holds (a run accepted, running, or finished and not yet acknowledged), as it presents it. */
export interface HeldLease {
  id: string;
  fence: number;
}

/**
 * Leases one "hello" or "renew" names, at most: a launcher holds its current run and at most four results not yet
 * acknowledged. The gateway reads no more from one message (it looks each up): a launcher naming more is cut off.
 */
export const MAX_LEASES_PER_MESSAGE = 16;

export type ToWorker =
  /** An offer: the launcher accepts (or refuses) and waits for `start`. */
  | { type: "run"; run: RunSpec; lease: Lease }
  /**
   * The lease stands and the run is stored as started: run it if it is not running yet; the
   * gateway holds its first `lines` log lines, so send the rest (and the outcome, if known).
   * Sent on `accepted`, after `hello`, and when lines went missing. Renew every termMs / 3:
   * after a gateway restart the term may differ from the offer's.
   */
  | { type: "start"; id: string; fence: number; lines: number; termMs: number }
  /** The lease is not (or no longer) this launcher's: stop the run and forget it. */
  | { type: "revoked"; id: string; reason: string }
  /** The outcome is stored: the launcher may forget the run. */
  | { type: "ack"; id: string };

export type FromWorker =
  /** First on every connection (the launcher's ID is its header's). */
  | { type: "hello"; leases: HeldLease[] }
  | { type: "accepted"; id: string; fence: number }
  /** retry: not refused for what it is (the worker is busy or draining); queue it again. */
  | { type: "refused"; id: string; fence: number; reason: string; retry?: boolean }
  /** Every `termMs / 3` while it holds leases. */
  | { type: "renew"; leases: HeldLease[] }
  /** Lines from index `from` of the run's log (masked already); resent lines are ignored. */
  | { type: "log"; id: string; fence: number; from: number; lines: string[] }
  /** The outcome; a gateway that could not store all the log lines asks for them (`resume`) first. */
  | ({ type: "finished"; id: string; fence: number } & RunOutcome)
  | { type: "draining" };

/**
 * The most bytes of a run's state, as sealed: the gateway stores no more (413), a launcher downloads no more by
 * default (its AGENTPOOLS_MAX_STATE_BYTES may set less or more).
 */
export const MAX_STATE_BYTES = 1024 * 1024 * 1024;

/** Lines of a run's log kept, at the launcher and at the gateway; the launcher says where it cut. */
export const MAX_LOG_LINES = 200_000;
/**
 * UTF-8 bytes of a run's log the launcher keeps (until the gateway acknowledges the run's end), whichever of the two
 * caps comes first: lines of three-byte characters would otherwise hold gigabytes of its memory within the line cap.
 */
export const MAX_LOG_BYTES = 32 * 1024 * 1024;

/** The launcher's headers: its ID (a UUID made at start) and, on a state upload, its lease's fence. */
export const WORKER_HEADER = "x-agentpools-worker";
export const FENCE_HEADER = "x-agentpools-fence";

/** The proof of the pool's private key a launcher sends when connecting, and what it signs. */
export const PROOF_HEADER = "x-agentpools-proof";
export const proofPayload = (pool: string, timestamp: string) =>
  Buffer.from(`agentpools-worker-connect\n${pool}\n${timestamp}`);
