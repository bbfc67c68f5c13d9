import assert from "node:assert/strict";
import { Gateway } from "../gateway/gateway";
import { METRICS_PATH } from "../gateway/metrics";
import { createPool } from "../gateway/pools";
import { capturingLogger, freePort, serviceKey } from "../devkit/helpers";

/**
 * The gateway's Prometheus endpoint, as a client without the right key sees it: it is the
 * service side, so it takes a service key like the rest, and a key limited to some pools
 * learns nothing of the others (not even their names).
 */
describe("gateway /metrics (Prometheus): per-pool queued work, connected and busy agents", () => {
  let gateway: Gateway;
  let base: string;
  const all = serviceKey("prometheus");
  const gitOnly = serviceKey("git-scaler", ["git"]);

  before(async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    gateway = new Gateway({
      pools: [createPool("git", "vcs", url).pool, createPool("secret-project", "flows", url).pool],
      keys: [all.definition, gitOnly.definition],
      port,
      log: capturingLogger("gateway").log,
    });
    base = await gateway.listen();
  });
  after(() => gateway.close());

  it("answers every pool's gauges to a key for all pools, as Bearer (Prometheus' authorization) or in the key header", async () => {
    for (const headers of [{ authorization: `Bearer ${all.key}` }, all.headers]) {
      const res = await fetch(base + METRICS_PATH, { headers });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const text = await res.text();
      for (const gauge of ["agentpools_queued", "agentpools_connected_agents", "agentpools_busy_agents"]) {
        assert.ok(text.includes(`# TYPE ${gauge} gauge`));
        assert.ok(text.includes(`${gauge}{pool="git",kind="vcs"} 0`), text);
        assert.ok(text.includes(`${gauge}{pool="secret-project",kind="flows"} 0`), text);
      }
    }
  });

  it("hostile: without a key, or with a wrong one, 401 and no pool name crosses", async () => {
    for (const headers of [
      {},
      { authorization: "Bearer apk1.000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" },
      { authorization: `Basic ${Buffer.from(`x:${all.key}`).toString("base64")}` },
    ]) {
      const res = await fetch(base + METRICS_PATH, { headers });
      const text = await res.text();
      assert.equal(res.status, 401);
      assert.ok(!text.includes("git") && !text.includes("secret-project"), text);
    }
  });

  it("hostile: a key limited to one pool sees only that pool's lines", async () => {
    const text = await (await fetch(base + METRICS_PATH, { headers: gitOnly.headers })).text();
    assert.ok(text.includes('pool="git"'));
    assert.ok(!text.includes("secret-project"), text);
  });
});
