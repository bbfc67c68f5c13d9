import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { HttpError } from "./http";
import { MAX_STATE_BYTES } from "../protocol/worker";
import {
  storageError,
  type GatewayStore,
  type LeaseClaim,
  type LogCap,
  type RetentionPolicy,
  type RunOutcomeRecord,
  type RunRecord,
} from "./store";

/** Without a data directory, sealed state is held in memory: up to this much per run. */
export const MAX_STATE_IN_MEMORY = 64 * 1024 * 1024;
/**
 * 2: runs.owner, the service key that submitted each run (1 had none: its runs belong to no key).
 * 3: runs.log_bytes, the UTF-8 bytes of the run's log stored, for its cap in bytes.
 */
const SCHEMA_VERSION = 3;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS pools (name TEXT PRIMARY KEY, kind TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  pool TEXT NOT NULL REFERENCES pools(name),
  spec TEXT NOT NULL,
  owner TEXT,
  status TEXT NOT NULL,
  exit_code INTEGER,
  reason TEXT,
  worker TEXT,
  fence INTEGER NOT NULL DEFAULT 0,
  lease_expires INTEGER,
  state INTEGER NOT NULL DEFAULT 0,
  state_bytes INTEGER,
  log_lines INTEGER NOT NULL DEFAULT 0,
  log_bytes INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  started_at TEXT,
  finished_at TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS runs_by_pool ON runs (pool, seq);
CREATE INDEX IF NOT EXISTS runs_live ON runs (status) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS log_lines (
  run INTEGER NOT NULL REFERENCES runs(seq) ON DELETE CASCADE,
  line INTEGER NOT NULL,
  text TEXT NOT NULL,
  PRIMARY KEY (run, line)
) STRICT, WITHOUT ROWID;
`;
/** After SCHEMA, and after a database of schema 1 got its owner column. */
const OWNER_INDEX = "CREATE INDEX IF NOT EXISTS runs_by_owner ON runs (pool, owner, seq);";
/**
 * A database of schema 1 or 2 gets its log_bytes column, counted for the runs that may still append to their log;
 * a finished run's log is never appended to, so its count may stay 0.
 */
const LOG_BYTES_COLUMN = `
ALTER TABLE runs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET log_bytes =
  (SELECT COALESCE(SUM(length(CAST(text AS BLOB))), 0) FROM log_lines WHERE run = runs.seq)
WHERE status IN ('queued', 'running');`;

interface Row {
  seq: number;
  id: string;
  pool: string;
  spec: string;
  owner: string | null;
  status: string;
  exit_code: number | null;
  reason: string | null;
  worker: string | null;
  fence: number;
  lease_expires: number | null;
  state: number;
  log_lines: number;
  log_bytes: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

/** Where a run's log ends: its row, and the lines and UTF-8 bytes stored. */
type LogEnd = Pick<Row, "seq" | "log_lines" | "log_bytes">;

/** What of a run is fixed at submission, kept as one JSON column. */
type Spec = Pick<RunRecord, "image" | "commands" | "sealedEnvironment" | "timeoutSeconds" | "stateFrom">;

function toRecord(row: Row): RunRecord {
  const spec = JSON.parse(row.spec) as Spec;
  const record: RunRecord = {
    id: row.id,
    pool: row.pool,
    ...spec,
    status: row.status as RunRecord["status"],
    fence: row.fence,
    state: row.state === 1,
    logLines: row.log_lines,
    createdAt: row.created_at,
  };
  if (row.owner !== null) record.owner = row.owner;
  if (row.exit_code !== null) record.exitCode = row.exit_code;
  if (row.reason !== null) record.reason = row.reason;
  if (row.worker !== null) record.worker = row.worker;
  if (row.lease_expires !== null) record.leaseExpiresAt = row.lease_expires;
  if (row.started_at !== null) record.startedAt = row.started_at;
  if (row.finished_at !== null) record.finishedAt = row.finished_at;
  return record;
}

/**
 * node:sqlite, loaded once. Node 22 prints an ExperimentalWarning when the module loads
 * (Node 24 does not); that one warning is dropped, any other is printed as usual.
 */
function sqlite(): typeof import("node:sqlite") {
  const emitWarning = process.emitWarning;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const type = typeof rest[0] === "string" ? rest[0] : (rest[0] as { type?: string } | undefined)?.type;
    if (type === "ExperimentalWarning" && /SQLite/.test(String(warning))) return;
    (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
  }) as typeof process.emitWarning;
  try {
    const module = process.getBuiltinModule?.("node:sqlite") as typeof import("node:sqlite") | undefined;
    if (!module)
      throw new Error(`the gateway's store needs Node.js 22.13 or later (node:sqlite); this is ${process.version}`);
    return module;
  } finally {
    process.emitWarning = emitWarning;
  }
}

/**
 * The gateway's store in SQLite (Node's built-in node:sqlite): `<dataDir>/gateway.db` in WAL
 * mode, sealed state beside it as files (`<dataDir>/state/<run>`); or all in memory without a
 * data directory. A new run, a start and an outcome are synced to disk before they return
 * (what the gateway answers for: a 201, a "start", an "ack"); the rest is durable across a
 * crash of the gateway, and a power cut takes at most what came after the last sync (a lease
 * not yet started is then offered again under the same fence to another launcher, whose ID
 * the old holder's messages do not carry).
 */
export class SqliteStore implements GatewayStore {
  private readonly db: DatabaseSync;
  private readonly stateDir?: string;
  private readonly memoryState = new Map<string, Buffer>();
  private readonly statements = new Map<string, StatementSync>();

  /** `maxStateBytes`: the most state of one run kept (sealed), MAX_STATE_BYTES, or 64 MiB in memory (settable for tests). */
  constructor(
    dataDir?: string,
    private readonly maxStateBytes = dataDir ? MAX_STATE_BYTES : MAX_STATE_IN_MEMORY,
  ) {
    const { DatabaseSync } = sqlite();
    try {
      if (dataDir) {
        this.stateDir = path.join(dataDir, "state");
        mkdirSync(dataDir, { recursive: true, mode: 0o700 });
        // Not recursive: on a read-only file system that says ENOENT, this says EROFS.
        if (!existsSync(this.stateDir)) mkdirSync(this.stateDir, { mode: 0o700 });
      }
      // A busy timeout: main.js hand-over-runs may write while a gateway serves.
      this.db = new DatabaseSync(dataDir ? path.join(dataDir, "gateway.db") : ":memory:", { timeout: 5000 });
      this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;");
      const { user_version: version } = this.db.prepare("PRAGMA user_version").get() as { user_version: number };
      if (version > SCHEMA_VERSION)
        throw new Error(
          `${dataDir}/gateway.db is of a newer gateway (schema ${version}; this one knows ${SCHEMA_VERSION})`,
        );
      // One transaction: a database of schema 1 is given its owner column (its runs keep none: they belong to no
      // key until an operator hands them over, main.js hand-over-runs), one of schema 1 or 2 its log_bytes column;
      // or it stays as it was.
      this.db.exec("BEGIN IMMEDIATE");
      try {
        this.db.exec(SCHEMA);
        if (version === 1) this.db.exec("ALTER TABLE runs ADD COLUMN owner TEXT");
        if (version === 1 || version === 2) this.db.exec(LOG_BYTES_COLUMN);
        this.db.exec(OWNER_INDEX + `PRAGMA user_version = ${SCHEMA_VERSION}; COMMIT;`);
      } finally {
        if (this.db.isTransaction) this.db.exec("ROLLBACK");
      }
    } catch (error) {
      const failure = storageError(error);
      throw new Error(`cannot open the gateway's store in ${dataDir ?? "memory"}: ${(failure as Error).message}`);
    }
  }

  private statement(sql: string): StatementSync {
    let statement = this.statements.get(sql);
    if (!statement) this.statements.set(sql, (statement = this.db.prepare(sql)));
    return statement;
  }

  private run(sql: string, ...values: (string | number | null)[]) {
    return this.statement(sql).run(...values);
  }

  private get<T>(sql: string, ...values: (string | number | null)[]): T | undefined {
    return this.statement(sql).get(...values) as T | undefined;
  }

  private all<T>(sql: string, ...values: (string | number | null)[]): T[] {
    return this.statement(sql).all(...values) as T[];
  }

  /** One transaction; `durable` ones are synced to disk before they return. Storage failures become StoreErrors. */
  private transaction<T>(work: () => T, durable = false): Promise<T> {
    try {
      if (durable) this.db.exec("PRAGMA synchronous = FULL");
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const result = work();
        this.db.exec("COMMIT");
        return Promise.resolve(result);
      } catch (error) {
        if (this.db.isTransaction) this.db.exec("ROLLBACK");
        throw error;
      } finally {
        if (durable) this.db.exec("PRAGMA synchronous = NORMAL");
      }
    } catch (error) {
      return Promise.reject(storageError(error));
    }
  }

  private read<T>(work: () => T): Promise<T> {
    try {
      return Promise.resolve(work());
    } catch (error) {
      return Promise.reject(storageError(error));
    }
  }

  syncPools(pools: { name: string; kind: string }[]): Promise<void> {
    return this.transaction(() => {
      for (const { name, kind } of pools)
        this.run(
          "INSERT INTO pools (name, kind) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET kind = excluded.kind",
          name,
          kind,
        );
    });
  }

  createRun(run: RunRecord): Promise<void> {
    const spec: Spec = {
      image: run.image,
      commands: run.commands,
      sealedEnvironment: run.sealedEnvironment,
      timeoutSeconds: run.timeoutSeconds,
      stateFrom: run.stateFrom,
    };
    return this.transaction(() => {
      this.run(
        "INSERT INTO runs (id, pool, spec, owner, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        run.id,
        run.pool,
        JSON.stringify(spec),
        run.owner ?? null,
        run.status,
        run.createdAt,
      );
    }, true);
  }

  getRun(id: string): Promise<RunRecord | undefined> {
    return this.read(() => {
      const row = this.get<Row>("SELECT * FROM runs WHERE id = ?", id);
      return row && toRecord(row);
    });
  }

  listRuns(
    pool: string,
    { owner, limit, before }: { owner: string; limit: number; before?: string },
  ): Promise<RunRecord[]> {
    // `before` is read among the owner's runs too: another key's run ID pages nothing (as an unknown one).
    return this.read(() => {
      const rows = before
        ? this.all<Row>(
            `SELECT * FROM runs WHERE pool = ? AND owner = ?
             AND seq < (SELECT seq FROM runs WHERE id = ? AND owner = ?) ORDER BY seq DESC LIMIT ?`,
            pool,
            owner,
            before,
            owner,
            limit,
          )
        : this.all<Row>(
            "SELECT * FROM runs WHERE pool = ? AND owner = ? ORDER BY seq DESC LIMIT ?",
            pool,
            owner,
            limit,
          );
      return rows.map(toRecord);
    });
  }

  handOverRuns(from: string | undefined, to: string): Promise<number> {
    return this.transaction(
      () =>
        Number(
          (from === undefined
            ? this.run("UPDATE runs SET owner = ? WHERE owner IS NULL", to)
            : this.run("UPDATE runs SET owner = ? WHERE owner = ?", to, from)
          ).changes,
        ),
      true,
    );
  }

  liveRuns(): Promise<RunRecord[]> {
    return this.read(() =>
      this.all<Row>("SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY seq").map(toRecord),
    );
  }

  grantLease(id: string, worker: string, now: number, expiresAt: number): Promise<number | undefined> {
    return this.transaction(() => {
      const row = this.get<{ fence: number }>(
        `UPDATE runs SET worker = ?, fence = fence + 1, lease_expires = ?
         WHERE id = ? AND status = 'queued' AND (lease_expires IS NULL OR lease_expires <= ?) RETURNING fence`,
        worker,
        expiresAt,
        id,
        now,
      );
      return row?.fence;
    });
  }

  renewLease({ run, worker, fence }: LeaseClaim, expiresAt: number): Promise<boolean> {
    return this.transaction(
      () =>
        this.run(
          `UPDATE runs SET lease_expires = ?
           WHERE id = ? AND worker = ? AND fence = ? AND lease_expires IS NOT NULL AND status IN ('queued', 'running')`,
          expiresAt,
          run,
          worker,
          fence,
        ).changes > 0,
    );
  }

  releaseLease({ run, worker, fence }: LeaseClaim): Promise<boolean> {
    return this.transaction(
      () =>
        this.run(
          `UPDATE runs SET status = 'queued', started_at = NULL, lease_expires = NULL, worker = NULL
           WHERE id = ? AND worker = ? AND fence = ? AND status IN ('queued', 'running') AND lease_expires IS NOT NULL`,
          run,
          worker,
          fence,
        ).changes > 0,
    );
  }

  startRun({ run, worker, fence }: LeaseClaim, at: string): Promise<boolean> {
    return this.transaction(
      () =>
        this.run(
          `UPDATE runs SET status = 'running', started_at = ?
           WHERE id = ? AND worker = ? AND fence = ? AND status = 'queued' AND lease_expires IS NOT NULL`,
          at,
          run,
          worker,
          fence,
        ).changes > 0,
      true,
    );
  }

  appendLog(
    { run, worker, fence }: LeaseClaim,
    from: number,
    lines: string[],
    max: LogCap,
  ): Promise<number | undefined> {
    return this.transaction(() => {
      const row = this.get<LogEnd>(
        "SELECT seq, log_lines, log_bytes FROM runs WHERE id = ? AND worker = ? AND fence = ? AND status = 'running'",
        run,
        worker,
        fence,
      );
      if (!row) return undefined;
      return this.insertLines(row, from, lines, max);
    });
  }

  /**
   * Lines from index `from`, skipping those stored and those past `max` (a line is stored while the log before it
   * is within both caps): the log's new length.
   */
  private insertLines(
    { seq, log_lines: stored, log_bytes: storedBytes }: LogEnd,
    from: number,
    lines: string[],
    max: LogCap,
  ): number {
    // A gap stores nothing, nor does a `from` that is no number (NaN).
    if (!(from <= stored)) return stored;
    let count = stored;
    let bytes = storedBytes;
    const insert = this.statement("INSERT INTO log_lines (run, line, text) VALUES (?, ?, ?)");
    for (const text of lines.slice(stored - from)) {
      if (count >= max.lines || bytes > max.bytes) break;
      insert.run(seq, count++, text);
      bytes += Buffer.byteLength(text);
    }
    if (count === stored) return stored;
    this.run("UPDATE runs SET log_lines = ?, log_bytes = ? WHERE seq = ?", count, bytes, seq);
    return count;
  }

  readLog(id: string, from: number, limit: number): Promise<string[]> {
    return this.read(() =>
      this.all<{ text: string }>(
        `SELECT text FROM log_lines
         WHERE run = (SELECT seq FROM runs WHERE id = ?) AND line >= ? ORDER BY line LIMIT ?`,
        id,
        from,
        limit,
      ).map((r) => r.text),
    );
  }

  finishRun(id: string, claim: LeaseClaim | undefined, outcome: RunOutcomeRecord, note?: string): Promise<boolean> {
    return this.transaction(() => {
      const row = claim
        ? this.get<LogEnd>(
            `SELECT seq, log_lines, log_bytes FROM runs
             WHERE id = ? AND worker = ? AND fence = ? AND status IN ('queued', 'running')`,
            id,
            claim.worker,
            claim.fence,
          )
        : this.get<LogEnd>(
            "SELECT seq, log_lines, log_bytes FROM runs WHERE id = ? AND status IN ('queued', 'running')",
            id,
          );
      if (!row) return false;
      // The gateway's own note is kept past both caps: it says why the run ended.
      if (note !== undefined) this.insertLines(row, row.log_lines, [note], { lines: Infinity, bytes: Infinity });
      this.run(
        `UPDATE runs SET status = ?, exit_code = ?, reason = ?, state = ?, finished_at = ?, lease_expires = NULL
         WHERE seq = ?`,
        outcome.status,
        outcome.exitCode ?? null,
        outcome.reason ?? null,
        outcome.state ? 1 : 0,
        outcome.finishedAt,
        row.seq,
      );
      return true;
    }, true);
  }

  async putState({ run, worker, fence }: LeaseClaim, body: Readable): Promise<void> {
    const held = await this.read(() =>
      this.get(
        "SELECT 1 FROM runs WHERE id = ? AND worker = ? AND fence = ? AND status = 'running'",
        run,
        worker,
        fence,
      ),
    );
    if (!held) {
      body.resume();
      throw new HttpError(409, "only the launcher holding a run's lease stores its state");
    }
    let size = 0;
    const max = this.maxStateBytes;
    // Over the bound the rest is read and dropped, so the launcher finishes sending and reads the 413 rather than a
    // reset connection.
    const tooLarge = () =>
      new HttpError(
        413,
        this.stateDir
          ? `run state over ${max} bytes (sealed) is more than the gateway keeps`
          : `run state over ${max} bytes needs a gateway with a data directory`,
      );
    if (this.stateDir) {
      const file = path.join(this.stateDir, run);
      const output = createWriteStream(`${file}.part`, { mode: 0o600 });
      try {
        await pipeline(
          body,
          async function* (chunks: AsyncIterable<Buffer>) {
            for await (const chunk of chunks) {
              size += chunk.length;
              if (size <= max) yield chunk;
            }
          },
          output,
        );
        if (size > max) throw tooLarge();
        renameSync(`${file}.part`, file);
      } catch (error) {
        rmSync(`${file}.part`, { force: true });
        throw storageError(error);
      }
    } else {
      const chunks: Buffer[] = [];
      for await (const chunk of body) {
        size += (chunk as Buffer).length;
        if (size <= max) chunks.push(chunk as Buffer);
        else chunks.length = 0;
      }
      if (size > max) throw tooLarge();
      this.memoryState.set(run, Buffer.concat(chunks));
    }
    await this.transaction(() => this.run("UPDATE runs SET state_bytes = ? WHERE id = ?", size, run));
  }

  hasState(id: string): Promise<boolean> {
    return this.read(() => this.get("SELECT 1 FROM runs WHERE id = ? AND state_bytes IS NOT NULL", id) !== undefined);
  }

  async openState(id: string): Promise<Readable> {
    if (!this.stateDir) return Readable.from([this.memoryState.get(id) ?? Buffer.alloc(0)]);
    const stream = createReadStream(path.join(this.stateDir, id));
    await new Promise<void>((resolve, reject) =>
      stream.once("open", () => resolve()).once("error", (error) => reject(storageError(error))),
    );
    return stream;
  }

  async prune({ runsPerKey, maxAgeMs }: RetentionPolicy, now: number): Promise<number> {
    const cutoff = new Date(now - maxAgeMs).toISOString();
    // Finished runs past their key's count in the pool or older than the cutoff; the newest run of each key in
    // each pool that left state stays, so a later run of that key can still start from it.
    const doomed = await this.read(() =>
      this.all<{ seq: number; id: string }>(
        `SELECT seq, id FROM (
           SELECT seq, id, finished_at, ROW_NUMBER() OVER (PARTITION BY pool, owner ORDER BY seq DESC) AS rank
           FROM runs WHERE finished_at IS NOT NULL
         ) WHERE (rank > ? OR finished_at < ?)
           AND seq NOT IN (SELECT MAX(seq) FROM runs WHERE state = 1 AND finished_at IS NOT NULL GROUP BY pool, owner)`,
        runsPerKey,
        cutoff,
      ),
    );
    // In batches: one transaction never holds the database long, and a failure loses little.
    for (let at = 0; at < doomed.length; at += 500) {
      const batch = doomed.slice(at, at + 500);
      await this.transaction(() => {
        const remove = this.statement("DELETE FROM runs WHERE seq = ?");
        for (const { seq } of batch) remove.run(seq);
      });
      for (const { id } of batch) {
        if (this.stateDir) rmSync(path.join(this.stateDir, id), { force: true });
        else this.memoryState.delete(id);
      }
    }
    return doomed.length;
  }

  async close(): Promise<void> {
    if (this.db.isOpen) this.db.close();
  }
}
