import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { Readable } from "node:stream";
import { CONNECTION_WINDOW, MAX_CONTROL_FRAME, MuxConnection, STREAM_WINDOW, type MuxOptions, type MuxStream, type RequestHead, type ResponseHead } from "./mux";

/** Both ends of a loopback TCP connection. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise((resolve) => client.once("connect", resolve));
  const other = await accepted;
  server.close();
  return [client, other];
}

/** A gateway end (opens streams) and an agent end (serves them) over one connection. */
async function pair(agentOptions: MuxOptions) {
  const [a, b] = await socketPair();
  const events: string[] = [];
  const gateway = new MuxConnection(a, { onGoAway: () => events.push("goaway") });
  const agent = new MuxConnection(b, { maxStreams: 4, onProtocolError: (message) => events.push(message), ...agentOptions });
  return { gateway, agent, events, close: () => (gateway.destroy(), agent.destroy()) };
}

const response = (stream: MuxStream) => new Promise<ResponseHead>((resolve, reject) => (stream.once("response", resolve), stream.once("close", () => reject(new Error(`closed before a response (${stream.resetReason})`)))));
const digest = async (readable: Readable) => {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of readable) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { bytes, sha256: hash.digest("hex") };
};
const closed = (stream: MuxStream) => new Promise<void>((resolve) => (stream.closed ? resolve() : stream.once("close", () => resolve())));
const head: RequestHead = { method: "POST", path: "/echo", headers: { "x-test": "1" } };

/** The frame layout of docs/protocol.md §2: type u8, flags u8, stream u32, length u32, payload. */
function frame(type: number, flags: number, id: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = Buffer.from(payload);
  const header = Buffer.alloc(10);
  header[0] = type;
  header[1] = flags;
  header.writeUInt32BE(id, 2);
  header.writeUInt32BE(body.length, 6);
  return Buffer.concat([header, body]);
}

describe("tunnel multiplexer", function () {
  this.timeout(20_000);

  it("streams a body larger than both windows each way, whole and in order", async () => {
    const { gateway, close } = await pair({
      onStream: (stream, request) => {
        assert.deepEqual(request, head);
        stream.respond({ status: 200, headers: { "content-type": "application/octet-stream" } });
        stream.pipe(stream); // echo
      },
    });
    const body = randomBytes(CONNECTION_WINDOW + STREAM_WINDOW + 12345);
    const stream = gateway.open(head, true);
    Readable.from([body.subarray(0, 1000), body.subarray(1000)]).pipe(stream);
    assert.equal((await response(stream)).status, 200);
    assert.deepEqual(await digest(stream), { bytes: body.length, sha256: createHash("sha256").update(body).digest("hex") });
    await closed(stream);
    assert.equal(gateway.size, 0);
    close();
  });

  it("a reader that stops reading stops the sender after one stream window; reading again lets the rest through", async () => {
    let served!: MuxStream;
    const { gateway, close } = await pair({ onStream: (stream) => (served = stream) });
    const stream = gateway.open(head, true);
    let accepted = 0;
    let written = 0;
    const chunk = Buffer.alloc(64 * 1024, 7);
    const write = () => new Promise<void>((resolve) => ((written += chunk.length), stream.write(chunk, () => ((accepted += chunk.length), resolve()))));
    // Write until the writes stop being taken.
    for (;;) {
      const taken = await Promise.race([write().then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 300))]);
      if (!taken) break;
      assert.ok(accepted <= STREAM_WINDOW * 2, `the sender went on past the window (${accepted} bytes)`);
    }
    assert.ok(accepted >= STREAM_WINDOW - chunk.length && accepted <= STREAM_WINDOW + 2 * chunk.length, `stopped after ${accepted} bytes, window ${STREAM_WINDOW}`);
    served.pause();
    stream.end();
    served.respond({ status: 200, headers: {} });
    served.end();
    const received = await digest(served);
    assert.equal(received.bytes, written, "everything written arrived once the reader read again");
    close();
  });

  it("a cancelled stream is reset at the other end, which sees why", async () => {
    let served!: (stream: MuxStream) => void;
    const arrived = new Promise<MuxStream>((resolve) => (served = resolve));
    const { gateway, close } = await pair({ onStream: (stream) => served(stream) });
    const stream = gateway.open(head, true);
    const atAgent = await arrived;
    atAgent.on("error", () => undefined);
    stream.cancel();
    await closed(atAgent);
    assert.equal(atAgent.resetReason, "cancel");
    assert.equal(gateway.size, 0);
    close();
  });

  it("refuses a stream over the agent's limit; the ones within it are served", async () => {
    const { gateway, close } = await pair({ maxStreams: 1, onStream: (stream) => stream.on("error", () => undefined) });
    const first = gateway.open({ ...head, method: "GET" }, false);
    first.on("error", () => undefined);
    const second = gateway.open({ ...head, method: "GET" }, false);
    second.on("error", () => undefined);
    await closed(second);
    assert.equal(second.resetReason, "refused");
    assert.equal(first.destroyed, false);
    close();
  });

  it("an answer given without reading the body stands; the sender stops sending it", async () => {
    const { gateway, close } = await pair({
      onStream: (stream) => {
        stream.respond({ status: 403, headers: {} });
        stream.end("refused");
        stream.stopReading();
      },
    });
    const stream = gateway.open(head, true);
    const stopped = new Promise((resolve) => stream.once("stopped", resolve));
    const answer = await response(stream);
    await stopped;
    stream.write(Buffer.alloc(STREAM_WINDOW * 2)); // dropped, without waiting for credit
    stream.end();
    assert.equal(answer.status, 403);
    assert.equal(Buffer.concat(await stream.toArray()).toString(), "refused");
    await closed(stream);
    assert.equal(stream.resetReason, undefined);
    close();
  });

  it("GOAWAY: the gateway hears of it, the stream in flight finishes, then the connection closes", async () => {
    let served!: MuxStream;
    const { gateway, agent, events } = await pair({ onStream: (stream) => (served = stream) });
    const stream = gateway.open({ ...head, method: "GET" }, false);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const closing = agent.close(Date.now() + 5000);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(events, ["goaway"]);
    served.resume();
    served.respond({ status: 200, headers: {} });
    served.end("done");
    assert.equal((await response(stream)).status, 200);
    assert.equal(Buffer.concat(await stream.toArray()).toString(), "done");
    await closing;
    await gateway.closedPromise;
  });

  it("closes the connection on frames that break the protocol, saying why", async () => {
    const cases: [string, Buffer, RegExp][] = [
      ["data beyond the window", Buffer.concat([frame(1, 0, 1, JSON.stringify(head)), ...Array.from({ length: 17 }, () => frame(3, 0, 1, Buffer.alloc(256 * 1024)))]), /beyond the stream's window/],
      ["an oversized control frame", frame(1, 0, 1, Buffer.alloc(MAX_CONTROL_FRAME + 1, 32)), /control frame of/],
      ["a request head without a path", frame(1, 1, 1, JSON.stringify({ method: "GET", headers: {} })), /without method, path or headers/],
      ["a reused stream id", Buffer.concat([frame(1, 1, 2, JSON.stringify(head)), frame(1, 1, 2, JSON.stringify(head))]), /stream 2 reused/],
      ["an unknown frame type", frame(42, 0, 0), /unknown frame type 42/],
    ];
    for (const [what, bytes, expected] of cases) {
      const [raw, other] = await socketPair();
      const errors: string[] = [];
      // The agent reads nothing, so credit is never returned.
      const agent = new MuxConnection(other, { maxStreams: 4, onStream: (stream) => stream.on("error", () => undefined), onProtocolError: (message) => errors.push(message) });
      raw.on("data", () => undefined);
      raw.write(bytes);
      await agent.closedPromise;
      assert.match(errors.join("; "), expected, what);
      raw.destroy();
    }
  });

  it("reads frames split at any byte across reads", async () => {
    const [raw, other] = await socketPair();
    const served = new Promise<[MuxStream, RequestHead]>((resolve) => new MuxConnection(other, { maxStreams: 1, onStream: (stream, request) => resolve([stream.on("error", () => undefined), request]) }));
    raw.setNoDelay(true);
    const bytes = Buffer.concat([frame(1, 0, 1, JSON.stringify(head)), frame(3, 0, 1, "hello "), frame(3, 1, 1, "world")]);
    for (const byte of bytes) {
      raw.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const [stream, request] = await served;
    assert.deepEqual(request, head);
    assert.equal(Buffer.concat(await stream.toArray()).toString(), "hello world");
    raw.destroy();
  });

  it("a ping left unanswered closes the connection", async () => {
    const [raw, other] = await socketPair();
    const errors: string[] = [];
    const agent = new MuxConnection(other, { maxStreams: 1, onStream: () => undefined, pingIntervalMs: 30, pingTimeoutMs: 100, onProtocolError: (message) => errors.push(message) });
    const pings: number[] = [];
    raw.on("data", (chunk: Buffer) => pings.push(chunk[0]));
    await agent.closedPromise;
    assert.equal(pings[0], 6, "the peer was pinged");
    assert.deepEqual(errors, ["keepalive ping unanswered"]);
    raw.destroy();
  });

  it("a dropped connection ends its open streams with an error", async () => {
    const { gateway, agent } = await pair({ onStream: (stream) => stream.on("error", () => undefined) });
    const stream = gateway.open(head, true);
    const failed = new Promise<Error>((resolve) => stream.once("error", resolve));
    await new Promise((resolve) => setTimeout(resolve, 30));
    agent.destroy();
    assert.match((await failed).message, /closed|reset/);
  });
});
