import assert from "node:assert/strict";
import { once } from "node:events";
import type http from "node:http";
import net from "node:net";
import { Gateway, type GatewayOptions } from "../gateway/gateway";
import type { HttpError } from "../gateway/http";
import { createPool } from "../gateway/pools";
import { RETRY_AFTER_SECONDS } from "../gateway/vcs-hub";
import { capturingLogger, eventually, freePort, serviceKey } from "../devkit/helpers";
import { flowsAgentStandIn, readAnswer as read } from "./flows-stand-in";
import { FLOWS_MAX_RESULT_BYTES, FLOWS_MAX_RUN_TIMEOUT_MS, FLOWS_MAX_VALUE_CONTAINERS } from "../protocol/flows";

const service = serviceKey();

const POOL = "01LIVENESS";

describe("Flows pools: liveness and fair routing", function () {
  this.timeout(20_000);
  let gateway: Gateway;
  let url: string;
  let token: string;
  let log: ReturnType<typeof capturingLogger>;
  let pool: ReturnType<typeof createPool>["pool"];
  const agents: Awaited<ReturnType<typeof flowsAgentStandIn>>[] = [];

  /** A gateway for each test; `options` beyond the defaults here. */
  const start = async (options: Partial<GatewayOptions> = {}) => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const created = createPool(POOL, "flows", url);
    token = created.token;
    pool = created.pool;
    log = capturingLogger("gateway");
    gateway = new Gateway({
      keys: [service.definition],
      pools: [created.pool],
      port,
      log: log.log,
      pingIntervalMs: 50,
      pingTimeoutMs: 1000,
      ...options,
    });
    await gateway.listen();
  };
  beforeEach(() => start());
  /** A short grace for runs unanswered past their timeout (the default is 10 s). */
  const shortGrace = async () => (await gateway.close(), await start({ flowsAnswerGraceMs: 100 }));
  afterEach(async () => {
    for (const agent of agents.splice(0)) agent.socket.close();
    await gateway.close();
  });

  const connect = async (name: string, poolSize = 1) => {
    const agent = await flowsAgentStandIn(url, POOL, token, name, poolSize);
    agents.push(agent);
    await eventually(() => gateway.summary()[0].connections === agents.length);
    return agent;
  };
  const run = () => read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 60_000));
  /** Runs whose answers their clients do not take until the test calls the next of `untaken`. */
  const untakenAnswers = () => {
    const untaken: (() => void)[] = [];
    const answered = (client: string) => {
      const taken = new Promise<void>((resolve) => untaken.push(resolve));
      return read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 60_000, client, taken));
    };
    return { answered, untaken };
  };

  it("runs spread over equally loaded agents, least recently used first (not all to the first connected)", async () => {
    for (const name of ["a", "b", "c"]) await connect(name);
    const answered: unknown[] = [];
    for (let i = 0; i < 9; i++) answered.push((await run()).value);
    assert.deepEqual(answered, ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
  });

  it("runs in flight are bounded per pool, and one key holds at most its share: beyond, 503 and the agent receives nothing more", async () => {
    const agent = await connect("held");
    agent.mute(); // its runs never end: they stay in flight
    const held = (client: string) => {
      const pending = read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 60_000, client));
      pending.catch(() => undefined); // ended with the gateway
      return pending;
    };
    // A pool of one runtime takes 16 runs (four per runtime, at least 16); one key, 12 of them. One is at the agent,
    // the rest wait at the gateway.
    for (let i = 0; i < 12; i++) held("a");
    await eventually(() => agent.runs.length === 1);
    await assert.rejects(held("a"), /holds its share/);
    for (let i = 0; i < 4; i++) held("b");
    const { activeRequests, waiting } = gateway.summary()[0];
    assert.deepEqual([activeRequests, waiting], [1, 15]);
    await assert.rejects(held("c"), /16 runs in flight/);
    // Over HTTP: 503 with the time to wait.
    const response = await fetch(`${url}/_agentpools/api/flows/${POOL}/run`, {
      method: "POST",
      headers: service.headers,
      body: JSON.stringify({ code: "1" }),
    });
    assert.deepEqual([response.status, response.headers.get("retry-after")], [503, String(RETRY_AFTER_SECONDS)]);
    assert.match(((await response.json()) as { error: string }).error, /16 runs in flight/);
    assert.equal(agent.runs.length, 1, "no more than its runtimes reached the agent");
  });

  it("no key holds more than its share of the runtimes: another key's run goes to the one it leaves, and runs wait at the gateway, not the agent", async () => {
    const agent = await connect("shared", 2);
    agent.mute();
    const post = (client: string) => {
      const pending = read(gateway.flows.run(POOL, { kind: "expression", code: `'${client}'` }, 60_000, client));
      pending.catch(() => undefined);
      return pending;
    };
    // Key a's burst of long runs, then one run of key b: of two runtimes, a holds one (75% of 2, at least 1).
    for (let i = 0; i < 5; i++) post("a");
    const b = post("b");
    await eventually(() => agent.runs.length === 2);
    assert.deepEqual(agent.runs.map((r) => r.job.code).sort(), ["'a'", "'b'"]);
    assert.equal(gateway.summary()[0].waiting, 4);
    const answer = (run: { id: string }, value: string) =>
      agent.socket.send(JSON.stringify({ type: "result", id: run.id, ok: true, value, console: [], durationMs: 1 }));
    answer(
      agent.runs.find((r) => r.job.code === "'b'")!,
      "b",
    );
    assert.equal((await b).value, "b");
    // The runtime b used is not a's while a holds its share; once a's run ends, a's next goes.
    assert.equal(agent.runs.length, 2);
    answer(
      agent.runs.find((r) => r.job.code === "'a'")!,
      "a",
    );
    await eventually(() => agent.runs.length === 3);
    assert.equal(agent.runs[2].job.code, "'a'");
  });

  it("answers given but not taken count toward their key's share until taken (the gateway holds them meanwhile)", async () => {
    const agent = await connect("answered");
    const { answered, untaken } = untakenAnswers();
    // A pool of one runtime: one key holds 12 of its 16 runs; all answered, none taken.
    const values = await Promise.all(Array.from({ length: 12 }, () => answered("a")));
    assert.deepEqual(new Set(values.map((v) => v.value)), new Set(["answered"]));
    await assert.rejects(answered("a"), /holds its share/);
    assert.equal(agent.runs.length, 12, "the refused run never reached the agent");
    assert.equal((await answered("b")).value, "answered", "another key is not held back");
    untaken.shift()!();
    await eventually(() =>
      answered("a").then(
        () => true,
        () => false,
      ),
    );
    assert.equal(agent.runs.length, 14);
  });

  it("answers given but not taken are held to a byte budget, one key to its share: beyond, 503; taking one frees its bytes", async () => {
    await gateway.close();
    await start({ flowsAnswerBudgetBytes: 4000 });
    // Each answer about 1,100 bytes (the stand-in answers with its name); one key's share, 3,000 bytes.
    const agent = await connect("x".repeat(1000), 4);
    const { answered, untaken } = untakenAnswers();
    for (let i = 0; i < 3; i++) await answered("a");
    await assert.rejects(answered("a"), /answers not yet taken fill this key's share/);
    assert.equal(agent.runs.length, 3, "the refused run never reached the agent");
    assert.equal((await answered("b")).ok, true, "another key is served");
    untaken.shift()!();
    await eventually(() =>
      answered("a").then(
        () => true,
        () => false,
      ),
    );
  });

  it("the byte budget holds when admitted runs answer at once: an answer past a full share is dropped, its run told so", async () => {
    await gateway.close();
    await start({ flowsAnswerBudgetBytes: 4000 });
    // Four runtimes, answers of about 1,100 bytes; one key's share, 3,000 bytes. All four admitted while nothing is
    // held, all four answered at once, none taken.
    await connect("x".repeat(1000), 4);
    const { answered } = untakenAnswers();
    const outcomes = await Promise.allSettled(Array.from({ length: 4 }, () => answered("a")));
    const held = outcomes.filter((o) => o.status === "fulfilled");
    const dropped = outcomes.flatMap((o) => (o.status === "rejected" ? [o.reason as HttpError] : []));
    assert.equal(held.length, 3, "held while under the share: 0, 1,100 and 2,200 bytes before each");
    assert.deepEqual(
      dropped.map((e) => [e.status, e.message]),
      [[503, "the run ran, but answers not yet taken fill this key's share: its answer is dropped"]],
    );
  });

  it("an agent that passes on a result message over the result cap is dropped; its run fails", async () => {
    const agent = await connect("over");
    agent.mute();
    const pending = run();
    await eventually(() => agent.runs.length === 1);
    const value = JSON.stringify("x".repeat(FLOWS_MAX_RESULT_BYTES));
    agent.socket.send(
      `{"type":"result","id":"${agent.runs[0].id}","ok":true,"console":[],"durationMs":1,"value":${value}}`,
    );
    await assert.rejects(pending, (error: Error & { status?: number }) => error.status === 502);
    assert.ok(log.lines.some((line) => /over the caps: disconnected/.test(line.msg)));
  });

  it("the byte budget counts an answer as its client receives it: numbers written longer again (9e20: 21 digits) count at that length", async () => {
    await gateway.close();
    await start({ flowsAnswerBudgetBytes: 4000 });
    const agent = await connect("grows", 4);
    agent.mute();
    const { answered } = untakenAnswers();
    const first = answered("a");
    await eventually(() => agent.runs.length === 1);
    // 800 bytes of value as the agent sends it, 3,520 as the client receives it: past one key's share (3,000) alone.
    const value = `[${Array(160).fill("9e20").join(",")}]`;
    agent.socket.send(
      `{"type":"result","id":"${agent.runs[0].id}","ok":true,"console":[],"durationMs":1,"value":${value}}`,
    );
    assert.deepEqual((await first).value, Array(160).fill(9e20));
    await assert.rejects(answered("a"), /answers not yet taken fill this key's share/);
    assert.equal(agent.runs.length, 1, "the refused run never reached the agent");
  });

  it("a run whose client hung up is cancelled: a queued one leaves the queue, the agent drops or ends one it holds, whose runtime stays taken until the agent answers the cancel", async () => {
    // (An agent that leaves a cancelled run unanswered for the ping timeout is counted free: a long one here.)
    await gateway.close();
    await start({ pingTimeoutMs: 10_000 });
    const agent = await connect("gone");
    agent.mute();
    const gone = Promise.resolve(); // each client hangs up at once
    const runs = Array.from({ length: 12 }, () =>
      read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 60_000, "a", gone)),
    );
    for (const run of runs) await assert.rejects(run, /the client went away/);
    await eventually(() => agent.cancels.length === 1);
    assert.equal(agent.runs.length, 1, "the queued ones never reached the agent");
    assert.deepEqual(agent.cancels, [agent.runs[0].id], "the one sent was cancelled");
    const { activeRequests, waiting } = gateway.summary()[0];
    assert.deepEqual([activeRequests, waiting], [1, 0], "the cancelled run still holds its runtime");
    const next = read(gateway.flows.run(POOL, { kind: "expression", code: "2" }, 60_000, "b"));
    next.catch(() => undefined);
    assert.deepEqual([gateway.summary()[0].waiting, agent.runs.length], [1, 1], "the next waits for that runtime");
    agent.socket.send(JSON.stringify({ type: "result", id: agent.runs[0].id, ok: false, console: [], durationMs: 1 }));
    await eventually(() => agent.runs.length === 2);
    assert.equal(agent.runs[1].job.code, "2");
  });

  it("a run unanswered past its timeout and the grace: 504 to its client, a cancel to the agent, its place held until the agent answers", async () => {
    await shortGrace();
    const agent = await connect("late");
    agent.mute();
    const started = Date.now();
    const late = read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 50, "a"));
    await assert.rejects(late, (error: Error & { status?: number }) => {
      assert.deepEqual([error.status, error.message], [504, "no answer from the agent within 150 ms"]);
      return true;
    });
    assert.ok(Date.now() - started >= 150, "not before the timeout and the grace");
    await eventually(() => agent.cancels.length === 1);
    assert.deepEqual(agent.cancels, [agent.runs[0].id]);
    assert.equal(gateway.summary()[0].activeRequests, 1, "still in flight at the agent");
    agent.socket.send(JSON.stringify({ type: "result", id: agent.runs[0].id, ok: false, console: [], durationMs: 1 }));
    await eventually(() => gateway.summary()[0].activeRequests === 0);
    assert.ok(
      log.lines.some((l) => l.msg === "run cancelled" && l.reason === "no answer from the agent within 150 ms"),
    );
    assert.equal(gateway.summary()[0].connections, 1, "an agent that answers its cancels stays");
  });

  it("a cancelled run the agent does not answer within the ping timeout is counted gone; the agent and its other runs stay", async () => {
    const agent = await connect("deaf");
    agent.mute();
    const gone = Promise.resolve();
    const cancelled = read(gateway.flows.run(POOL, { kind: "expression", code: "1" }, 60_000, "a", gone));
    const other = read(gateway.flows.run(POOL, { kind: "expression", code: "2" }, 60_000, "b"));
    await assert.rejects(cancelled, /the client went away/);
    const { activeRequests, waiting } = gateway.summary()[0];
    assert.deepEqual([activeRequests, waiting], [1, 1]);
    await eventually(() => agent.runs.length === 2, 5000, "the other run sent once the cancelled one is counted gone");
    assert.deepEqual(agent.cancels, [agent.runs[0].id]);
    assert.ok(
      log.lines.some((l) => l.msg === "agent did not answer a cancelled run in time: its place is counted free"),
    );
    assert.equal(gateway.summary()[0].connections, 1);
    agent.socket.send(
      JSON.stringify({ type: "result", id: agent.runs[1].id, ok: true, value: 2, console: [], durationMs: 1 }),
    );
    assert.equal((await other).value, 2);
  });

  it("an agent's result reaches the client as an answer's fields only, its error's too (nothing else the agent sent)", async () => {
    const agent = await connect("extra");
    agent.mute();
    const pending = run();
    await eventually(() => agent.runs.length === 1);
    const error = { name: "E", message: "m", type: "result", id: "another run's", value: 1, headers: { a: "b" } };
    agent.socket.send(
      JSON.stringify({ type: "result", id: agent.runs[0].id, ok: false, error, console: [], durationMs: 1, extra: 1 }),
    );
    assert.deepEqual(await pending, {
      ok: false,
      error: { name: "E", message: "m" },
      console: [],
      durationMs: 1,
    });
  });

  it("an agent's hello is read once, and what it says is shown as a short printable line (not 1 MB of control characters)", async () => {
    // 6 MB as JSON escapes: under the result cap, past which any message of an agent drops it.
    const loud = await flowsAgentStandIn(url, POOL, token, "loud", 2, "\u0007".repeat(1_000_000));
    agents.push(loud);
    await eventually(() => gateway.summary()[0].connections === 1);
    loud.socket.send(JSON.stringify({ type: "hello", poolSize: 64, executor: "again" }));
    await run(); // its messages are read in order: both hellos came before this run's answer
    const [shown] = gateway.flows.summary(POOL).agents;
    assert.deepEqual([shown.parallelism, shown.executor], [2, "?".repeat(100)]);
    const response = await fetch(`${url}/_agentpools/api/pools`, { headers: service.headers });
    assert.ok((await response.text()).length < 10_000);
  });

  it("a key removed while its request's body is still coming: 401 once it has come, and nothing reaches the agent", async () => {
    const other = serviceKey("other");
    gateway.setKeys([service.definition, other.definition]);
    const agent = await connect("body");
    const body = JSON.stringify({ code: "'run by a removed key'" });
    // The gateway's own request handler (the key check) runs before this listener, added after it.
    const checked = once((gateway as unknown as { server: http.Server }).server, "request");
    const socket = net.connect(Number(new URL(url).port), "127.0.0.1");
    let answer = "";
    socket.on("data", (chunk) => (answer += chunk));
    socket.write(
      `POST /_agentpools/api/flows/${POOL}/run HTTP/1.1\r\nhost: x\r\nx-agentpools-key: ${other.key}\r\n` +
        `content-length: ${body.length}\r\n\r\n${body.slice(0, 5)}`,
    );
    await checked;
    gateway.setKeys([service.definition]);
    socket.end(body.slice(5));
    await once(socket, "close");
    assert.match(answer, /^HTTP\/1.1 401/);
    assert.match(answer, new RegExp(`the service key no longer allows pool ${POOL}`));
    assert.equal(agent.runs.length, 0, "the run never reached the agent");
  });

  it("a key removed while its runs are unanswered: those runs end with 401 at once (cancelled at the agent, or out of the queue), another key's are answered", async () => {
    const other = serviceKey("other");
    gateway.setKeys([service.definition, other.definition]);
    const agent = await connect("late");
    agent.mute();
    const run = (client: string, code: string) =>
      read(gateway.flows.run(POOL, { kind: "expression", code }, 60_000, client));
    const removed = run(other.definition.id, "1");
    const removedQueued = run(other.definition.id, "2");
    const kept = run(service.definition.id, "3");
    await eventually(() => agent.runs.length === 1);
    gateway.setKeys([service.definition]);
    for (const ended of [removed, removedQueued])
      await assert.rejects(ended, (error: Error & { status?: number }) => {
        assert.deepEqual([error.status, error.message], [401, `the service key no longer allows pool ${POOL}`]);
        return true;
      });
    await eventually(() => agent.cancels.length === 1);
    assert.deepEqual(agent.cancels, [agent.runs[0].id], "the agent is told to drop the removed key's run");
    const { activeRequests, waiting } = gateway.summary()[0];
    assert.deepEqual([activeRequests, waiting], [1, 1], "the cancelled run holds its runtime; the kept one waits");
    // The agent answers the cancelled run (the answer reaches no one); the kept run goes, and is answered.
    agent.socket.send(JSON.stringify({ type: "result", id: agent.runs[0].id, ok: false, console: [], durationMs: 1 }));
    await eventually(() => agent.runs.length === 2);
    assert.equal(agent.runs[1].job.code, "3", "the removed key's queued run never reached the agent");
    const { id } = agent.runs[1];
    agent.socket.send(JSON.stringify({ type: "result", id, ok: true, value: id, console: [], durationMs: 1 }));
    assert.equal((await kept).value, id);
    await eventually(() => gateway.summary()[0].activeRequests === 0);
  });

  it("an agent that passes on an answer too costly to parse (nesting, objects and arrays) is dropped; its run fails", async () => {
    for (const value of ["[".repeat(300) + "]".repeat(300), `[${"{},".repeat(FLOWS_MAX_VALUE_CONTAINERS)}{}]`]) {
      const agent = await connect("costly");
      agent.mute();
      const pending = run();
      await eventually(() => agent.runs.length === 1);
      const id = (agent.runs[0] as { id: string }).id;
      agent.socket.send(`{"type":"result","id":"${id}","ok":true,"console":[],"durationMs":1,"value":${value}}`);
      await assert.rejects(pending, (error: Error & { status?: number }) => error.status === 502);
      assert.ok(log.lines.some((line) => /over the caps: disconnected/.test(line.msg)));
      await eventually(() => gateway.summary()[0].connections === 0);
      agents.splice(0);
    }
  });

  it("answers compact JSON, and drops an answer its client does not take within the stall deadline", async () => {
    await gateway.close();
    const port = await freePort();
    gateway = new Gateway({ keys: [service.definition], pools: [pool], port, log: log.log, stallTimeoutMs: 1000 });
    await gateway.listen();
    url = `http://127.0.0.1:${port}`;
    const pools = await (await fetch(`${url}/_agentpools/api/pools`, { headers: service.headers })).text();
    assert.equal(pools, JSON.stringify(JSON.parse(pools)), "no indentation: an answer's size is its content's");
    await connect("x".repeat(6_000_000)); // its answer: a 6 MB string
    // A client that asks, in one go, for more than the kernel's buffers hold, and reads none of it.
    const request = `POST /_agentpools/api/flows/${POOL}/run HTTP/1.1\r\nhost: x\r\n${Object.entries(service.headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("")}content-length: 12\r\n\r\n{"code":"1"}`;
    const socket = net.connect(port, "127.0.0.1");
    socket.pause();
    socket.write(request.repeat(4));
    await eventually(() => log.lines.some((line) => /not taken within the stall deadline/.test(line.msg)), 10_000);
    // What the client then gets: the connection ends before all four answers.
    let received = "";
    socket.on("data", (chunk) => (received += chunk)).on("error", () => undefined);
    socket.resume();
    await once(socket, "close");
    assert.ok(received.split("HTTP/1.1 200").length - 1 < 4, "the connection was cut, not all answers sent");
  });

  it("an agent that stops answering pings is dropped within interval + timeout (50 + 1000 ms here, 20 + 10 s by default); its run fails clearly, the next goes elsewhere", async () => {
    const hung = await connect("hung");
    await connect("healthy");
    // The least recently used is the hung agent: the first run goes to it.
    hung.freeze();
    const started = Date.now();
    await assert.rejects(run(), (error: Error & { status?: number }) => {
      assert.equal(error.status, 502);
      assert.match(error.message, /stopped answering/);
      return true;
    });
    assert.ok(Date.now() - started < 5000, "dropped in about a second, long before the run's own timeout (70 s)");
    assert.equal(gateway.summary()[0].connections, 1);
    assert.ok(log.lines.some((l) => l.msg === "agent stopped answering pings: disconnected" && l.runs === 1));
    assert.equal((await run()).value, "healthy");
  });

  it("a run's timeout: the agent's own default unless the client gives one, capped where both sides read the cap", async () => {
    const agent = await connect("a");
    const post = (body: object) =>
      fetch(`${url}/_agentpools/api/flows/${POOL}/run`, {
        method: "POST",
        headers: service.headers,
        body: JSON.stringify(body),
      });
    const first = await post({ code: "1" });
    assert.equal(first.status, 200, await first.text());
    assert.equal((await post({ code: "1", timeoutMs: 1234 })).status, 200);
    assert.deepEqual(
      agent.runs.map((r) => r.timeoutMs),
      [undefined, 1234],
      "no timeout sent: FLOWS_RUN_TIMEOUT applies",
    );
    const over = await post({ code: "1", timeoutMs: FLOWS_MAX_RUN_TIMEOUT_MS + 1 });
    assert.equal(over.status, 400);
    assert.match(
      ((await over.json()) as { error: string }).error,
      new RegExp(`timeoutMs must be an integer from 1 to ${FLOWS_MAX_RUN_TIMEOUT_MS}`),
    );
    assert.equal(agent.runs.length, 2);
  });

  it("an agent busy but alive (answering pings) is not dropped", async () => {
    const busy = await connect("busy");
    busy.mute();
    const pending = run();
    pending.catch(() => undefined);
    await eventually(() => gateway.summary()[0].activeRequests === 1);
    // Ten pings come and are answered while the run is stuck: the agent stays.
    const from = busy.pongs();
    await eventually(() => busy.pongs() >= from + 10, 5000, "ten pings answered");
    assert.equal(gateway.summary()[0].connections, 1);
    assert.ok(!log.lines.some((l) => l.msg === "agent stopped answering pings: disconnected"));
  });
});
