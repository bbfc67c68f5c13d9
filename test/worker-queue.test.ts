import assert from "node:assert/strict";
import { Gateway } from "../gateway/gateway";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";

const POOL = "01QUEUED";

/**
 * A worker pool's queue is shared by the service keys that submit to it: bounded, no key holding more than its
 * share, and a key removed while its runs wait gets none of them run. (No launcher is connected: runs stay queued.)
 */
describe("worker runs: the queue's bound, each key's share, a removed key's runs", function () {
  this.timeout(30_000);
  it("beyond its share a key gets 503, another key is still queued; once removed, its queued runs end refused and never start", async () => {
    const made = await makePoolKeyAndRequest(POOL);
    const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const [a, b] = [serviceKey("a"), serviceKey("b")];
    const gateway = new Gateway({
      pools: [createPool(POOL, "worker", url, certificate).pool],
      keys: [a.definition, b.definition],
      port,
      log: capturingLogger("gateway").log,
      maxQueued: 4, // a key's share: 3
    });
    await gateway.listen();
    const runs = `${url}/_agentpools/api/workers/${POOL}/runs`;
    const submit = async (key: typeof a) => {
      const response = await fetch(runs, {
        method: "POST",
        headers: { ...key.headers, "content-type": "application/json" },
        body: JSON.stringify({ image: "alpine:3", commands: ["echo queued"] }),
      });
      const body = (await response.json()) as { id: string; error?: string };
      return { status: response.status, retryAfter: response.headers.get("retry-after"), body };
    };
    // A's key is removed meanwhile: no key reads its runs through the API any more, the gateway still holds them.
    const status = (id: string, key = a) => gateway.workers.get(POOL, id, key.definition.id);
    try {
      const ofA = [await submit(a), await submit(a), await submit(a)];
      assert.deepEqual(
        ofA.map((r) => r.status),
        [201, 201, 201],
      );
      const over = await submit(a);
      assert.deepEqual([over.status, over.retryAfter], [503, "2"]);
      assert.match(String(over.body.error), /this key holds its share of pool 01QUEUED's queue/);
      const ofB = await submit(b);
      assert.equal(ofB.status, 201, "another key is queued beside it");
      const full = await submit(b);
      assert.deepEqual([full.status, full.body.error], [503, "pool 01QUEUED has 4 runs queued"]);

      gateway.setKeys([b.definition]);
      for (const { body } of ofA)
        await eventually(async () => (await status(body.id)).status === "refused", 5000, "the removed key's run ended");
      assert.equal((await status(ofA[0].body.id)).reason, "the service key no longer allows pool 01QUEUED");
      assert.equal((await status(ofB.body.id, b)).status, "queued", "the other key's run still waits");
      assert.equal((await submit(b)).status, 201, "the queue has room again");
    } finally {
      await gateway.close();
    }
  });
});
