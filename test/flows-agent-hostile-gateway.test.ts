// A hostile gateway against a real Flows agent: what the gateway's messages can make the agent hold or run.
import assert from "node:assert/strict";
import http from "node:http";
import type net from "node:net";
import { flowsAgentSettings } from "../agent/config/flows-agent";
import { flowsAgentRole, unbundledRunner } from "../agent/flows-agent/agent";
import { capturingLogger, eventually, scratchDir } from "../devkit/helpers";
import { FLOWS_AGENT_RUNS_PER_RUNTIME } from "../protocol/flows";
import { acceptWebSocket, type WebSocket } from "../protocol/websocket";

describe("Flows agent: a hostile gateway", function () {
  this.timeout(30_000);

  it("runs beyond what the agent holds (its pool size, twice) are not held: the agent drops the link, ends its runs and reconnects", async () => {
    const links: WebSocket[] = [];
    const answers: Record<string, unknown>[] = [];
    const server = http.createServer((_, res) => res.writeHead(404).end());
    server.on("upgrade", (req, socket: net.Socket, head) => {
      const link = acceptWebSocket(req.headers, socket, head);
      links.push(link);
      link.on("message", (text: string) => {
        const message = JSON.parse(text);
        if (message.type === "result") answers.push(message);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const log = capturingLogger("flows-agent");
    const poolSize = 1;
    const agent = await flowsAgentRole(unbundledRunner()).start(
      flowsAgentSettings.parse({
        poolId: "01HOSTILEGW",
        poolToken: "token",
        gatewayEndpoint: url,
        backendEndpoint: url,
        executor: "process",
        runtimeIsolation: "none",
        mountsDir: scratchDir("flows-hostile-gw-"),
        runtimePoolSize: poolSize,
        runtimeMemoryMb: 64,
      }),
      { log: log.log },
    );
    try {
      await eventually(() => links.length === 1);
      // Runs that never end, each a MiB of code: more than the agent holds.
      const code = `await new Promise(() => undefined); /*${"x".repeat(1024 * 1024)}*/`;
      const held = FLOWS_AGENT_RUNS_PER_RUNTIME * poolSize;
      for (let i = 0; i <= held; i++)
        links[0].send(JSON.stringify({ type: "run", id: `run-${i}`, job: { kind: "block", code }, timeoutMs: 60_000 }));
      await new Promise((closed) => links[0].once("close", closed));
      assert.ok(log.lines.some((l) => l.msg === "the gateway sent more runs than this agent holds: reconnecting"));
      // The runs it held end with the link (their answers have nowhere to go); it comes back, holding nothing.
      await eventually(() => links.length === 2, 10_000, "the agent reconnected");
      await eventually(() => agent.busy?.() === 0, 10_000, "the agent holds no run");
      const ended = log.lines.filter((l) => l.msg === "run finished").map((l) => l.id);
      assert.deepEqual(ended.sort(), ["run-0", "run-1"], "the runs it held ended, the one beyond never started");
      assert.deepEqual(answers, [], "no answer went out on a dropped link");
    } finally {
      await agent.drain(Date.now() + 1000);
      server.close();
      for (const link of links) link.close();
    }
  });
});
