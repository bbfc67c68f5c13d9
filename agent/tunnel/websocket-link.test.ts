import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import type { Socket } from "node:net";
import { WebSocket } from "../../protocol/websocket";
import { roundTrip } from "./websocket-link";

/** A socket stand-in: what the WebSocket writes is kept; what it reads is fed by the test. */
class FakeSocket extends EventEmitter {
  written: Buffer[] = [];
  setNoDelay() {}
  resume() {}
  write(data: Buffer) {
    this.written.push(Buffer.from(data));
    return true;
  }
  end() {}
  destroy() {}
}

/** A server's (unmasked) frame of `opcode` and `payload`. */
const serverFrame = (opcode: number, payload: string) =>
  Buffer.concat([Buffer.from([0x80 | opcode, Buffer.byteLength(payload)]), Buffer.from(payload)]);

/** The payload of a client's (masked) frame, unmasked, and its opcode. */
function clientFrame(bytes: Buffer): [number, string] {
  assert.equal(bytes[1] & 0x80, 0x80, "masked");
  const length = bytes[1] & 0x7f;
  const key = bytes.subarray(2, 6);
  const payload = Buffer.from(bytes.subarray(6, 6 + length).map((byte, i) => byte ^ key[i % 4]));
  return [bytes[0] & 0x0f, payload.toString("latin1")];
}

describe("roundTrip: a ping and its own pong", () => {
  it("sends a ping with a payload of its own and resolves on the pong echoing it, not on another", async () => {
    const socket = new FakeSocket();
    const ws = new WebSocket(socket as unknown as Socket, true);
    // A keepalive's ping first: its pong, arriving during the round trip, answers that one, not the round trip's.
    const keepalive = ws.ping();
    let done = false;
    const trip = roundTrip(ws, Date.now() + 60_000).then(() => (done = true));
    const [[opcode1, first], [opcode2, second]] = socket.written.map(clientFrame);
    assert.deepEqual([opcode1, opcode2, first], [0x9, 0x9, keepalive]);
    assert.notEqual(second, first);
    // The keepalive's pong, an unsolicited empty one, then a message: read in order, so once the message is heard the
    // pongs before it were too.
    const heard = once(ws, "message");
    socket.emit("data", Buffer.concat([serverFrame(0xa, first), serverFrame(0xa, ""), serverFrame(0x1, "run")]));
    await heard;
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(done, false, "resolved on a pong that was not its own");
    socket.emit("data", serverFrame(0xa, second));
    await trip;
  });

  it("resolves when the link closes or the deadline passes, unanswered", async () => {
    const closing = new WebSocket(new FakeSocket() as unknown as Socket, true);
    const trip = roundTrip(closing, Date.now() + 60_000);
    closing.close();
    await trip;
    await roundTrip(new WebSocket(new FakeSocket() as unknown as Socket, true), Date.now() + 5);
  });
});
