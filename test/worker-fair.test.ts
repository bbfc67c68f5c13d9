import assert from "node:assert/strict";
import http from "node:http";
import { createServiceKey } from "../gateway/auth";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool, type PoolDefinition } from "../gateway/pools";
import { decodeToken } from "../protocol/token";
import type { ToWorker } from "../protocol/worker";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";
import { FakeLauncher } from "./fake-launcher";

const POOL = "shared";
type Offer = Extract<ToWorker, { type: "run" }>;

/**
 * A worker pool shared by two service keys, a and b, as each would attack the other: a queues many long runs first
 * and must not hold every launcher while b waits; a follow stream or a POST under a rotated secret must get nothing
 * more; the pools listing must not show one key the other's run ids. Launchers are fakes: each run ends when the
 * test says.
 */
describe("worker pools shared by several keys: fair dispatch, rotation, listing", function () {
  this.timeout(30_000);
  let fixture: { pool: PoolDefinition; secret: string; keyBase64: string };
  const [a, b] = [serviceKey("a"), serviceKey("b")];
  const open: { close(): unknown }[] = [];
  before(async () => {
    const made = await makePoolKeyAndRequest(POOL);
    const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL);
    const created = createPool(POOL, "worker", "http://127.0.0.1:1", certificate);
    fixture = { pool: created.pool, secret: decodeToken(created.token).secret, keyBase64: made.keyBase64 };
  });
  afterEach(async () => {
    for (const thing of open.splice(0).reverse()) await thing.close();
  });

  async function gatewayOn(port: number, dataDir?: string) {
    const gateway = new Gateway({
      keys: [a.definition, b.definition],
      pools: [fixture.pool],
      port,
      dataDir,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
    open.push(gateway);
    return gateway;
  }
  /** A launcher that accepts every offer and then runs until the test completes the run. */
  async function launcher(port: number, id?: string, leases: { id: string; fence: number }[] = []) {
    const url = `http://127.0.0.1:${port}`;
    const fake = await FakeLauncher.connect(
      { url, pool: POOL, secret: fixture.secret, keyBase64: fixture.keyBase64 },
      id,
      leases,
    );
    fake.on("message", (m: ToWorker) => {
      if (m.type === "run") fake.send({ type: "accepted", id: m.run.id, fence: m.lease.fence });
    });
    open.push({ close: () => fake.socket.close() });
    return fake;
  }
  /** The next offer a launcher gets after the `seen` it had. */
  const offerAfter = (fake: FakeLauncher, seen: number) =>
    eventually(() => fake.received.filter((m): m is Offer => m.type === "run")[seen], 5000, "an offer");
  const submit = (gateway: Gateway, key: typeof a, command = "sleep 86400") =>
    gateway.workers.submit(POOL, { image: "alpine:3", commands: [command], timeoutSeconds: 86_400 }, key.definition.id);

  it("a's long runs queued first hold no more than its share: b's run goes to the next free launcher", async () => {
    const port = await freePort();
    const gateway = await gatewayOn(port);
    const [l1, l2] = [await launcher(port), await launcher(port)];
    await eventually(() => gateway.workers.summary(POOL).connections === 2);
    const ofA = [];
    for (let i = 0; i < 4; i++) ofA.push(await submit(gateway, a));
    // Alone, a may use every launcher.
    const [o1, o2] = [await offerAfter(l1, 0), await offerAfter(l2, 0)];
    assert.deepEqual(new Set([o1.run.id, o2.run.id]), new Set([ofA[0].id, ofA[1].id]), "a's two oldest, one each");
    const ofB = await submit(gateway, b);
    await l1.next("start", (m) => m.id === o1.run.id);
    l1.complete(o1.run.id, o1.lease.fence);
    assert.equal((await offerAfter(l1, 1)).run.id, ofB.id, "b's run, not a's third, on the launcher a freed");

    // The listing shows each key only its own run ids; the counts are the pool's.
    const listing = (key: typeof a) => gateway.summary(key.definition).find((p) => p.name === POOL)!;
    const runsShown = (key: typeof a) =>
      listing(key)
        .agents.map((agent) => ("currentRun" in agent ? agent.currentRun : undefined))
        .filter(Boolean);
    assert.deepEqual(runsShown(a), [o2.run.id]);
    assert.deepEqual(runsShown(b), [ofB.id]);
    assert.equal(listing(b).activeRequests, 2);

    // b's run done and only a left waiting: a takes the launcher again, its oldest first.
    l1.complete(ofB.id, (await offerAfter(l1, 1)).lease.fence);
    assert.equal((await offerAfter(l1, 2)).run.id, ofA[2].id);
    assert.equal(l2.received.filter((m) => m.type === "run").length, 1, "l2 still holds a's second run only");
  });

  it("one launcher: keys take turns (a queued four runs first, b's one run goes second, not fifth)", async () => {
    const port = await freePort();
    const gateway = await gatewayOn(port);
    const only = await launcher(port);
    await eventually(() => gateway.workers.summary(POOL).connections === 1);
    const ofA = [];
    for (let i = 0; i < 4; i++) ofA.push(await submit(gateway, a));
    const first = await offerAfter(only, 0);
    assert.equal(first.run.id, ofA[0].id);
    const ofB = await submit(gateway, b);
    await only.next("start", (m) => m.id === first.run.id);
    only.complete(first.run.id, first.lease.fence);
    assert.equal((await offerAfter(only, 1)).run.id, ofB.id, "b's turn before a's second run");
  });

  it("after a restart the owners of running runs come from the store: b's queued run still goes before a's", async () => {
    const port = await freePort();
    const dataDir = scratchDir("fair-");
    let gateway = await gatewayOn(port, dataDir);
    const l1 = await launcher(port);
    const a1 = await submit(gateway, a);
    const offer = await offerAfter(l1, 0);
    await l1.next("start", (m) => m.id === a1.id);
    const a2 = await submit(gateway, a);
    const b1 = await submit(gateway, b);
    await gateway.close();
    gateway = await gatewayOn(port, dataDir);
    const back = await launcher(port, l1.id, [{ id: a1.id, fence: offer.lease.fence }]);
    await back.next("start", (m) => m.id === a1.id);
    const l2 = await launcher(port);
    assert.equal((await offerAfter(l2, 0)).run.id, b1.id, "b's run, though a's second is older");
    assert.equal((await gateway.workers.get(POOL, a2.id, a.definition.id)).status, "queued");
  });

  describe("rotate-key ends what is in flight under the old secret", () => {
    const rotate = (gateway: Gateway) => {
      const fresh = createServiceKey("a");
      const definition = { ...fresh.definition, id: a.definition.id };
      gateway.setKeys([definition, b.definition]);
      return { "x-agentpools-key": `apk1.${a.definition.id}.${fresh.key.split(".")[2]}` };
    };

    it("a log follow stream opened with the old secret is cut at the rotation: none of the run's later lines", async () => {
      const port = await freePort();
      const gateway = await gatewayOn(port);
      const l1 = await launcher(port);
      const run = await submit(gateway, a);
      const { lease } = await offerAfter(l1, 0);
      await l1.next("start", (m) => m.id === run.id);
      l1.send({ type: "log", id: run.id, fence: lease.fence, from: 0, lines: ["before rotation"] });
      const url = `http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs/${run.id}/logs?follow=1`;
      let text = "";
      const ended = new Promise<string>((resolve) => {
        http.get(url, { headers: a.headers }, (res) => {
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => (text += chunk));
          res.once("end", () => resolve("ended"));
          res.once("error", () => resolve("cut"));
          res.once("aborted", () => resolve("cut"));
        });
      });
      await eventually(() => text.includes("before rotation"), 5000, "the first line");
      const headers = rotate(gateway);
      assert.equal(await ended, "cut", "cut, not ended as a finished run's log would be");
      l1.send({ type: "log", id: run.id, fence: lease.fence, from: 1, lines: ["after rotation"] });
      // The new secret reads the later line: it was stored, and still never reached the old stream.
      const logs = `http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs/${run.id}/logs`;
      await eventually(async () => (await (await fetch(logs, { headers })).text()).includes("after rotation"));
      assert.equal(text, "before rotation\n");
    });

    it("a POST whose body is still coming when the key rotates is refused: no run is made", async () => {
      const port = await freePort();
      const gateway = await gatewayOn(port);
      const body = JSON.stringify({ image: "alpine:3", commands: ["echo leaked"] });
      const answer = new Promise<{ status?: number; text: string }>((resolve, reject) => {
        const req = http.request(
          `http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs`,
          { method: "POST", headers: { ...a.headers, "content-type": "application/json" } },
          (res) => {
            let text = "";
            res.on("data", (chunk) => (text += chunk));
            res.once("end", () => resolve({ status: res.statusCode, text }));
          },
        );
        req.once("error", reject);
        // Rotated once the gateway has the request (its key checked then), while its body is still coming.
        const server = (gateway as unknown as { server: http.Server }).server;
        server.once("request", () =>
          setImmediate(() => {
            headers = rotate(gateway);
            req.end(body.slice(10));
          }),
        );
        req.write(body.slice(0, 10));
      });
      let headers: Record<string, string> = {};
      const { status } = await answer;
      assert.equal(status, 401);
      const listed = await fetch(`http://127.0.0.1:${port}/_agentpools/api/workers/${POOL}/runs`, { headers });
      assert.deepEqual(await listed.json(), { runs: [] });
      assert.equal(gateway.workers.liveRuns, 0);
    });
  });
});
