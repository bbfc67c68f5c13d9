// Flows runs whose answers are large, over an agent uplink slower than the gateway's keepalive: the agent queues one
// answer at a time and the gateway keeps the connection while the bytes come.
import assert from "node:assert/strict";
import { chmodSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { flowsAgentSettings } from "../agent/config/flows-agent";
import { flowsAgentRole, unbundledRunner } from "../agent/flows-agent/agent";
import type { RunningAgent } from "../agent/runtime/runtime";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, runtimeUidRange, scratchDir, serviceKey } from "../devkit/helpers";

describe("Flows: runs with large answers over a slow link", function () {
  this.timeout(60_000);
  const POOL_SLOW = "01SLOWLINK";
  const ANSWER = 3 * 1024 * 1024;
  const dir = scratchDir("flows-slow-");
  const service = serviceKey();
  let gateway: Gateway;
  let url: string;
  let log: ReturnType<typeof capturingLogger>;
  let agent: RunningAgent;
  let proxyPort = 0;
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(new URL(url).port), "127.0.0.1");
    // The agent's uplink: 2 MiB/s, paced in 64 KiB slices (an answer takes 1.5 s, past the keepalive's 1 s). The
    // gateway's side is not the slow one.
    client.on("data", (chunk: Buffer) => {
      client.pause();
      let at = 0;
      const next = (): unknown =>
        at >= chunk.length
          ? client.resume()
          : (upstream.write(chunk.subarray(at, (at += 65536))), setTimeout(next, 32));
      next();
    });
    upstream.pipe(client);
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ])
      a.on("error", () => b.destroy()).on("close", () => b.destroy());
  });
  /** The most the agent's socket to the gateway held unsent at once. */
  let queued = 0;
  const { write } = net.Socket.prototype;

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(POOL_SLOW, "flows", url);
    log = capturingLogger("gateway");
    // A keepalive of 1 s: the 20 s / 10 s of production scaled down with the link.
    gateway = new Gateway({
      pools: [created.pool],
      keys: [service.definition],
      port,
      log: log.log,
      pingIntervalMs: 100,
      pingTimeoutMs: 1000,
    });
    await gateway.listen();
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    proxyPort = (proxy.address() as net.AddressInfo).port;
    net.Socket.prototype.write = function (this: net.Socket, ...args: unknown[]) {
      const result = (write as (...a: unknown[]) => boolean).apply(this, args);
      if (this.remotePort === proxyPort) queued = Math.max(queued, this.writableLength);
      return result;
    } as typeof write;
    const via = `http://127.0.0.1:${proxyPort}`;
    chmodSync(path.dirname(dir), 0o711);
    chmodSync(dir, 0o711);
    const settings = flowsAgentSettings.parse({
      poolId: POOL_SLOW,
      poolToken: created.token,
      gatewayEndpoint: via,
      backendEndpoint: via,
      executor: "process",
      runtimeIsolation: "user",
      runtimeUids: runtimeUidRange(8).range,
      mountsDir: path.join(dir, "mounts"),
      runtimePoolSize: 4,
      runtimeMemoryMb: 128,
    });
    agent = await flowsAgentRole(unbundledRunner()).start(settings, { log: capturingLogger("flows-agent").log });
    await agent.ready;
    await eventually(() => gateway.summary()[0].connections === 1);
  });
  after(async () => {
    net.Socket.prototype.write = write;
    await agent.drain(Date.now() + 5000);
    proxy.close();
    await gateway.close();
  });

  it("the agent queues one answer at a time, and the gateway keeps it while its bytes come: every run answers, on the same connection", async () => {
    const run = async (code: string) => {
      const response = await fetch(`${url}/_agentpools/api/flows/${POOL_SLOW}/run`, {
        method: "POST",
        headers: service.headers,
        body: JSON.stringify({ kind: "block", code }),
      });
      return { status: response.status, result: (await response.json()) as any };
    };
    const connection = gateway.summary()[0].agents[0].id;
    const victim = run("await new Promise((r) => setTimeout(r, 150)); return 'victim';");
    const large = await Promise.all(Array.from({ length: 3 }, () => run(`return 'y'.repeat(${ANSWER});`)));
    assert.deepEqual(
      large.map((r) => [r.status, r.result.value?.length]),
      Array(3).fill([200, ANSWER]),
      JSON.stringify(large.map((r) => [r.status, r.result.error])) + JSON.stringify(log.lines.slice(-5)),
    );
    assert.deepEqual([(await victim).status, (await victim).result.value], [200, "victim"]);
    assert.equal(gateway.summary()[0].agents[0].id, connection, "the same connection");
    assert.ok(
      !log.lines.some((line) => /stopped answering/.test(JSON.stringify(line))),
      "the gateway did not drop the agent",
    );
    assert.ok(
      queued > ANSWER && queued < 1.5 * ANSWER,
      `at most one answer queued in the agent's socket: ${queued} bytes`,
    );
  });
});
