import assert from "node:assert/strict";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { FLOWS_MAX_VALUE_CONTAINERS, FLOWS_MAX_VALUE_DEPTH } from "../protocol/flows";
import { capturingLogger, eventually, freePort, serviceKey } from "../devkit/helpers";
import { flowsAgentStandIn } from "./flows-stand-in";

const POOL = "inputs";
const service = serviceKey();

/** Arrays nested `depth` deep, as JSON text. */
const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);

/**
 * What a client submits to a Flows pool is held to the caps an agent's answer is held to, when it comes: a run
 * queued while the runtimes are busy is sent later from inside the handler of an agent's message, where a job that
 * cannot be encoded (nested 10,000 deep) once ended the gateway's process.
 */
describe("Flows runs a client submits: inputs within the caps of an answer", function () {
  this.timeout(30_000);
  let gateway: Gateway;
  let url: string;
  let agent: Awaited<ReturnType<typeof flowsAgentStandIn>>;
  let token = "";
  const captured = capturingLogger("gateway");

  const post = (body: string) =>
    fetch(`${url}/_agentpools/api/flows/${POOL}/run`, {
      method: "POST",
      headers: service.headers,
      body,
      // Under the cap an answer comes within a few ms: a run wrongly queued fails the test here, not at its timeout.
      signal: AbortSignal.timeout(10_000),
    }).then(async (res) => ({ status: res.status, body: (await res.json()) as { error?: string; value?: unknown } }));
  /** The agent answers its run `index` (the runtime comes free). */
  const answer = (index: number, value: unknown) =>
    agent.socket.send(
      JSON.stringify({ type: "result", id: agent.runs[index].id, ok: true, value, console: [], durationMs: 1 }),
    );

  beforeEach(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(POOL, "flows", url);
    token = created.token;
    gateway = new Gateway({ keys: [service.definition], pools: [created.pool], port, log: captured.log });
    await gateway.listen();
    // One runtime, taken by a first run the agent does not answer yet: what comes next is queued.
    agent = await flowsAgentStandIn(url, POOL, created.token, "agent", 1);
    await eventually(() => gateway.summary()[0].connections === 1);
    agent.mute();
  });
  afterEach(async () => {
    agent.close();
    await gateway.close();
  });

  it("an agent's hello whose pool size and executor String() and Number() cannot read: shown as none, the gateway serves on", async () => {
    const unreadable = { toString: 1, valueOf: 1 };
    const hostile = await flowsAgentStandIn(url, POOL, token, "hostile", unreadable as never, unreadable as never);
    try {
      await eventually(() => gateway.summary()[0].connections === 2, 5000, "the hostile agent greeted");
      // Served on: the first agent's run answered.
      const first = post(`{"code":"1"}`);
      await eventually(() => agent.runs.length === 1 || hostile.runs.length === 1);
      if (agent.runs.length === 1) answer(0, 1);
      assert.equal((await first).status, 200);
    } finally {
      hostile.close();
    }
  });

  it("a body that is no object, or a timeout Number() cannot read: 400, and the gateway serves on (each once ended it)", async () => {
    for (const body of ["null", "[]", "5", '"code"', '{"code":"1","timeoutMs":{"valueOf":0,"toString":0}}']) {
      const refused = await post(body);
      assert.equal(refused.status, 400, body);
      assert.match(refused.body.error ?? "", /must be a JSON object|timeoutMs must be an integer/, body);
    }
    // Served on: a run answered.
    const first = post(`{"code":"1"}`);
    await eventually(() => agent.runs.length === 1);
    answer(0, 1);
    assert.deepEqual((await first).status, 200);
  });

  it(`inputs deeper than ${FLOWS_MAX_VALUE_DEPTH} or with more containers than the cap: 400 naming the field and the cap, nothing queued or sent; at the cap, queued and sent whole`, async () => {
    const first = post(`{"code":"1"}`);
    await eventually(() => agent.runs.length === 1);

    for (const depth of [10_000, FLOWS_MAX_VALUE_DEPTH + 1]) {
      const refused = await post(`{"code":"1","inputs":${nested(depth)}}`);
      assert.equal(refused.status, 400, `${depth} deep`);
      assert.equal(refused.body.error, `inputs nest deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}`);
    }
    const wide = await post(`{"code":"1","inputs":[${Array(FLOWS_MAX_VALUE_CONTAINERS).fill("[]").join(",")}]}`);
    assert.equal(wide.status, 400);
    assert.equal(wide.body.error, `inputs hold more than the cap of ${FLOWS_MAX_VALUE_CONTAINERS} objects and arrays`);
    assert.equal(gateway.summary()[0].waiting, 0, "nothing refused is queued");

    // At the cap: queued while the runtime is busy, sent when it comes free, as the client gave it.
    const atCap = post(`{"code":"1","inputs":${nested(FLOWS_MAX_VALUE_DEPTH)}}`);
    await eventually(() => gateway.summary()[0].waiting === 1, 5000, "the run at the cap queued");
    answer(0, "first");
    await eventually(() => agent.runs.length === 2, 5000, "the queued run sent");
    assert.equal(JSON.stringify(agent.runs[1].job.inputs), nested(FLOWS_MAX_VALUE_DEPTH));
    answer(1, "second");
    assert.deepEqual(
      [(await first).body.value, (await atCap).body.value],
      ["first", "second"],
      "both clients have their answers",
    );
    assert.equal(agent.runs.length, 2, "no refused run reached the agent");
  });

  it("a job an in-process caller gives that cannot be encoded (a cycle) is refused when it comes; the queue goes on", async () => {
    const first = post(`{"code":"1"}`);
    await eventually(() => agent.runs.length === 1);
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    await assert.rejects(gateway.flows.run(POOL, { kind: "expression", code: "1", inputs: cycle }), (error: Error) => {
      assert.equal((error as Error & { status: number }).status, 400);
      assert.match(error.message, /^inputs must be JSON values: /);
      return true;
    });
    const next = post(`{"code":"2","inputs":{"a":[1]}}`);
    await eventually(() => gateway.summary()[0].waiting === 1);
    answer(0, "first");
    await eventually(() => agent.runs.length === 2, 5000, "the queued run sent");
    assert.deepEqual(agent.runs[1].job, { kind: "expression", code: "2", inputs: { a: [1] } });
    answer(1, "next");
    assert.deepEqual([(await first).body.value, (await next).body.value], ["first", "next"]);
  });

  it("a run whose send throws fails alone (500, one error line): the handler of the agent's message goes on, the pool serves", async () => {
    const first = post(`{"code":"1"}`);
    await eventually(() => agent.runs.length === 1);
    const queued = post(`{"code":"2"}`);
    await eventually(() => gateway.summary()[0].waiting === 1);
    // The hub's side of the agent's link fails its next send, as a link broken in between would.
    const hub = gateway.flows as unknown as { agents: Map<string, Set<{ socket: { send: (text: string) => void } }>> };
    const [link] = hub.agents.get(POOL) as Set<{ socket: { send: (text: string) => void } }>;
    const send = link.socket.send;
    link.socket.send = () => {
      link.socket.send = send;
      throw new Error("the link broke");
    };
    answer(0, "first");
    assert.deepEqual(await queued, { status: 500, body: { error: "the run could not be sent to an agent" } });
    assert.equal((await first).body.value, "first");
    assert.equal(
      captured.lines.filter(
        (l) => l.msg === "a Flows run could not be sent to an agent" && l.error === "the link broke",
      ).length,
      1,
    );
    // The gateway lives, and the pool's runtime is free again.
    const after = post(`{"code":"3"}`);
    await eventually(() => agent.runs.length === 2, 5000, "the next run sent");
    answer(1, "after");
    assert.equal((await after).body.value, "after");
  });
});
