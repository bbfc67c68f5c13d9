import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import { SqliteStore } from "../gateway/sqlite-store";
import type { LeaseClaim, RunRecord } from "../gateway/store";
import { scratchDir } from "../devkit/helpers";

const T0 = Date.parse("2026-01-01T00:00:00Z");
const iso = (ms: number) => new Date(ms).toISOString();
const queued = (id: string, pool = "w", createdAt = T0, owner = "k"): RunRecord => ({
  id,
  pool,
  owner,
  image: "alpine:3",
  commands: ["true"],
  status: "queued",
  fence: 0,
  state: false,
  logLines: 0,
  createdAt: iso(createdAt),
});
/** A log cap of so many lines and, unless given, any number of bytes. */
const upTo = (lines: number, bytes = Infinity) => ({ lines, bytes });
const text = async (stream: Readable) => {
  let out = "";
  for await (const chunk of stream) out += chunk;
  return out;
};

describe("the gateway's store (SQLite)", () => {
  let store: SqliteStore;
  let dir: string;
  beforeEach(async () => {
    dir = scratchDir("store-");
    store = new SqliteStore(dir);
    await store.syncPools([
      { name: "w", kind: "worker" },
      { name: "v", kind: "worker" },
    ]);
  });
  afterEach(() => store.close());

  it("a lease is a compare-and-set: one holder at a time, each grant a higher fence", async () => {
    await store.createRun(queued("r1"));
    const fence = await store.grantLease("r1", "L1", T0, T0 + 1000);
    assert.equal(fence, 1);
    assert.equal(await store.grantLease("r1", "L2", T0 + 999, T0 + 2000), undefined, "held until it expires");
    const l1: LeaseClaim = { run: "r1", worker: "L1", fence: 1 };
    assert.equal(await store.renewLease({ ...l1, worker: "L2" }, T0 + 5000), false, "only its holder renews it");
    assert.equal(await store.renewLease(l1, T0 + 5000), true);
    assert.equal(await store.grantLease("r1", "L2", T0 + 4000, T0 + 6000), undefined, "renewed: still held");
    // Expired: another launcher may have it, under a higher fence; the old claim is worthless.
    assert.equal(await store.grantLease("r1", "L2", T0 + 5000, T0 + 8000), 2);
    assert.equal(await store.startRun(l1, iso(T0)), false);
    assert.equal(await store.releaseLease(l1), false);
    const l2: LeaseClaim = { run: "r1", worker: "L2", fence: 2 };
    assert.equal(await store.startRun(l2, iso(T0 + 5001)), true);
    assert.equal(await store.startRun(l2, iso(T0 + 5002)), false, "started once");
    assert.equal(
      await store.grantLease("r1", "L3", T0 + 99_999, T0 + 100_000),
      undefined,
      "a running run is never leased again",
    );
    const run = await store.getRun("r1");
    assert.equal(run?.status, "running");
    assert.equal(run?.worker, "L2");
    assert.equal(run?.fence, 2);
    assert.equal(run?.leaseExpiresAt, T0 + 8000);
  });

  it("a lease given back queues the run again; the next grant fences the old holder out", async () => {
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    assert.equal(await store.releaseLease({ run: "r1", worker: "L1", fence: 1 }), true);
    const run = await store.getRun("r1");
    assert.equal(run?.worker, undefined);
    assert.equal(run?.leaseExpiresAt, undefined);
    assert.equal(await store.grantLease("r1", "L1", T0, T0 + 1000), 2);
  });

  it("log lines: under the lease only, resent lines skipped, a gap refused, a cap kept", async () => {
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    const claim = { run: "r1", worker: "L1", fence: 1 };
    assert.equal(await store.appendLog(claim, 0, ["early"], upTo(10)), undefined, "not running yet");
    await store.startRun(claim, iso(T0));
    assert.equal(await store.appendLog(claim, 0, ["a", "b"], upTo(10)), 2);
    assert.equal(await store.appendLog(claim, 1, ["b", "c"], upTo(10)), 3, "b again is skipped");
    assert.equal(await store.appendLog(claim, 5, ["f"], upTo(10)), 3, "a gap is not stored");
    assert.equal(await store.appendLog(claim, NaN, ["f"], upTo(10)), 3, "nor lines from no index");
    assert.equal(
      await store.appendLog({ ...claim, fence: 0 }, 3, ["x"], upTo(10)),
      undefined,
      "another fence writes nothing",
    );
    assert.equal(await store.appendLog(claim, 3, ["d", "e", "f", "g"], upTo(5)), 5, "cut at the cap");
    assert.deepEqual(await store.readLog("r1", 0, 100), ["a", "b", "c", "d", "e"]);
    assert.deepEqual(await store.readLog("r1", 3, 1), ["d"]);
    assert.equal((await store.getRun("r1"))?.logLines, 5);
  });

  it("log bytes: counted in UTF-8, the line that crosses the cap is the last stored, the gateway's note past it", async () => {
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    const claim = { run: "r1", worker: "L1", fence: 1 };
    await store.startRun(claim, iso(T0));
    // 3 + 6 bytes of UTF-8 (4 UTF-16 code units): the log is at its cap of 9 bytes, not over it.
    assert.equal(await store.appendLog(claim, 0, ["aé", "€€"], upTo(10, 9)), 2);
    // "😀" (4 bytes) is the line that crosses the cap: stored; what follows it is dropped, resent "€€" skipped.
    assert.equal(await store.appendLog(claim, 1, ["€€", "😀", "x"], upTo(10, 9)), 3, "cut past the crossing line");
    assert.equal(await store.appendLog(claim, 3, ["y"], upTo(10, 9)), 3, "nothing more is stored");
    await store.close();
    store = new SqliteStore(dir);
    assert.equal(await store.appendLog(claim, 3, ["y"], upTo(10, 9)), 3, "the count in bytes survives a reopen");
    assert.deepEqual(await store.readLog("r1", 0, 10), ["aé", "€€", "😀"]);
    const outcome = { status: "failed" as const, exitCode: 1, state: false, finishedAt: iso(T0 + 10) };
    assert.equal(await store.finishRun("r1", claim, outcome, "[agentpools: note]"), true);
    assert.deepEqual(await store.readLog("r1", 3, 10), ["[agentpools: note]"], "the gateway's note past the cap");
    assert.equal((await store.getRun("r1"))?.logLines, 4);
  });

  it("an outcome ends the lease once; a note goes into the log in the same transaction", async () => {
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    const claim = { run: "r1", worker: "L1", fence: 1 };
    await store.startRun(claim, iso(T0));
    const outcome = { status: "succeeded" as const, exitCode: 0, state: false, finishedAt: iso(T0 + 10) };
    assert.equal(await store.finishRun("r1", { ...claim, worker: "L2" }, outcome), false);
    assert.equal(await store.finishRun("r1", claim, outcome, "[done]"), true);
    assert.equal(await store.finishRun("r1", claim, { ...outcome, status: "failed" }), false, "final is final");
    const run = await store.getRun("r1");
    assert.equal(run?.status, "succeeded");
    assert.equal(run?.leaseExpiresAt, undefined);
    assert.deepEqual(await store.readLog("r1", 0, 10), ["[done]"]);
  });

  it("what is stored survives a reopen: runs, leases, logs, sealed state", async () => {
    await store.createRun(queued("r1"));
    await store.createRun(queued("r2"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    const claim = { run: "r1", worker: "L1", fence: 1 };
    await store.startRun(claim, iso(T0));
    await store.appendLog(claim, 0, ["kept"], upTo(10));
    await store.putState(claim, Readable.from([Buffer.from("APS1 sealed")]));
    await store.close();
    store = new SqliteStore(dir);
    assert.deepEqual(
      (await store.liveRuns()).map((r) => [r.id, r.status, r.worker, r.fence]),
      [
        ["r1", "running", "L1", 1],
        ["r2", "queued", undefined, 0],
      ],
    );
    assert.deepEqual(await store.readLog("r1", 0, 10), ["kept"]);
    assert.equal(await store.hasState("r1"), true);
    assert.equal(await text(await store.openState("r1")), "APS1 sealed");
    assert.equal(readFileSync(path.join(dir, "state", "r1"), "utf8"), "APS1 sealed");
  });

  it("state is stored only from the lease holder of a running run", async () => {
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    await assert.rejects(store.putState({ run: "r1", worker: "L1", fence: 1 }, Readable.from([Buffer.from("x")])), {
      status: 409,
    });
    await store.startRun({ run: "r1", worker: "L1", fence: 1 }, iso(T0));
    await assert.rejects(store.putState({ run: "r1", worker: "L2", fence: 1 }, Readable.from([Buffer.from("x")])), {
      status: 409,
    });
    assert.equal(await store.hasState("r1"), false);
  });

  it("state over the cap is refused (413) with a data directory too; nothing of it stays, a state within it is kept", async () => {
    await store.close();
    store = new SqliteStore(dir, 1000);
    await store.createRun(queued("r1"));
    await store.grantLease("r1", "L1", T0, T0 + 1000);
    const claim = { run: "r1", worker: "L1", fence: 1 };
    await store.startRun(claim, iso(T0));
    await assert.rejects(store.putState(claim, Readable.from([Buffer.alloc(600), Buffer.alloc(600)])), {
      status: 413,
      message: /run state over 1000 bytes \(sealed\) is more than the gateway keeps/,
    });
    assert.equal(await store.hasState("r1"), false);
    assert.deepEqual(readdirSync(path.join(dir, "state")), [], "no file, whole or partial");
    await store.putState(claim, Readable.from([Buffer.alloc(1000, 1)]));
    assert.equal((await text(await store.openState("r1"))).length, 1000);
  });

  it("lists a pool's runs newest first, a page at a time; loads only live runs", async () => {
    for (let i = 0; i < 5; i++) await store.createRun(queued(`r${i}`, "w", T0 + i));
    await store.createRun(queued("other", "v"));
    await store.finishRun("r0", undefined, { status: "lost", state: false, finishedAt: iso(T0) });
    assert.deepEqual(
      (await store.listRuns("w", { owner: "k", limit: 2 })).map((r) => r.id),
      ["r4", "r3"],
    );
    assert.deepEqual(
      (await store.listRuns("w", { owner: "k", limit: 10, before: "r3" })).map((r) => r.id),
      ["r2", "r1", "r0"],
    );
    assert.deepEqual(
      (await store.liveRuns()).map((r) => r.id),
      ["r1", "r2", "r3", "r4", "other"],
    );
  });

  it("retention: finished runs past the count or the age go with their logs and state; live runs and the newest state stay", async () => {
    const day = 86_400_000;
    const finish = async (id: string, at: number, state = false) => {
      await store.createRun(queued(id, "w", at));
      await store.grantLease(id, "L", at, at + 1000);
      const claim = { run: id, worker: "L", fence: 1 };
      await store.startRun(claim, iso(at));
      await store.appendLog(claim, 0, [`log of ${id}`], upTo(10));
      if (state) await store.putState(claim, Readable.from([Buffer.from(id)]));
      await store.finishRun(id, claim, { status: "succeeded", state, finishedAt: iso(at) });
    };
    await finish("old-with-state", T0 - 40 * day, true);
    await finish("old", T0 - 31 * day);
    for (let i = 0; i < 4; i++) await finish(`recent${i}`, T0 - (4 - i) * day);
    await store.createRun(queued("live", "w", T0 - 60 * day));
    assert.equal(await store.prune({ runsPerKey: 3, maxAgeMs: 30 * day }, T0), 2);
    assert.deepEqual(
      (await store.listRuns("w", { owner: "k", limit: 100 })).map((r) => r.id),
      ["live", "recent3", "recent2", "recent1", "old-with-state"],
    );
    assert.deepEqual(await store.readLog("recent0", 0, 10), [], "its log went with it");
    assert.ok(existsSync(path.join(dir, "state", "old-with-state")), "the pool's newest state is kept");
    // A newer run leaves state: the old one may go now.
    await finish("newer-state", T0, true);
    assert.equal(await store.prune({ runsPerKey: 3, maxAgeMs: 30 * day }, T0), 2);
    assert.ok(!existsSync(path.join(dir, "state", "old-with-state")));
    assert.deepEqual(
      (await store.listRuns("w", { owner: "k", limit: 100 })).map((r) => r.id),
      ["newer-state", "live", "recent3", "recent2"],
    );
  });

  it("a run's owner is stored: listing and paging see only the owner's runs; another owner's run pages nothing", async () => {
    await store.createRun(queued("a1", "w", T0, "aaaaaaaaaaaa"));
    await store.createRun(queued("b1", "w", T0 + 1, "bbbbbbbbbbbb"));
    await store.createRun(queued("a2", "w", T0 + 2, "aaaaaaaaaaaa"));
    await store.close();
    store = new SqliteStore(dir);
    assert.equal((await store.getRun("b1"))?.owner, "bbbbbbbbbbbb", "kept across a reopen");
    const list = async (owner: string, before?: string) =>
      (await store.listRuns("w", { owner, limit: 10, before })).map((r) => r.id);
    assert.deepEqual(await list("aaaaaaaaaaaa"), ["a2", "a1"]);
    assert.deepEqual(await list("bbbbbbbbbbbb"), ["b1"]);
    assert.deepEqual(await list("aaaaaaaaaaaa", "b1"), [], "B's run ID is no cursor for A: as an unknown one");
    assert.deepEqual(await list("aaaaaaaaaaaa", "a2"), ["a1"]);
  });

  it("retention counts each key's runs on their own: one key's many runs never evict another key's", async () => {
    const finish = async (id: string, owner: string, at: number) => {
      await store.createRun(queued(id, "w", at, owner));
      await store.grantLease(id, "L", at, at + 1000);
      const claim = { run: id, worker: "L", fence: 1 };
      await store.startRun(claim, iso(at));
      await store.finishRun(id, claim, { status: "refused", state: false, finishedAt: iso(at) });
    };
    for (let i = 0; i < 2; i++) await finish(`alice${i}`, "aaaaaaaaaaaa", T0 + i);
    for (let i = 0; i < 6; i++) await finish(`eve${i}`, "eeeeeeeeeeee", T0 + 10 + i);
    assert.equal(await store.prune({ runsPerKey: 3, maxAgeMs: 86_400_000 }, T0 + 20), 3);
    const kept = async (owner: string) => (await store.listRuns("w", { owner, limit: 10 })).map((r) => r.id);
    assert.deepEqual(await kept("aaaaaaaaaaaa"), ["alice1", "alice0"], "alice's runs stay");
    assert.deepEqual(await kept("eeeeeeeeeeee"), ["eve5", "eve4", "eve3"]);
  });

  it("retention keeps each key's newest run that left state, not only the pool's", async () => {
    const finish = async (id: string, owner: string, at: number) => {
      await store.createRun(queued(id, "w", at, owner));
      await store.grantLease(id, "L", at, at + 1000);
      const claim = { run: id, worker: "L", fence: 1 };
      await store.startRun(claim, iso(at));
      await store.putState(claim, Readable.from([Buffer.from(id)]));
      await store.finishRun(id, claim, { status: "succeeded", state: true, finishedAt: iso(at) });
    };
    await finish("b-state", "bbbbbbbbbbbb", T0);
    for (let i = 0; i < 3; i++) await finish(`a${i}`, "aaaaaaaaaaaa", T0 + 1 + i);
    await store.prune({ runsPerKey: 1, maxAgeMs: 86_400_000 }, T0 + 10);
    assert.equal((await store.getRun("b-state"))?.state, true, "B can still start from its state");
    assert.deepEqual(
      (await store.listRuns("w", { owner: "aaaaaaaaaaaa", limit: 10 })).map((r) => r.id),
      ["a2"],
    );
  });

  it("a database of schema 1 (no owners) is migrated: its runs belong to no key until handed over", async () => {
    await store.close();
    const legacy = scratchDir("store-v1-");
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(path.join(legacy, "gateway.db"));
    // Schema 1's runs table, as the gateway before owners wrote it.
    db.exec(`
      CREATE TABLE pools (name TEXT PRIMARY KEY, kind TEXT NOT NULL) STRICT;
      CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        pool TEXT NOT NULL REFERENCES pools(name), spec TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER,
        reason TEXT, worker TEXT, fence INTEGER NOT NULL DEFAULT 0, lease_expires INTEGER,
        state INTEGER NOT NULL DEFAULT 0, state_bytes INTEGER, log_lines INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT) STRICT;
      INSERT INTO pools VALUES ('w', 'worker');
      INSERT INTO runs (id, pool, spec, status, created_at)
        VALUES ('old', 'w', '{"image":"alpine:3","commands":["true"]}', 'succeeded', '${iso(T0)}');
      PRAGMA user_version = 1;`);
    db.close();
    store = new SqliteStore(legacy);
    const old = await store.getRun("old");
    assert.equal(old?.image, "alpine:3");
    assert.equal(old?.owner, undefined);
    assert.deepEqual(await store.listRuns("w", { owner: "", limit: 10 }), [], "no key, not even an empty one");
    await store.createRun(queued("new", "w", T0 + 1, "aaaaaaaaaaaa"));
    // Its log is counted in bytes too (schema 3).
    await store.grantLease("new", "L1", T0, T0 + 1000);
    const claim = { run: "new", worker: "L1", fence: 1 };
    await store.startRun(claim, iso(T0 + 2));
    assert.equal(await store.appendLog(claim, 0, ["€€", "€", "x"], upTo(10, 6)), 2);
    assert.equal(await store.handOverRuns(undefined, "cccccccccccc"), 1);
    assert.equal(await store.handOverRuns("aaaaaaaaaaaa", "cccccccccccc"), 1);
    assert.deepEqual(
      (await store.listRuns("w", { owner: "cccccccccccc", limit: 10 })).map((r) => r.id),
      ["new", "old"],
    );
    const { user_version } = new DatabaseSync(path.join(legacy, "gateway.db")).prepare("PRAGMA user_version").get() as {
      user_version: number;
    };
    assert.equal(user_version, 3);
  });

  it("a database of schema 2 is migrated: a live run's stored log counts towards its cap in bytes", async () => {
    await store.close();
    const legacy = scratchDir("store-v2-");
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(path.join(legacy, "gateway.db"));
    // Schema 2's tables, as the gateway before log_bytes wrote them: a running run and a finished one, with logs.
    db.exec(`
      CREATE TABLE pools (name TEXT PRIMARY KEY, kind TEXT NOT NULL) STRICT;
      CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        pool TEXT NOT NULL REFERENCES pools(name), spec TEXT NOT NULL, owner TEXT, status TEXT NOT NULL,
        exit_code INTEGER, reason TEXT, worker TEXT, fence INTEGER NOT NULL DEFAULT 0, lease_expires INTEGER,
        state INTEGER NOT NULL DEFAULT 0, state_bytes INTEGER, log_lines INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT) STRICT;
      CREATE TABLE log_lines (run INTEGER NOT NULL REFERENCES runs(seq) ON DELETE CASCADE, line INTEGER NOT NULL,
        text TEXT NOT NULL, PRIMARY KEY (run, line)) STRICT, WITHOUT ROWID;
      INSERT INTO pools VALUES ('w', 'worker');
      INSERT INTO runs (id, pool, spec, owner, status, worker, fence, lease_expires, log_lines, created_at, started_at)
        VALUES ('live', 'w', '{"image":"alpine:3","commands":["true"]}', 'k', 'running', 'L1', 1, ${T0 + 1000}, 2,
          '${iso(T0)}', '${iso(T0)}');
      INSERT INTO runs (id, pool, spec, owner, status, log_lines, created_at, finished_at)
        VALUES ('done', 'w', '{"image":"alpine:3","commands":["true"]}', 'k', 'succeeded', 1, '${iso(T0)}',
          '${iso(T0)}');
      INSERT INTO log_lines VALUES (1, 0, 'aé'), (1, 1, '€€'), (2, 0, 'done');
      PRAGMA user_version = 2;`);
    db.close();
    store = new SqliteStore(legacy);
    const claim = { run: "live", worker: "L1", fence: 1 };
    // Its 9 bytes stored count: "ü" crosses a cap of 9 and is the last line stored.
    assert.equal(await store.appendLog(claim, 2, ["ü", "x"], upTo(10, 9)), 3);
    assert.deepEqual(await store.readLog("live", 0, 10), ["aé", "€€", "ü"]);
    assert.deepEqual(await store.readLog("done", 0, 10), ["done"]);
    const reader = new DatabaseSync(path.join(legacy, "gateway.db"));
    assert.deepEqual(
      reader
        .prepare("SELECT id, log_bytes FROM runs ORDER BY seq")
        .all()
        .map((r) => ({ ...r })),
      [
        { id: "live", log_bytes: 11 },
        { id: "done", log_bytes: 0 },
      ],
    );
    const { user_version } = reader.prepare("PRAGMA user_version").get() as { user_version: number };
    reader.close();
    assert.equal(user_version, 3);
  });

  it("refuses a database of a newer gateway, naming it", async () => {
    await store.close();
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(path.join(dir, "gateway.db"));
    db.exec("PRAGMA user_version = 99");
    db.close();
    assert.throws(() => new SqliteStore(dir), /gateway\.db is of a newer gateway \(schema 99/);
    store = new SqliteStore(scratchDir("store-"));
  });
});
