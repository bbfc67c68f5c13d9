import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import type { Socket } from "node:net";
import { PING_MESSAGE, PONG_MESSAGE } from "./link";
import { MAX_FRAGMENTS, WebSocket } from "./websocket";

/** A socket stand-in: what the WebSocket writes is kept; what it reads is fed by the test. */
class FakeSocket extends EventEmitter {
  written: Buffer[] = [];
  writableLength = 0;
  ended = false;
  destroyed = false;
  setNoDelay() {}
  resume() {}
  write(data: Buffer) {
    this.written.push(Buffer.from(data));
    this.emit("written", data);
    return true;
  }
  end() {
    this.ended = true;
  }
  destroy() {
    this.destroyed = true;
  }
  feed(...chunks: Buffer[]) {
    for (const chunk of chunks) this.emit("data", chunk);
  }
}

/** One frame, as a peer would send it: masked (a client's) unless told otherwise. */
function frame(opcode: number, payload: Buffer, options: { mask?: boolean; fin?: boolean } = {}): Buffer {
  const mask = options.mask ?? true;
  const length = payload.length;
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const header = Buffer.alloc(2 + extended + (mask ? 4 : 0));
  header[0] = (options.fin === false ? 0 : 0x80) | opcode;
  header[1] = (mask ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127);
  if (extended === 2) header.writeUInt16BE(length, 2);
  if (extended === 8) header.writeBigUInt64BE(BigInt(length), 2);
  if (!mask) return Buffer.concat([header, payload]);
  const key = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
  key.copy(header, 2 + extended);
  return Buffer.concat([header, Buffer.from(payload.map((byte, i) => byte ^ key[i & 3]))]);
}

/** The server side of a WebSocket over a fake socket, with every message it emits. */
function server() {
  const socket = new FakeSocket();
  const ws = new WebSocket(socket as unknown as Socket, false);
  const messages: string[] = [];
  ws.on("message", (text: string) => messages.push(text));
  return { socket, ws, messages };
}

/** The close code of the close frame the WebSocket wrote, if any (server frames are unmasked). */
const closeCode = (socket: FakeSocket) => {
  const close = socket.written.find((f) => (f[0] & 0x0f) === 0x8);
  return close?.readUInt16BE(2);
};

describe("WebSocket framing (byte level)", () => {
  const text = "héllo, wörld: a message with multi-byte characters ✓";

  it("a frame split at every byte boundary reads as the same message", () => {
    const bytes = frame(0x1, Buffer.from(text));
    for (let cut = 1; cut < bytes.length; cut++) {
      const { socket, messages } = server();
      socket.feed(bytes.subarray(0, cut), bytes.subarray(cut));
      assert.deepEqual(messages, [text], `cut at ${cut}`);
    }
    const { socket, messages } = server();
    for (const byte of bytes) socket.feed(Buffer.from([byte]));
    assert.deepEqual(messages, [text], "one byte at a time");
  });

  it("several frames in one chunk: each message in order, a ping answered in between with its payload", () => {
    const { socket, messages } = server();
    socket.feed(
      Buffer.concat([frame(0x1, Buffer.from("one")), frame(0x9, Buffer.from("pp")), frame(0x1, Buffer.from("two"))]),
    );
    assert.deepEqual(messages, ["one", "two"]);
    const pong = socket.written.find((f) => (f[0] & 0x0f) === 0xa) as Buffer;
    assert.deepEqual([...pong], [0x8a, 2, 0x70, 0x70], "an unmasked final pong echoing the ping's payload");
  });

  it("a client's ping as text is answered in order with the pong text, and never reaches the gateway as a message", () => {
    const { socket, messages } = server();
    socket.feed(
      Buffer.concat([
        frame(0x1, Buffer.from("one")),
        frame(0x1, Buffer.from(PING_MESSAGE)),
        frame(0x1, Buffer.from("two")),
      ]),
    );
    assert.deepEqual(messages, ["one", "two"]);
    const texts = socket.written.filter((f) => (f[0] & 0x0f) === 0x1).map((f) => f.subarray(2).toString());
    assert.deepEqual(texts, [PONG_MESSAGE]);
    // Only the exact text: a message that merely holds it is the gateway's to read.
    const other = server();
    other.socket.feed(frame(0x1, Buffer.from(` ${PING_MESSAGE}`)));
    assert.deepEqual(other.messages, [` ${PING_MESSAGE}`]);
    assert.equal(other.socket.written.length, 0);
  });

  it("16-bit and 64-bit lengths, across chunk boundaries inside the length field", () => {
    for (const size of [125, 126, 300, 65535, 65536, 70_000]) {
      const payload = Buffer.alloc(size, "a");
      const bytes = frame(0x1, payload);
      const { socket, messages } = server();
      socket.feed(bytes.subarray(0, 3), bytes.subarray(3, 7), bytes.subarray(7));
      assert.equal(messages.length, 1, `size ${size}`);
      assert.equal(messages[0].length, size);
    }
  });

  it("a fragmented message is joined; a multi-byte character split between fragments survives", () => {
    const whole = Buffer.from(text);
    const cut = whole.indexOf(Buffer.from("✓")) + 1;
    const { socket, messages } = server();
    socket.feed(
      frame(0x1, whole.subarray(0, cut), { fin: false }),
      frame(0x9, Buffer.alloc(0)),
      frame(0x0, whole.subarray(cut)),
    );
    assert.deepEqual(messages, [text]);
  });

  it("a length over 16 MiB closes with 1009 as soon as the header is in, before any payload", () => {
    const { socket, ws, messages } = server();
    const header = Buffer.alloc(14);
    header[0] = 0x81;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(16 * 1024 * 1024 + 1), 2);
    socket.feed(header);
    assert.equal(ws.open, false);
    assert.equal(closeCode(socket), 1009);
    assert.deepEqual(messages, []);
  });

  it("fragments adding up to more than 16 MiB close with 1009", () => {
    const { socket, ws } = server();
    const part = Buffer.alloc(6 * 1024 * 1024, "x");
    socket.feed(frame(0x1, part, { fin: false }), frame(0x0, part, { fin: false }));
    assert.equal(ws.open, true);
    socket.feed(frame(0x0, part, { fin: false }));
    assert.equal(closeCode(socket), 1009);
  });

  it(`more than ${MAX_FRAGMENTS} pieces of one message close with 1009, empty ones too (6 bytes each on the wire)`, () => {
    const { socket, ws, messages } = server();
    const empty = frame(0x0, Buffer.alloc(0), { fin: false });
    socket.feed(frame(0x1, Buffer.from("a"), { fin: false }));
    for (let i = 0; i < MAX_FRAGMENTS - 2; i++) socket.feed(empty);
    socket.feed(frame(0x0, Buffer.from("b")));
    assert.deepEqual(messages, ["ab"], "a message in exactly the most pieces is read");
    socket.feed(frame(0x1, Buffer.alloc(0), { fin: false }));
    for (let i = 0; i < MAX_FRAGMENTS; i++) socket.feed(empty);
    assert.equal(closeCode(socket), 1009);
    assert.equal(ws.open, false);
  });

  it("a control frame over 125 bytes, or in pieces, closes with 1002 (RFC 6455 5.5): unanswered", () => {
    for (const ping of [frame(0x9, Buffer.alloc(126)), frame(0x9, Buffer.from("x"), { fin: false })]) {
      const { socket, ws } = server();
      socket.feed(ping);
      assert.equal(closeCode(socket), 1002);
      assert.ok(!socket.written.some((f) => (f[0] & 0x0f) === 0xa), "no pong");
      assert.equal(ws.open, false);
    }
  });

  it("pings are not answered while a message's worth waits to leave: a peer that pings and never reads fills no memory", () => {
    const { socket } = server();
    const waiting = socket as unknown as { writableLength: number };
    waiting.writableLength = 16 * 1024 * 1024;
    socket.feed(frame(0x9, Buffer.from("1")), frame(0x1, Buffer.from(PING_MESSAGE)));
    assert.equal(socket.written.length, 0, "nothing queued");
    waiting.writableLength = 0;
    socket.feed(frame(0x9, Buffer.from("2")), frame(0x1, Buffer.from(PING_MESSAGE)));
    assert.deepEqual(
      socket.written.map((f) => f.subarray(2).toString()),
      ["2", PONG_MESSAGE],
    );
  });

  it("a server refuses an unmasked frame (1002); a client refuses a masked one", () => {
    const { socket, ws, messages } = server();
    socket.feed(frame(0x1, Buffer.from("x"), { mask: false }));
    assert.equal(ws.open, false);
    assert.equal(closeCode(socket), 1002);
    assert.deepEqual(messages, []);

    const clientSocket = new FakeSocket();
    const client = new WebSocket(clientSocket as unknown as Socket, true);
    clientSocket.feed(frame(0x1, Buffer.from("x")));
    assert.equal(client.open, false);
  });

  it("a client reads the server's unmasked frames and masks its own", () => {
    const socket = new FakeSocket();
    const client = new WebSocket(socket as unknown as Socket, true);
    const got: string[] = [];
    client.on("message", (m: string) => got.push(m));
    socket.feed(frame(0x1, Buffer.from(text), { mask: false }));
    assert.deepEqual(got, [text]);
    client.send("abc");
    const sent = socket.written[0];
    assert.equal(sent[1] & 0x80, 0x80, "the mask bit is set");
    const key = sent.subarray(2, 6);
    assert.equal(Buffer.from(sent.subarray(6).map((b, i) => b ^ key[i & 3])).toString(), "abc");
  });

  it("every client frame has a mask key of its own, across the refills of the key pool", () => {
    const socket = new FakeSocket();
    const client = new WebSocket(socket as unknown as Socket, true);
    // 3,000 frames: the 4 KiB pool of random bytes is drawn again twice on the way.
    for (let i = 0; i < 3000; i++) client.send(`m${i}`);
    const keys = socket.written.map((sent) => sent.subarray(2, 6).toString("hex"));
    // 3,000 random 32-bit keys: a repeat is a one-in-a-thousand event; a reused pool would repeat them all.
    assert.ok(new Set(keys).size >= 2998, `${3000 - new Set(keys).size} keys repeated`);
    socket.written.forEach((sent, i) => {
      const key = sent.subarray(2, 6);
      assert.equal(Buffer.from(sent.subarray(6).map((b, j) => b ^ key[j & 3])).toString(), `m${i}`);
    });
  });

  it("a large message in small chunks is copied about once, not once per chunk", () => {
    const size = 1024 * 1024;
    const bytes = frame(0x1, Buffer.alloc(size, "z"));
    const chunks: Buffer[] = [];
    for (let at = 0; at < bytes.length; at += 1024) chunks.push(Buffer.from(bytes.subarray(at, at + 1024)));
    const { socket, messages } = server();
    let copied = 0;
    const { concat } = Buffer;
    const { copy } = Buffer.prototype;
    Buffer.concat = ((list: Uint8Array[], total?: number) => {
      const out = concat(list, total);
      copied += out.length;
      return out;
    }) as typeof Buffer.concat;
    Buffer.prototype.copy = function (this: Buffer, ...args: Parameters<Buffer["copy"]>) {
      const n = copy.apply(this, args);
      copied += n;
      return n;
    };
    try {
      socket.feed(...chunks);
    } finally {
      Buffer.concat = concat;
      Buffer.prototype.copy = copy;
    }
    assert.equal(messages.length, 1);
    assert.equal(messages[0].length, size);
    assert.ok(copied <= 2 * size, `${copied} bytes copied for a ${size}-byte message`);
  });

  it("the peer's FIN without a close frame closes it (the gateway's sockets allow half-open)", () => {
    const { socket, ws } = server();
    let closed = 0;
    ws.on("close", () => closed++);
    socket.emit("end");
    assert.equal(ws.open, false);
    assert.equal(socket.destroyed, true);
    socket.emit("close");
    assert.equal(closed, 1, "one close event");
  });

  it("keepAlive: a peer answering pings stays; one that stops answering is closed after the timeout", async () => {
    const { socket, ws } = server();
    let pings = 0;
    socket.on("written", (data: Buffer) => {
      if ((data[0] & 0x0f) !== 0x9) return;
      pings++;
      if (pings <= 3) socket.feed(frame(0xa, Buffer.alloc(0)));
    });
    const timedOut = once(ws, "timeout");
    ws.keepAlive(5, 30);
    await timedOut;
    assert.ok(pings >= 4, `${pings} pings: three answered, then unanswered ones until the timeout`);
    assert.equal(ws.open, false);
    assert.equal(closeCode(socket), 1001);
  });

  it("keepAlive: a peer whose pong waits behind a large message still arriving stays, while its bytes come", async () => {
    const { socket, ws, messages } = server();
    const large = frame(0x1, Buffer.alloc(256 * 1024, "a"));
    let at = 0;
    let pings = 0;
    // A slow link: a slice of the message per ping, several pings over the timeout, the pongs queued behind it.
    socket.on("written", (data: Buffer) => {
      if ((data[0] & 0x0f) !== 0x9 || at >= large.length) return;
      pings++;
      socket.feed(large.subarray(at, (at += 16 * 1024)));
      if (at >= large.length) socket.feed(frame(0xa, Buffer.alloc(0)));
    });
    const closed = once(ws, "close");
    ws.keepAlive(2, 10);
    await new Promise<void>(
      (resolve, reject) => (
        ws.on("message", () => resolve()),
        ws.once("close", () => reject(new Error(`closed after ${pings} pings, the message not arrived`)))
      ),
    );
    assert.ok(ws.open && pings >= 16, `${pings} pings`);
    assert.equal(messages[0].length, 256 * 1024);
    // Then silence: closed after the timeout.
    await closed;
    assert.equal(closeCode(socket), 1001);
  });
});
