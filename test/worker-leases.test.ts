import assert from "node:assert/strict";
import { randomUUID, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { launcherSettings } from "../agent/config/launcher";
import { launcherRole } from "../agent/launcher/launcher";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway, type GatewayOptions } from "../gateway/gateway";
import { createPool, type PoolDefinition } from "../gateway/pools";
import { SqliteStore } from "../gateway/sqlite-store";
import { decodeToken, encodeToken } from "../protocol/token";
import {
  FENCE_HEADER,
  MAX_LOG_BYTES,
  PROOF_HEADER,
  proofPayload,
  statePath,
  WORKER_HEADER,
  type HeldLease,
  type ToWorker,
} from "../protocol/worker";
import { capturingLogger, eventually, freePort, rawRequest, scratchDir, serviceKey } from "../devkit/helpers";
import { POOL_HEADER } from "../protocol/link";
import { privateKeyFromBase64 } from "../protocol/seal";
import { FakeLauncher, type PoolCredentials } from "./fake-launcher";

const service = serviceKey();
/** The runs these tests submit are this key's: it reads them through the API too. */
const OWNER = service.definition.id;

const POOL = "proto";

/** A pool's definition, its credentials, and gateways on loopback to test it against. */
async function workerPool() {
  const made = await makePoolKeyAndRequest(POOL);
  const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL);
  const created = createPool(POOL, "worker", "http://127.0.0.1:1", certificate);
  const { secret } = decodeToken(created.token);
  return { pool: created.pool as PoolDefinition, token: created.token, secret, keyBase64: made.keyBase64 };
}

async function startGateway(pool: PoolDefinition, port: number, options: Partial<GatewayOptions> = {}) {
  const logger = capturingLogger("gateway", Boolean(process.env.DEBUG_GW));
  const gateway = new Gateway({ keys: [service.definition], pools: [pool], port, log: logger.log, ...options });
  await gateway.listen();
  return { gateway, lines: logger.lines };
}

/**
 * A fake launcher that behaves as a real one from now on: accepts offers, runs (completes)
 * what it is told to start unless it started it already, and sends again what it has of a run
 * it started. `ran` records each execution; a launcher and its reconnection share it.
 */
function auto(launcher: FakeLauncher, ran: Set<string> = new Set()): FakeLauncher {
  const act = (message: ToWorker) => {
    if (message.type === "run") launcher.send({ type: "accepted", id: message.run.id, fence: message.lease.fence });
    else if (message.type === "start") {
      if (!ran.has(message.id)) executions.push(message.id);
      ran.add(message.id);
      // Its log and outcome (again, for a run it had started: the gateway keeps one of each).
      launcher.complete(message.id, message.fence, `ran on ${launcher.id.slice(0, 8)}`);
    }
  };
  for (const message of launcher.received) act(message);
  launcher.on("message", act);
  return launcher;
}

/** Every start a fake launcher acted on, by run: the number of executions. */
const executions: string[] = [];
const executed = (run: string) => executions.filter((id) => id === run).length;

const finished = (gateway: Gateway, id: string, ms = 5000) =>
  eventually(
    async () => {
      const run = await gateway.workers.get(POOL, id, OWNER);
      return !["queued", "running"].includes(run.status) && run;
    },
    ms,
    `run ${id} to end`,
  );

describe("worker runs: exactly once, under leases", function () {
  this.timeout(30_000);
  let fixture: Awaited<ReturnType<typeof workerPool>>;
  const open: { close(): unknown }[] = [];
  before(async () => (fixture = await workerPool()));
  afterEach(async () => {
    for (const thing of open.splice(0)) await thing.close();
  });

  const credentials = (port: number): PoolCredentials => ({
    url: `http://127.0.0.1:${port}`,
    pool: POOL,
    secret: fixture.secret,
    keyBase64: fixture.keyBase64,
  });
  async function launcher(port: number, id?: string, leases: HeldLease[] = []) {
    const fake = await FakeLauncher.connect(credentials(port), id, leases);
    open.push({ close: () => fake.socket.close() });
    return fake;
  }
  async function gatewayOn(port: number, dataDir: string, options: Partial<GatewayOptions> = {}) {
    const started = await startGateway(fixture.pool, port, { dataDir, ...options });
    open.push(started.gateway);
    return started;
  }

  it("a run's state is read only by the launcher holding a run that starts from it, under that run's fence", async () => {
    const port = await freePort();
    const { gateway } = await gatewayOn(port, scratchDir("lease-"));
    const l1 = await launcher(port);
    const state = (id: string, worker: string, fence: number, method = "GET", body?: string) => {
      const timestamp = String(Date.now());
      const proof = sign("sha256", proofPayload(POOL, timestamp), privateKeyFromBase64(fixture.keyBase64));
      return rawRequest(`http://127.0.0.1:${port}`, statePath(POOL, id), {
        method,
        body,
        headers: {
          authorization: `Bearer ${fixture.secret}`,
          [POOL_HEADER]: POOL,
          [WORKER_HEADER]: worker,
          [PROOF_HEADER]: `${timestamp}.${proof.toString("base64url")}`,
          [FENCE_HEADER]: String(fence),
        },
      });
    };
    const first = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const offer = await l1.next("run");
    l1.send({ type: "accepted", id: first.id, fence: offer.lease.fence });
    await l1.next("start");
    assert.equal((await state(first.id, l1.id, offer.lease.fence, "PUT", "sealed-state-bytes")).status, 204);
    l1.send({ type: "finished", id: first.id, fence: offer.lease.fence, status: "succeeded", state: true });
    assert.equal((await finished(gateway, first.id)).state, true);

    // The pool's credentials alone (its launcher, holding no run that starts from it) read nothing.
    const idle = await state(first.id, l1.id, offer.lease.fence);
    assert.deepEqual([idle.status, idle.body.includes("sealed-state-bytes")], [404, false]);
    const next = await gateway.workers.submit(
      POOL,
      { image: "alpine:3", commands: ["plan"], stateFrom: first.id },
      OWNER,
    );
    const held = await l1.next("run", (m) => m.run.id === next.id);
    l1.send({ type: "accepted", id: next.id, fence: held.lease.fence });
    await l1.next("start", (m) => m.id === next.id);
    const other = await state(first.id, randomUUID(), held.lease.fence);
    assert.deepEqual([other.status, other.body.includes("sealed-state-bytes")], [404, false], "another launcher");
    assert.deepEqual((await state(first.id, l1.id, held.lease.fence + 1)).status, 404, "another fence");
    const read = await state(first.id, l1.id, held.lease.fence);
    assert.deepEqual([read.status, read.body], [200, "sealed-state-bytes"]);
  });

  // The gateway crashes somewhere between handing run R to launcher L1 and L1 running it; then
  // L1 (holding what it holds) and an idle L2 come back, in either order. R must run exactly once.
  const crashes: { after: string; l1: "silent" | "accepts" | "starts"; holds: boolean }[] = [
    { after: "the offer reached L1, whose acceptance was lost", l1: "silent", holds: true },
    { after: "the lease was stored, the offer never reached L1", l1: "silent", holds: false },
    { after: "the acceptance was stored, before start reached L1", l1: "accepts", holds: true },
    { after: "L1 started the run", l1: "starts", holds: true },
  ];
  for (const crash of crashes) {
    for (const order of ["L1 back first", "L2 connects first"] as const) {
      it(`a gateway crash after ${crash.after}, ${order}: the run runs once`, async () => {
        const port = await freePort();
        const dataDir = scratchDir("lease-");
        let { gateway } = await gatewayOn(port, dataDir);
        const l1 = await launcher(port);
        const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
        const offer = await l1.next("run");
        const fence = offer.lease.fence;
        const ran = new Set<string>();
        if (crash.l1 !== "silent") l1.send({ type: "accepted", id: run.id, fence });
        if (crash.l1 === "starts") {
          await l1.next("start");
          ran.add(run.id);
          executions.push(run.id);
        }
        if (crash.l1 === "accepts") {
          // L1 reads nothing more: the start the gateway sends does not reach it.
          l1.freeze();
          await eventually(async () => (await gateway.workers.get(POOL, run.id, OWNER)).status === "running");
        }
        // The crash: nothing more is stored; every connection is cut.
        await gateway.close();
        ({ gateway } = await gatewayOn(port, dataDir));

        const l1Back = async () => auto(await launcher(port, l1.id, crash.holds ? [{ id: run.id, fence }] : []), ran);
        let back: FakeLauncher;
        let l2: FakeLauncher;
        if (order === "L1 back first") {
          back = await l1Back();
          await back.next("start", (m) => m.id === run.id);
          l2 = auto(await launcher(port));
        } else {
          // L2 is handed the queue's head once it has said hello: R if R were free (it is the older), else a probe.
          l2 = auto(await launcher(port));
          const probe = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["probe"] }, OWNER);
          assert.equal((await l2.next("run")).run.id, probe.id, "L2 is not handed R");
          back = await l1Back();
        }
        const done = await finished(gateway, run.id);
        assert.equal(executed(run.id), 1, "run exactly once, by one launcher");
        assert.equal(l2.count("run", run.id), 0, "L2 was never handed R");
        assert.equal(done.status, "succeeded");
        assert.equal(done.worker, l1.id, "the launcher holding the lease ran it");
      });
    }
  }

  it("L1 never comes back: an offer it did not start goes to L2 once the lease expires; L1 returning late is refused", async () => {
    const port = await freePort();
    const dataDir = scratchDir("lease-");
    let { gateway } = await gatewayOn(port, dataDir);
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await l1.next("run");
    await gateway.close();
    ({ gateway } = await gatewayOn(port, dataDir, { leaseMs: 150 }));
    const l2 = auto(await launcher(port));
    await l2.next("start", (m) => m.id === run.id);
    assert.equal((await finished(gateway, run.id)).worker, l2.id);
    const late = await launcher(port, l1.id, [{ id: run.id, fence: lease.fence }]);
    const revoked = await late.next("revoked");
    assert.equal(revoked.id, run.id);
    assert.match(revoked.reason, /given to another launcher/);
    assert.equal(late.count("start", run.id), 0);
  });

  it("L1 never comes back after starting: the run is lost once its lease expires, never run again", async () => {
    const port = await freePort();
    const { gateway, lines } = await gatewayOn(port, scratchDir("lease-"), { leaseMs: 150 });
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await l1.next("run");
    l1.send({ type: "accepted", id: run.id, fence: lease.fence });
    await l1.next("start");
    l1.drop();
    const l2 = auto(await launcher(port));
    const lost = await finished(gateway, run.id);
    assert.equal(lost.status, "lost");
    assert.match(lost.reason ?? "", /stopped renewing its lease \(150 ms\)/);
    assert.equal(l2.count("run", run.id), 0, "a started run is never handed to another launcher");
    assert.ok(lines.some((l) => l.msg === "a lease expired" && l.run === run.id));
  });

  it("a network drop right after the offer: L2 is not handed the run; L1 reconnects with it and runs it", async () => {
    const port = await freePort();
    const { gateway } = await gatewayOn(port, scratchDir("lease-"));
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await l1.next("run");
    l1.drop();
    await eventually(() => gateway.workers.summary(POOL).connections === 0);
    const l2 = auto(await launcher(port));
    const probe = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["probe"] }, OWNER);
    assert.equal((await l2.next("run")).run.id, probe.id, "R is held by L1's lease");
    const back = auto(await launcher(port, l1.id, [{ id: run.id, fence: lease.fence }]));
    assert.equal((await finished(gateway, run.id)).worker, l1.id);
    assert.equal(back.count("start", run.id) + l2.count("start", run.id), 1);
  });

  it("renewals keep a running run's lease past its term; without them it is lost and the launcher told so", async () => {
    const port = await freePort();
    const { gateway } = await gatewayOn(port, scratchDir("lease-"), { leaseMs: 400 });
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await l1.next("run");
    l1.send({ type: "accepted", id: run.id, fence: lease.fence });
    await l1.next("start");
    // Renew with every log line the gateway takes, for two and a half terms.
    const until = Date.now() + 1000;
    for (let line = 0; Date.now() < until; line++) {
      l1.send({ type: "renew", leases: [{ id: run.id, fence: lease.fence }] });
      l1.send({ type: "log", id: run.id, fence: lease.fence, from: line, lines: [`line ${line}`] });
      await eventually(async () => (await gateway.workers.get(POOL, run.id, OWNER)).logLines === line + 1);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal((await gateway.workers.get(POOL, run.id, OWNER)).status, "running");
    const revoked = await l1.next("revoked", (m) => m.id === run.id);
    assert.match(revoked.reason, /stopped renewing/);
    assert.equal((await gateway.workers.get(POOL, run.id, OWNER)).status, "lost");
    // Its late outcome changes nothing.
    l1.complete(run.id, lease.fence);
    await l1.next("revoked", (m) => m.id === run.id && l1.count("revoked", run.id) > 1);
    assert.equal((await gateway.workers.get(POOL, run.id, OWNER)).status, "lost");
  });

  it("fencing: a launcher whose lease ended writes nothing into the run that replaced it", async () => {
    const port = await freePort();
    const dataDir = scratchDir("lease-");
    let { gateway } = await gatewayOn(port, dataDir);
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease: old } = await l1.next("run");
    await gateway.close();
    ({ gateway } = await gatewayOn(port, dataDir, { leaseMs: 600 }));
    const l2 = await launcher(port);
    const { lease } = await l2.next("run");
    assert.ok(lease.fence > old.fence);
    l2.send({ type: "accepted", id: run.id, fence: lease.fence });
    await l2.next("start");
    // L2 renews as a launcher does, every third of the term.
    const renewing = setInterval(() => l2.send({ type: "renew", leases: [{ id: run.id, fence: lease.fence }] }), 100);
    open.push({ close: () => clearInterval(renewing) });
    // L1 comes back with its old fence and tries everything.
    const stale = await launcher(port, l1.id, [{ id: run.id, fence: old.fence }]);
    await stale.next("revoked");
    stale.send({ type: "log", id: run.id, fence: old.fence, from: 0, lines: ["forged"] });
    stale.send({ type: "finished", id: run.id, fence: old.fence, status: "failed", exitCode: 1, state: false });
    stale.send({ type: "accepted", id: run.id, fence: old.fence });
    await stale.next("revoked", () => stale.count("revoked", run.id) >= 3);
    l2.complete(run.id, lease.fence, "genuine");
    const done = await finished(gateway, run.id);
    assert.equal(done.status, "succeeded");
    assert.equal(done.worker, l2.id);
    const log = await (
      await fetch(`http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs/${run.id}/logs`, {
        headers: service.headers,
      })
    ).text();
    assert.equal(log, "genuine\n");
  });

  it(`a hostile launcher's log stops at ${MAX_LOG_BYTES >> 20} MiB in the store: the line that crosses it is the last kept`, async () => {
    const port = await freePort();
    const store = new SqliteStore();
    const { gateway } = await gatewayOn(port, scratchDir("log-bytes-"), { store });
    open.push(store);
    const l1 = await launcher(port);
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await l1.next("run");
    l1.send({ type: "accepted", id: run.id, fence: lease.fence });
    await l1.next("start");
    // Lines of 6 MiB of three-byte characters (2 Mi UTF-16 code units), one a message: far within the line cap, and
    // 48 MiB in all. An honest launcher would have cut the log at its cap; this one goes on.
    const body = "€".repeat(2 * 1024 * 1024);
    const sent = Array.from({ length: 8 }, (_, i) => `${i}${body}`);
    sent.forEach((line, i) => l1.send({ type: "log", id: run.id, fence: lease.fence, from: i, lines: [line] }));
    l1.send({ type: "finished", id: run.id, fence: lease.fence, status: "succeeded", exitCode: 0, state: false });
    // Its messages are handled in order: once the outcome is in, every line was stored or dropped.
    const done = await finished(gateway, run.id, 20_000);
    const kept = await store.readLog(run.id, 0, sent.length);
    assert.equal(done.logLines, kept.length);
    assert.ok(kept.length < sent.length, `${kept.length} of ${sent.length} lines kept`);
    assert.ok(
      kept.every((line, i) => line === sent[i]),
      "the first lines, whole",
    );
    const bytes = kept.map((line) => Buffer.byteLength(line));
    const before = bytes.slice(0, -1).reduce((sum, n) => sum + n, 0);
    assert.ok(before <= MAX_LOG_BYTES, `${before} bytes before the last line kept`);
    assert.ok(before + bytes.at(-1)! > MAX_LOG_BYTES, "the last line kept is the one that crosses the cap");
  });

  it("a launcher that stops answering pings is dropped; the run it was offered goes to another once the lease expires", async () => {
    const port = await freePort();
    const { gateway, lines } = await gatewayOn(port, scratchDir("lease-"), {
      leaseMs: 300,
      pingIntervalMs: 50,
      pingTimeoutMs: 1000,
    });
    const hung = auto(await launcher(port));
    // It has run one: it is a launcher the gateway hands runs to.
    await finished(gateway, (await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["first"] }, OWNER)).id);
    hung.freeze();
    const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["apply"] }, OWNER);
    await eventually(
      async () => (await gateway.workers.get(POOL, run.id, OWNER)).worker === hung.id,
      2000,
      "the run offered to the hung launcher, the only one",
    );
    await eventually(() => gateway.workers.summary(POOL).connections === 0, 5000, "the hung launcher dropped");
    assert.ok(lines.some((l) => l.msg === "worker stopped answering pings: disconnected" && l.worker === hung.id));
    const other = auto(await launcher(port));
    await other.next("start", (m) => m.id === run.id);
    assert.equal((await finished(gateway, run.id)).worker, other.id);
  });

  it("idle launchers take turns: the least recently used gets the next run, not the first connected", async () => {
    const port = await freePort();
    const { gateway } = await gatewayOn(port, scratchDir("lease-"));
    const launchers = [auto(await launcher(port)), auto(await launcher(port)), auto(await launcher(port))];
    await eventually(() => gateway.workers.summary(POOL).connections === 3);
    const ran: string[] = [];
    for (let i = 0; i < 6; i++) {
      const run = await gateway.workers.submit(POOL, { image: "alpine:3", commands: [`run ${i}`] }, OWNER);
      ran.push((await finished(gateway, run.id)).worker as string);
    }
    for (const l of launchers)
      assert.equal(ran.filter((w) => w === l.id).length, 2, `runs per launcher: ${ran.map((w) => w.slice(0, 4))}`);
  });

  it("a gateway start loads only live runs: 20,000 finished ones stay in the store until asked for", async () => {
    const port = await freePort();
    const dataDir = scratchDir("lease-");
    let { gateway } = await gatewayOn(port, dataDir);
    const live = await gateway.workers.submit(POOL, { image: "alpine:3", commands: ["still queued"] }, OWNER);
    await gateway.close();
    // 20,000 finished runs written straight into the database, as a long-lived gateway would leave them.
    const { DatabaseSync } = await import("node:sqlite");
    const db = new DatabaseSync(path.join(dataDir, "gateway.db"));
    db.exec("BEGIN");
    const insert = db.prepare(
      "INSERT INTO runs (id, pool, spec, owner, status, exit_code, worker, fence, log_lines, created_at, started_at, finished_at) VALUES (?, ?, ?, ?, 'succeeded', 0, ?, 1, 0, ?, ?, ?)",
    );
    const spec = JSON.stringify({ image: "alpine:3", commands: ["terraform apply -auto-approve ".repeat(20)] });
    const at = new Date().toISOString();
    const ids: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      ids.push(randomUUID());
      insert.run(ids[i], POOL, spec, OWNER, randomUUID(), at, at, at);
    }
    db.exec("COMMIT");
    db.close();
    ({ gateway } = await gatewayOn(port, dataDir, { retention: { runsPerKey: 100_000 } }));
    assert.equal(gateway.workers.liveRuns, 1, "only the queued run is in memory");
    assert.equal(gateway.workers.summary(POOL).queued, 1);
    // Past runs are still there, read from the store when asked for.
    assert.equal((await gateway.workers.get(POOL, ids[12_345], OWNER)).status, "succeeded");
    const page = (await (
      await fetch(`http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs?limit=3`, { headers: service.headers })
    ).json()) as { runs: { id: string }[] };
    assert.deepEqual(
      page.runs.map((r) => r.id),
      [ids[19_999], ids[19_998], ids[19_997]],
    );
    assert.equal((await gateway.workers.get(POOL, live.id, OWNER)).status, "queued");
  });

  it("retention: a start deletes finished runs beyond the pool's count, with their logs", async () => {
    const port = await freePort();
    const dataDir = scratchDir("lease-");
    const { gateway, lines } = await gatewayOn(port, dataDir, {
      retention: { runsPerKey: 2 },
      pruneIntervalMs: 60_000,
    });
    auto(await launcher(port));
    const runs = [];
    for (let i = 0; i < 4; i++)
      runs.push(
        await finished(
          gateway,
          (await gateway.workers.submit(POOL, { image: "alpine:3", commands: [`run ${i}`] }, OWNER)).id,
        ),
      );
    await gateway.workers.prune();
    assert.ok(lines.some((l) => l.msg === "finished runs deleted by the retention policy" && l.deleted === 2));
    await assert.rejects(gateway.workers.get(POOL, runs[0].id, OWNER), { status: 404 });
    assert.equal((await gateway.workers.get(POOL, runs[3].id, OWNER)).status, "succeeded");
  });
});

describe("worker runs: a real launcher through a connection that drops right after the offer", function () {
  this.timeout(30_000);

  it("runs the job once: the launcher cut off keeps its lease and runs it on its return; the other never gets it", async () => {
    const fixture = await workerPool();
    const dir = scratchDir("drop-");
    const port = await freePort();
    const { gateway } = await startGateway(fixture.pool, port, { dataDir: path.join(dir, "gw") });
    // L1 reaches the gateway through a proxy that cuts the connection once, right after a run offer passes.
    let armed = true;
    const proxy = net.createServer((client) => {
      const upstream = net.connect(port, "127.0.0.1");
      client.pipe(upstream);
      upstream.on("data", (chunk: Buffer) => {
        if (armed && chunk.includes('"type":"run"')) {
          armed = false;
          client.end(chunk);
          upstream.destroy();
        } else client.write(chunk);
      });
      upstream.on("close", () => client.destroy());
      client.on("close", () => upstream.destroy());
      client.on("error", () => undefined);
      upstream.on("error", () => undefined);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const decoded = decodeToken(fixture.token);
    const tokenFor = (url: string) => encodeToken({ ...decoded, gateway: url });
    const start = (url: string, name: string) =>
      launcherRole().start(
        launcherSettings.parse({
          token: tokenFor(url),
          poolPrivateKey: fixture.keyBase64,
          executor: "process",
          workDirectory: path.join(dir, name),
        }),
        { log: capturingLogger(name).log, env: { PATH: process.env.PATH } },
      );
    const l1 = await start(`http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, "l1");
    await l1.ready;
    await eventually(() => gateway.workers.summary(POOL).connections === 1);
    const l2 = await start(`http://127.0.0.1:${port}`, "l2");
    await l2.ready;
    await eventually(() => gateway.workers.summary(POOL).connections === 2);
    try {
      const ledger = path.join(dir, "executions");
      const run = await gateway.workers.submit(
        POOL,
        {
          image: "alpine:3",
          commands: [`echo "$AGENTPOOLS_RUN_ID" >> ${ledger}`],
        },
        OWNER,
      );
      const done = await finished(gateway, run.id, 10_000);
      assert.equal(armed, false, "the connection was cut after the offer");
      assert.equal(done.status, "succeeded");
      // Both launchers connected and idle again: any second execution would have happened by now.
      await eventually(
        () => {
          const { connections, agents } = gateway.workers.summary(POOL);
          return connections === 2 && agents.every((a) => !a.currentRun);
        },
        10_000,
        "both launchers idle",
      );
      assert.deepEqual(readFileSync(ledger, "utf8").trim().split("\n"), [run.id], "executed exactly once");
    } finally {
      await l1.drain(Date.now() + 1000);
      await l2.drain(Date.now() + 1000);
      proxy.close();
      await gateway.close();
    }
  });
});
