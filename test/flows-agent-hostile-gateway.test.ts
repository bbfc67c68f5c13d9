// A hostile gateway against a real Flows agent: what the gateway's messages can make the agent hold or run.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { flowsAgentSettings } from "../agent/config/flows-agent";
import path from "node:path";
import { flowsAgentRole } from "../agent/flows-agent/agent";
import { FLOWS_RUNNER_FILE } from "../agent/config/variants";
import { packageRoot } from "../components/shared/bundles";
import { capturingLogger, eventually, scratchDir } from "../devkit/helpers";
import { FLOWS_AGENT_RUNS_PER_RUNTIME, FLOWS_MAX_RUN_ID_CHARS } from "../protocol/flows";
import { acceptWebSocket, type WebSocket } from "../protocol/websocket";

/** `promise`, or an error naming `what` after `ms`: a hang under load says where it was, not just mocha's timeout. */
const bounded = <T>(ms: number, what: string, promise: Promise<T>) =>
  Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms).unref(),
    ),
  ]);

describe("Flows agent: a hostile gateway", function () {
  this.timeout(30_000);

  /** A gateway of the test's making, and a real agent (pool size 1) dialling it. */
  async function hostileGateway() {
    const links: { link: WebSocket; socket: net.Socket }[] = [];
    const answers: Record<string, unknown>[] = [];
    const server = http.createServer((_, res) => res.writeHead(404).end());
    server.on("upgrade", (req, socket: net.Socket, head) => {
      const link = acceptWebSocket(req.headers, socket, head);
      links.push({ link, socket });
      link.on("message", (text: string) => {
        const message = JSON.parse(text);
        if (message.type === "result") answers.push(message);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const log = capturingLogger("flows-agent");
    // The runner that ships (2 KB): the second test starts a runtime per run, one after another.
    const runner = path.join(packageRoot(), "build/bundles", FLOWS_RUNNER_FILE);
    const agent = await bounded(
      60_000,
      "the agent's start",
      Promise.resolve(
        flowsAgentRole({ path: runner, args: [], readable: [runner] }).start(
          flowsAgentSettings.parse({
            poolId: "01HOSTILEGW",
            poolToken: "token",
            gatewayEndpoint: url,
            backendEndpoint: url,
            executor: "process",
            runtimeIsolation: "none",
            mountsDir: scratchDir("flows-hostile-gw-"),
            runtimePoolSize: 1,
            runtimeMemoryMb: 64,
          }),
          { log: log.log },
        ),
      ),
    );
    await eventually(() => links.length === 1, 30_000, "the agent's first link");
    const run = (id: string, code: string) =>
      links[0].link.send(JSON.stringify({ type: "run", id, job: { kind: "block", code }, timeoutMs: 60_000 }));
    const close = async () => {
      try {
        await bounded(15_000, "the agent's drain", agent.drain(Date.now() + 1000));
      } finally {
        server.close();
        for (const { link, socket } of links) {
          link.close();
          socket.destroy();
        }
      }
    };
    return { links, answers, log, agent, run, close };
  }

  it("a run whose ID is longer than a gateway's IDs is not run, nor logged: a megabyte a line would fill the log", async function () {
    this.timeout(120_000);
    const { answers, log, run, close } = await hostileGateway();
    try {
      const longest = "x".repeat(FLOWS_MAX_RUN_ID_CHARS);
      run("x".repeat(1 << 20), "return 1");
      run(longest, "return 2");
      // Runs are taken in order: once the second is answered, the first was taken, or ignored.
      await eventually(
        () => answers.some((a) => a.id === longest),
        60_000,
        "the answer to the run of a short enough ID",
      );
      assert.deepEqual(
        answers.map((a) => a.id),
        [longest],
      );
      const finished = log.lines.filter((l) => l.msg === "run finished");
      assert.deepEqual(
        finished.map((l) => l.id.length),
        [FLOWS_MAX_RUN_ID_CHARS],
      );
    } finally {
      await close();
    }
  });

  it("runs beyond what the agent holds (its pool size, twice) are not held: the agent drops the link, ends its runs and reconnects", async function () {
    // Each wait is for a hang, named, and within the test's timeout: under load 23 the whole took past mocha's 30 s.
    this.timeout(180_000);
    const { links, answers, log, agent, run, close } = await hostileGateway();
    try {
      // Runs that never end, each a MiB of code: more than the agent holds.
      const code = `await new Promise(() => undefined); /*${"x".repeat(1024 * 1024)}*/`;
      let dropped = false;
      links[0].link.once("close", () => (dropped = true));
      for (let i = 0; i <= FLOWS_AGENT_RUNS_PER_RUNTIME; i++) run(`run-${i}`, code);
      await eventually(() => dropped, 30_000, "the agent dropped the link");
      assert.ok(log.lines.some((l) => l.msg === "the gateway sent more runs than this agent holds: reconnecting"));
      // The runs it held end with the link (their answers have nowhere to go); it comes back, holding nothing.
      await eventually(() => links.length === 2, 30_000, "the agent reconnected");
      await eventually(() => agent.busy?.() === 0, 30_000, "the agent holds no run");
      const ended = log.lines.filter((l) => l.msg === "run finished").map((l) => l.id);
      assert.deepEqual(ended.sort(), ["run-0", "run-1"], "the runs it held ended, the one beyond never started");
      assert.deepEqual(answers, [], "no answer went out on a dropped link");
    } finally {
      await close();
    }
  });

  it("a gateway that stops reading its answers cannot pile them up in the agent: answers not yet sent count as runs held", async function () {
    // Under a second alone; under load each run's cold start and 3 MB answer take seconds, and how many answers the
    // kernel's socket buffers take before the agent holds any varies: the deadline is for a hang, not for speed (each
    // step's own is within it, so that a hang names its step).
    this.timeout(180_000);
    const { links, log, agent, run, close } = await hostileGateway();
    // Each run names itself to a loopback server and keeps the connection until its runtime is gone (after its answer).
    const gone: string[] = [];
    const recorder = net.createServer((socket) => {
      let name = "";
      socket.on("data", (chunk) => void (name ||= String(chunk)));
      socket.on("error", () => undefined).on("close", () => gone.push(name));
    });
    await new Promise<void>((resolve) => recorder.listen(0, "127.0.0.1", resolve));
    const port = (recorder.address() as net.AddressInfo).port;
    try {
      // It reads nothing more, and sends runs with large answers, each once the last one's runtime is gone: one
      // runtime is all they ever take, but their answers wait in the agent.
      links[0].socket.pause();
      let sent = 0;
      // Bounded below the test's timeout, so that a failure says how far it came.
      const started = Date.now();
      while (links.length === 1 && sent < 40 && Date.now() - started < 100_000) {
        const id = `run-${sent++}`;
        run(
          id,
          `const net = process.getBuiltinModule("node:net");
           const socket = net.connect(${port}, "127.0.0.1");
           await new Promise((r) => socket.on("connect", r));
           socket.write(${JSON.stringify(id)});
           return "x".repeat(3_000_000);`,
        );
        await eventually(
          () => links.length > 1 || gone.includes(id),
          Math.max(100_000 - (Date.now() - started), 100),
          `${id}'s runtime gone (${sent} sent in ${Date.now() - started} ms)`,
        );
      }
      assert.equal(
        links.length,
        2,
        `the agent still held the link after ${sent} unread answers of 3 MB (${Date.now() - started} ms): ` +
          JSON.stringify(log.lines.slice(-5)),
      );
      assert.ok(log.lines.some((l) => l.msg === "the gateway sent more runs than this agent holds: reconnecting"));
      await eventually(() => agent.busy?.() === 0, 10_000, "nothing held once the link is gone");
    } finally {
      recorder.close();
      await close();
    }
  });
});
