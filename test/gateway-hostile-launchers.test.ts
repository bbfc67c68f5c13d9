import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import type net from "node:net";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool, type PoolDefinition } from "../gateway/pools";
import { decodeToken } from "../protocol/token";
import { MAX_LEASES_PER_MESSAGE, type FromWorker, type ToWorker } from "../protocol/worker";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";
import { FakeLauncher, type PoolCredentials } from "./fake-launcher";

const service = serviceKey();
const OWNER = service.definition.id;

async function workerPool(name: string) {
  const made = await makePoolKeyAndRequest(name);
  const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, name);
  const created = createPool(name, "worker", "http://127.0.0.1:1", certificate);
  return { pool: created.pool as PoolDefinition, secret: decodeToken(created.token).secret, keyBase64: made.keyBase64 };
}

/** A message as a hostile launcher writes it: any shape. */
const sendRaw = (launcher: FakeLauncher, message: Record<string, unknown>) =>
  launcher.socket.send(JSON.stringify(message));

/** The bytes a launcher's side received, to read the gateway's close frame from. */
function received(launcher: FakeLauncher): Buffer[] {
  const chunks: Buffer[] = [];
  (launcher as unknown as { raw: net.Socket }).raw.on("data", (chunk: Buffer) => chunks.push(chunk));
  return chunks;
}

/**
 * Launchers that break the worker protocol: every lease they name is a lookup in the store and an answer, so the
 * gateway reads a bounded number of them from one message, and only those the store can be asked about.
 */
describe("hostile launchers at the gateway", function () {
  this.timeout(30_000);
  let gateway: Gateway;
  let noisy: PoolCredentials;
  let quiet: PoolCredentials;
  const captured = capturingLogger("gateway");

  before(async () => {
    const port = await freePort();
    const [a, b] = await Promise.all([workerPool("noisy"), workerPool("quiet")]);
    gateway = new Gateway({
      keys: [service.definition],
      pools: [a.pool, b.pool],
      port,
      dataDir: scratchDir("gw-"),
      log: captured.log,
    });
    await gateway.listen();
    const url = `http://127.0.0.1:${port}`;
    noisy = { url, pool: "noisy", secret: a.secret, keyBase64: a.keyBase64 };
    quiet = { url, pool: "quiet", secret: b.secret, keyBase64: b.keyBase64 };
  });
  after(() => gateway.close());

  /** A launcher connected and greeted (its hello handled: a run submitted now goes to it). */
  async function connect(pool: PoolCredentials): Promise<FakeLauncher> {
    const launcher = await FakeLauncher.connect(pool);
    await eventually(() => gateway.workers.summary(pool.pool).connections >= 1);
    return launcher;
  }

  /** A run of the pool held by this launcher, started: its id and fence. */
  async function started(launcher: FakeLauncher, pool: string) {
    const { id } = await gateway.workers.submit(pool, { image: "alpine:3", commands: ["apply"] }, OWNER);
    const { lease } = await launcher.next("run", (m) => m.run.id === id);
    launcher.send({ type: "accepted", id, fence: lease.fence });
    await launcher.next("start", (m) => m.id === id);
    return { id, fence: lease.fence };
  }

  const revoked = (launcher: FakeLauncher) => launcher.received.filter((m) => m.type === "revoked");
  const status = async (pool: string, id: string) => (await gateway.workers.get(pool, id, OWNER)).status;

  it(`a renew or hello naming more than ${MAX_LEASES_PER_MESSAGE} leases: the link is closed (1008), logged once, nothing answered; other pools are served`, async () => {
    const launcher = await connect(noisy);
    const other = await connect(quiet);
    const held = await started(launcher, "noisy");

    // At the bound, each lease is read: the held one renewed, each unknown one revoked.
    const unknown = Array.from({ length: MAX_LEASES_PER_MESSAGE - 1 }, () => ({ id: randomUUID(), fence: 1 }));
    launcher.send({ type: "renew", leases: [held, ...unknown] });
    await eventually(() => revoked(launcher).length === unknown.length, 5000, "the unknown leases revoked");

    // Past it: cut off, however many such messages came before the close.
    const bytes = received(launcher);
    const flood = { type: "renew", leases: Array.from({ length: 600 }, (_, i) => ({ id: `x${i}`, fence: 1 })) };
    for (let i = 0; i < 3; i++) sendRaw(launcher, flood);
    await eventually(() => !launcher.open, 5000, "the link closed");
    const closeFrame = Buffer.from([0x88, 0x02, 0x03, 0xf0]);
    assert.ok(Buffer.concat(bytes).includes(closeFrame), "closed with 1008 (policy violation)");
    assert.equal(revoked(launcher).length, unknown.length, "no lease of the flood answered");
    const warned = () => captured.lines.filter((l) => l.msg.startsWith("a launcher broke the protocol"));
    assert.equal(warned().length, 1);
    assert.deepEqual(
      { ...warned()[0], time: undefined, role: undefined },
      {
        time: undefined,
        role: undefined,
        level: "warn",
        msg: "a launcher broke the protocol (a second hello, or more leases than a launcher holds): disconnected",
        pool: "noisy",
        worker: launcher.id,
        message: "renew",
        leases: 600,
        max: MAX_LEASES_PER_MESSAGE,
      },
    );

    // A hello past the bound: the same (it presents nothing the gateway reads).
    const greeter = await FakeLauncher.connect(noisy, randomUUID(), flood.leases);
    await eventually(() => !greeter.open, 5000, "the hello's link closed");
    assert.equal(greeter.received.length, 0);
    assert.equal(warned().length, 2);
    assert.equal(warned()[1].message, "hello");

    // The other pool's launcher is served meanwhile, and the store holds the flood's ids nowhere.
    const run = await started(other, "quiet");
    other.complete(run.id, run.fence);
    await other.next("ack", (m) => m.id === run.id);
    assert.equal(await status("quiet", run.id), "succeeded");
    assert.equal(await status("noisy", held.id), "running", "the held run stands until its lease expires");
    await assert.rejects(gateway.workers.get("noisy", "x0", OWNER), /no run x0/);
    other.socket.close();
  });

  it("a second hello on one link (a pass over every live run each): the link is closed (1008), logged", async () => {
    const launcher = await connect(noisy);
    const closed = received(launcher);
    sendRaw(launcher, { type: "hello", leases: [] });
    await eventually(() => !launcher.open, 5000, "the link closed");
    assert.ok(Buffer.concat(closed).includes(Buffer.from([0x88, 0x02, 0x03, 0xf0])), "closed with 1008");
    const line = captured.lines.findLast((l) => l.msg.startsWith("a launcher broke the protocol"));
    assert.deepEqual([line?.message, line?.worker, line?.leases], ["hello", launcher.id, 0]);
  });

  it("a message holding more objects and lists than a Flows answer may (costly to parse, meaningless): the link closed, logged", async () => {
    const launcher = await connect(noisy);
    const closed = received(launcher);
    launcher.socket.send(`{"type":"log","id":"x","fence":1,"from":0,"lines":[${"{},".repeat(100_000)}{}]}`);
    await eventually(() => !launcher.open, 5000, "the link closed");
    assert.ok(Buffer.concat(closed).includes(Buffer.from([0x88, 0x02, 0x03, 0xf0])), "closed with 1008");
    const line = captured.lines.findLast((l) => l.msg.startsWith("a launcher broke the protocol"));
    assert.equal(line?.msg, "a launcher broke the protocol (a message over the caps of a value): disconnected");
    assert.match(line?.caps ?? "", /100000/);
  });

  it("nothing more is queued for a launcher while a message's worth waits to leave: it reads nothing, it gets nothing more", () => {
    let sent = 0;
    const hub = gateway.workers as unknown as { send(worker: unknown, message: ToWorker): void };
    const worker = (waiting: number) => ({ socket: { open: true, buffered: () => waiting, send: () => sent++ } });
    hub.send(worker(16 * 1024 * 1024), { type: "ack", id: "x" });
    assert.equal(sent, 0, "16 MiB waiting: dropped");
    hub.send(worker(16 * 1024 * 1024 - 1), { type: "ack", id: "x" });
    assert.equal(sent, 1, "under it: sent");
  });

  it("ids that are no strings and fences that are no safe integers, in every message: no answer, no error line, nothing stored", async () => {
    const launcher = await connect(noisy);
    const run = await started(launcher, "noisy");
    const errorsBefore = captured.lines.filter((l) => l.level === "error").length;
    const bad: Record<string, unknown>[] = [
      { id: { x: 1 }, fence: run.fence },
      { id: [run.id], fence: run.fence },
      { id: null, fence: run.fence },
      { id: run.id, fence: String(run.fence) },
      { id: run.id, fence: run.fence + 0.5 },
      { id: run.id, fence: 2 ** 53 },
    ];
    const messages: Record<string, unknown>[] = [];
    for (const lease of bad) {
      messages.push(
        { type: "renew", leases: [lease, 7, null] },
        { type: "accepted", ...lease },
        { type: "refused", ...lease, reason: "no", retry: false },
        { type: "log", ...lease, from: 0, lines: ["forged"] },
        { type: "finished", ...lease, status: "failed", exitCode: 1, state: false },
      );
    }
    messages.push({ type: "accepted" }, { type: "finished", status: "failed" }, { type: "renew", leases: [{}] });
    // Values String() and Number() would throw on, on the run it holds: no log, no refusal, no error line.
    const unconvertible = { toString: 0, valueOf: 0 };
    messages.push(
      { type: "log", ...run, from: 0, lines: [unconvertible] },
      { type: "log", ...run, from: unconvertible, lines: ["forged"] },
      { type: "log", ...run, from: 0, lines: [7] },
    );
    for (const message of messages) sendRaw(launcher, message);
    // Messages of one launcher are handled in order: once this one's answer comes, all before it were read.
    const marker = randomUUID();
    launcher.send({ type: "renew", leases: [{ id: marker, fence: 1 }] } satisfies FromWorker);
    await launcher.next("revoked", (m) => m.id === marker);
    const answers = launcher.received.filter((m: ToWorker) => m.type !== "run" && m.type !== "start");
    assert.deepEqual(answers, [{ type: "revoked", id: marker, reason: "the gateway does not know this run" }]);
    assert.equal(captured.lines.filter((l) => l.level === "error").length, errorsBefore, "no error line");
    assert.equal(await status("noisy", run.id), "running");
    assert.equal((await gateway.workers.get("noisy", run.id, OWNER)).logLines, 0, "no forged line stored");

    // The launcher's own messages, well formed, are read as ever.
    launcher.complete(run.id, run.fence);
    await launcher.next("ack", (m) => m.id === run.id);
    assert.equal(await status("noisy", run.id), "succeeded");
    launcher.socket.close();
  });
});
