import type { Readable } from "node:stream";
import type { RunStatus } from "../protocol/worker";
import { HttpError } from "./http";

/**
 * What the gateway keeps of worker runs, behind one interface: pools, runs, each run's log
 * and its position, the lease of the launcher running it, sealed state. Every method is one
 * transaction; a lease operation is a compare-and-set on (run, worker, fence), so several
 * gateways sharing one database could not both hand a run out (docs/store.md).
 * `SqliteStore` (sqlite-store.ts) is the embedded implementation.
 */
export interface GatewayStore {
  /** The pools the gateway serves, from its configuration; a run belongs to one of them. */
  syncPools(pools: { name: string; kind: string }[]): Promise<void>;
  /** A new queued run, stored durably before this resolves. */
  createRun(run: RunRecord): Promise<void>;
  getRun(id: string): Promise<RunRecord | undefined>;
  /** A pool's runs of one owner, newest first: at most `limit`, created before its run `before` if given. */
  listRuns(pool: string, options: { owner: string; limit: number; before?: string }): Promise<RunRecord[]>;
  /** Give the runs of one owner (undefined: of none, made before owners were kept) to another: how many. */
  handOverRuns(from: string | undefined, to: string): Promise<number>;
  /** Runs not yet final (queued or running), oldest first: all a starting gateway loads. */
  liveRuns(): Promise<RunRecord[]>;

  /**
   * Lease a queued run to a worker until `expiresAt`: the lease's new fencing number, or
   * undefined when the run is not queued or another lease on it has not expired at `now`.
   * Stored before it resolves (a run is never sent before its lease is stored); synced to disk
   * at the latest with the run's start.
   */
  grantLease(id: string, worker: string, now: number, expiresAt: number): Promise<number | undefined>;
  /** Extend a lease still held under this claim; false if it is not. */
  renewLease(claim: LeaseClaim, expiresAt: number): Promise<boolean>;
  /**
   * Give back the lease of a run its holder has not started (offered, or accepted but never
   * told to start): the run is queued again, free.
   */
  releaseLease(claim: LeaseClaim): Promise<boolean>;
  /** The holder accepted the run: it is running, from `at`. Durable; false if the claim is not the lease. */
  startRun(claim: LeaseClaim, at: string): Promise<boolean>;
  /**
   * Lines from index `from` of a running run's log, under the run's lease; lines already
   * stored are skipped. A line is stored while the log holds fewer than `max.lines` lines and
   * at most `max.bytes` UTF-8 bytes before it (the line that crosses the byte cap is the last
   * stored, so a launcher's cut marker fits); the rest are dropped. The log's length after it,
   * or undefined if the claim is not the run's lease.
   */
  appendLog(claim: LeaseClaim, from: number, lines: string[], max: LogCap): Promise<number | undefined>;
  /** Up to `limit` lines of a run's log from index `from`. */
  readLog(id: string, from: number, limit: number): Promise<string[]>;
  /**
   * The run's outcome; its lease ends. With a claim, only if the claim is the run's lease;
   * `note` is appended to its log in the same transaction. Durable; false if the run had
   * ended or the claim failed.
   */
  finishRun(id: string, claim: LeaseClaim | undefined, outcome: RunOutcomeRecord, note?: string): Promise<boolean>;

  /** Store a run's sealed state from its lease holder, streamed; replaces any earlier. */
  putState(claim: LeaseClaim, body: Readable): Promise<void>;
  hasState(id: string): Promise<boolean>;
  /** The sealed state a run left, streamed. */
  openState(id: string): Promise<Readable>;

  /** Delete finished runs (with their logs and state) beyond the policy: how many went. */
  prune(policy: RetentionPolicy, now: number): Promise<number>;
  close(): Promise<void>;
}

/** A run as the gateway keeps it: never the plaintext of its environment or state. */
export interface RunRecord {
  id: string;
  pool: string;
  /**
   * The service key (its id) that submitted it: only that key reads it, its log, lists it or starts from its state.
   * None on runs stored before owners were kept: they belong to no key.
   */
  owner?: string;
  image: string;
  commands: string[];
  sealedEnvironment?: string;
  timeoutSeconds?: number;
  stateFrom?: string;
  status: RunStatus;
  exitCode?: number;
  reason?: string;
  /** The launcher holding the run's lease, or the last one that held it. */
  worker?: string;
  /** The fencing number of the run's latest lease: every grant raises it. */
  fence: number;
  /** When the lease ends unless renewed (ms since the epoch); absent when no lease is held. */
  leaseExpiresAt?: number;
  /** The run left state, stored sealed. */
  state: boolean;
  /** Lines of its log stored: where a reconnecting launcher resumes. */
  logLines: number;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

/** The most of a run's log the gateway stores: lines, and UTF-8 bytes (see appendLog). */
export interface LogCap {
  lines: number;
  bytes: number;
}

export interface LeaseClaim {
  run: string;
  worker: string;
  fence: number;
}

export type RunOutcomeRecord = Pick<RunRecord, "status" | "exitCode" | "reason" | "state"> & { finishedAt: string };

/**
 * Finished runs kept: each key's newest `runsPerKey` in each pool (one key's volume never evicts another's runs), none
 * older than `maxAgeMs`.
 */
export interface RetentionPolicy {
  runsPerKey: number;
  maxAgeMs: number;
}

/**
 * A write the storage refused: full (507) or unusable, read-only or failing (503). The
 * request that needed it fails with this status; nothing else does.
 */
export class StoreError extends HttpError {
  constructor(
    readonly kind: "full" | "unavailable",
    detail: string,
  ) {
    super(
      kind === "full" ? 507 : 503,
      kind === "full"
        ? `the gateway's storage is full (${detail})`
        : `the gateway's storage is not writable (${detail})`,
    );
  }
}

// SQLite's primary result codes and the file system's errors that mean the storage, not the request.
const SQLITE_FULL = 13;
const SQLITE_UNAVAILABLE = new Set([
  8 /* READONLY */, 10 /* IOERR */, 11 /* CORRUPT */, 14 /* CANTOPEN */, 26 /* NOTADB */,
]);
const FS_FULL = new Set(["ENOSPC", "EDQUOT", "EFBIG"]);
const FS_UNAVAILABLE = new Set(["EROFS", "EACCES", "EPERM", "EIO"]);

/** A storage failure as a StoreError; any other error as it is. */
export function storageError(error: unknown): unknown {
  const { code, errcode, errstr, message } = error as {
    code?: string;
    errcode?: number;
    errstr?: string;
    message?: string;
  };
  const detail = errstr ?? code ?? message ?? String(error);
  if (code === "ERR_SQLITE_ERROR" && typeof errcode === "number") {
    if ((errcode & 0xff) === SQLITE_FULL) return new StoreError("full", detail);
    if (SQLITE_UNAVAILABLE.has(errcode & 0xff)) return new StoreError("unavailable", `${detail}: ${message}`);
  }
  if (code && FS_FULL.has(code)) return new StoreError("full", detail);
  if (code && FS_UNAVAILABLE.has(code)) return new StoreError("unavailable", detail);
  return error;
}
