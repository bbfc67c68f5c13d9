import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { capturingLogger, eventually } from "../../devkit/helpers";
import { backoffDelay, GatewayLink } from "./session";

describe("reconnect backoff", () => {
  const random = Math.random;
  afterEach(() => (Math.random = random));

  it("doubles from 0.5 s and never waits more than 5 s, however long the gateway was away", () => {
    Math.random = () => 0.999_999;
    assert.deepEqual(
      [0, 1, 2, 3].map((attempt) => Math.round(backoffDelay(attempt))),
      [500, 1000, 2000, 4000],
    );
    for (const attempt of [4, 10, 30, 1000]) {
      const delay = backoffDelay(attempt);
      assert.ok(delay <= 5000 && delay > 4990, `attempt ${attempt}: ${delay} ms`);
    }
  });

  it("is jittered over the whole range (full jitter), so a fleet does not return at once", () => {
    Math.random = () => 0;
    assert.equal(backoffDelay(30), 0);
    Math.random = () => 0.5;
    assert.equal(backoffDelay(30), 2500);
  });
});

describe("a link drained while it dials", () => {
  /** A link whose dial the test answers, and whose connections are emitters that end on "close". */
  class HeldDial extends GatewayLink<EventEmitter> {
    answer?: (socket: EventEmitter) => void;
    live?: EventEmitter;
    readonly closed: EventEmitter[] = [];
    protected dial() {
      return new Promise<EventEmitter>((resolve) => (this.answer = resolve));
    }
    protected serve(socket: EventEmitter) {
      this.live = socket;
      return new Promise<void>((resolve) => socket.once("close", resolve));
    }
    protected async closeGracefully() {
      if (!this.live) return;
      this.closed.push(this.live);
      this.live.emit("close");
    }
    get connected() {
      return this.live !== undefined;
    }
  }

  it("closes the connection that opens after the drain began, and ends (a drain found none to close, and waited)", async () => {
    const link = new HeldDial({
      gateway: new URL("http://127.0.0.1:9"),
      headers: {},
      log: capturingLogger("test").log,
    });
    await eventually(() => link.answer, 2000, "the dial");
    const drained = link.drain(Date.now() + 1000);
    const socket = new EventEmitter();
    link.answer?.(socket);
    const ended = await Promise.race([
      drained.then(() => true),
      new Promise<false>((resolve) => setTimeout(resolve, 2000, false)),
    ]);
    assert.equal(ended, true, "the drain ended");
    assert.deepEqual(link.closed, [socket], "the connection that opened meanwhile was closed");
  });
});
