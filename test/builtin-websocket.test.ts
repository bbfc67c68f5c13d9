// The EC2 bundles' WebSocket to the gateway: Node's own client (agent/tunnel/builtin-websocket.ts), against a gateway
// side that is the reference gateway's codec, or hostile: what crosses the proxy, what a refusal says, what a silent
// or flooding gateway costs the agent.
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { dialWebSocket, type LinkSocket } from "../agent/tunnel/builtin-websocket";
import { PING_MESSAGE, WEBSOCKET_MAX_MESSAGE } from "../protocol/link";
import { acceptWebSocket, type WebSocket } from "../protocol/websocket";
import { eventually, recordingProxy } from "../devkit/helpers";

type Upgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;

/** A gateway stand-in on loopback whose upgrade handler the test gives; every upgrade request's headers are kept. */
async function gateway(onUpgrade: Upgrade) {
  const heads: http.IncomingHttpHeaders[] = [];
  const sockets = new Set<Duplex>();
  const server = http.createServer((_, res) => res.writeHead(426).end());
  server.on("upgrade", (req, socket, head) => {
    heads.push(req.headers);
    sockets.add(socket);
    socket.on("error", () => undefined);
    onUpgrade(req, socket, head);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = new URL(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}/_agentpools/workers/connect`);
  const close = () => {
    for (const socket of sockets) socket.destroy();
    return new Promise((resolve) => server.close(resolve));
  };
  return { url, heads, close };
}

/** The reference gateway's side of the WebSocket (its codec answers pings, PING_MESSAGE included). */
const accepting =
  (opened: (ws: WebSocket) => void = () => undefined): Upgrade =>
  (req, socket, head) =>
    opened(acceptWebSocket(req.headers, socket as net.Socket, head));

const closed = (link: LinkSocket) =>
  new Promise<void>((resolve) => (link.open ? link.once("close", resolve) : resolve()));

describe("the EC2 bundles' WebSocket (Node's own client) against a hostile gateway", () => {
  const cleanup: (() => unknown)[] = [];
  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) await step();
  });

  it("dials through the environment's proxy (NODE_USE_ENV_PROXY's): only the gateway's address crosses it", async () => {
    const gw = await gateway(accepting((ws) => ws.on("message", (text: string) => ws.send(`echo ${text}`))));
    cleanup.push(gw.close);
    const proxy = await recordingProxy();
    cleanup.push(proxy.close);
    // As the unit's NODE_USE_ENV_PROXY does at start; an http:// gateway goes by HTTP_PROXY.
    const restore = http.setGlobalProxyFromEnv({ HTTP_PROXY: proxy.url });
    cleanup.push(restore);
    const link = await dialWebSocket(gw.url, { authorization: "Bearer pool-secret", "x-agentpools-pool": "workers" });
    cleanup.push(() => (link.close(), closed(link)));
    const echoed = new Promise((resolve) => link.once("message", resolve));
    link.send("hello");
    assert.equal(await echoed, "echo hello");
    assert.deepEqual(proxy.asked, [gw.url.host], "the gateway, and nothing else, through the proxy");
    assert.equal(gw.heads[0].authorization, "Bearer pool-secret", "the credentials reach the gateway");
    assert.equal(gw.heads[0]["x-agentpools-pool"], "workers");
    assert.equal(gw.heads[0].upgrade, "websocket");
  });

  it("a refusal (401, 403) is told by its status, final for the link; nothing of the answer's body or the token", async () => {
    for (const status of [401, 403]) {
      const gw = await gateway((_, socket) =>
        socket.end(
          `HTTP/1.1 ${status} No\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{"error":"not you"}`,
        ),
      );
      cleanup.push(gw.close);
      const error = await dialWebSocket(gw.url, { authorization: "Bearer pool-secret" }).then(
        () => assert.fail("connected"),
        (e: Error & { status?: number }) => e,
      );
      assert.equal(error.status, status);
      assert.equal(error.message, `the gateway refused the connection: ${status}`);
    }
  });

  it("a gateway that does not listen, or answers with no upgrade at all, is a failure to retry (no status), saying why", async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, "127.0.0.1", () => {
        const { port } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    const refused = await dialWebSocket(new URL(`http://127.0.0.1:${port}/c`), {}).catch((e: Error) => e);
    assert.match((refused as Error).message, /ECONNREFUSED/);
    assert.equal((refused as { status?: number }).status, undefined);
    // Accepted, then silent: the dial gives up at its timeout.
    const gw = await gateway(() => undefined);
    cleanup.push(gw.close);
    const started = Date.now();
    const silent = await dialWebSocket(gw.url, {}, 50).catch((e: Error) => e);
    assert.match((silent as Error).message, /did not answer the upgrade/);
    assert.ok(Date.now() - started < 5_000);
  });

  it("keepalive: a gateway that answers stays connected; one that stops answering is dropped after the timeout", async () => {
    let received = 0;
    const gw = await gateway(accepting((ws) => ws.on("message", () => received++)));
    cleanup.push(gw.close);
    const live = await dialWebSocket(gw.url, {});
    cleanup.push(() => (live.close(), closed(live)));
    let timedOut = false;
    live.on("timeout", () => (timedOut = true));
    let pongs = 0;
    live.on("pong", () => pongs++);
    // Answered pings keep it past the timeout many times over (150 pings of 10 ms against 1 s).
    live.keepAlive(10, 1_000);
    await eventually(() => pongs >= 150, 10_000, "150 pings answered");
    assert.equal(live.open, true);
    assert.equal(timedOut, false);
    assert.equal(received, 0, "the pings never reached the gateway as messages");

    // The gateway's process stops: its socket is never read again.
    const hung = await gateway((req, socket, head) => {
      acceptWebSocket(req.headers, socket as net.Socket, head);
      (socket as net.Socket).pause();
      socket.removeAllListeners("data");
    });
    cleanup.push(hung.close);
    const link = await dialWebSocket(hung.url, {});
    const timeout = new Promise<void>((resolve) => link.once("timeout", resolve));
    link.keepAlive(10, 50);
    await timeout;
    await closed(link);
    assert.equal(link.open, false);
  });

  it("a link given up on (its pongs stopped, its dial timed out) leaves no connection behind, and hands on nothing after", async function () {
    this.timeout(10_000);
    // The gateway's side: connections it holds open, until the agent's end goes.
    const open = new Set<net.Socket>();
    const hold = (socket: net.Socket) => (open.add(socket), socket.on("close", () => open.delete(socket)));
    // It reads (so it sees the agent's end) but never answers: no pong, no close frame.
    const silent = await gateway((req, socket, head) => {
      hold(socket as net.Socket);
      acceptWebSocket(req.headers, socket as net.Socket, head);
      socket.removeAllListeners("data");
      socket.resume();
    });
    cleanup.push(silent.close);
    const late: string[] = [];
    for (let i = 0; i < 3; i++) {
      const link = await dialWebSocket(silent.url, {}, 1000);
      link.on("message", (text: string) => late.push(text));
      link.keepAlive(10, 50);
      await closed(link);
    }
    await eventually(() => open.size === 0, 5000, "every connection given up on is closed");
    assert.deepEqual(late, []);
    // A server that accepts the connection and never answers the upgrade.
    const mute = net.createServer((socket) => hold(socket).resume());
    await new Promise<void>((resolve) => mute.listen(0, "127.0.0.1", resolve));
    cleanup.push(() => new Promise((resolve) => (mute.close(resolve), open.forEach((socket) => socket.destroy()))));
    const url = new URL(`http://127.0.0.1:${(mute.address() as net.AddressInfo).port}/_agentpools/workers/connect`);
    for (let i = 0; i < 3; i++) await assert.rejects(dialWebSocket(url, {}, 100), /did not answer the upgrade/);
    await eventually(() => open.size === 0, 5000, "every timed-out dial's connection is closed");
  });

  it("a gateway's message over 16 MiB closes the link before it is handed on (undici's own cap is 128 MiB)", async function () {
    this.timeout(20_000);
    const gw = await gateway(accepting((ws) => ws.send("x".repeat(WEBSOCKET_MAX_MESSAGE + 1))));
    cleanup.push(gw.close);
    const link = await dialWebSocket(gw.url, {});
    const messages: string[] = [];
    link.on("message", (text: string) => messages.push(text));
    await closed(link);
    assert.deepEqual(messages, []);
    // At the cap exactly, it arrives.
    const atCap = await gateway(accepting((ws) => ws.send("y".repeat(WEBSOCKET_MAX_MESSAGE))));
    cleanup.push(atCap.close);
    const whole = await dialWebSocket(atCap.url, {});
    cleanup.push(() => (whole.close(), closed(whole)));
    const text = await new Promise<string>((resolve) => whole.once("message", resolve));
    assert.equal(text.length, WEBSOCKET_MAX_MESSAGE);
  });

  it("a ping's answer comes after every message the gateway sent before reading it (the Flows drain's round trip)", async () => {
    let gatewaySide!: WebSocket;
    const gw = await gateway(accepting((ws) => (gatewaySide = ws)));
    cleanup.push(gw.close);
    const link = await dialWebSocket(gw.url, {});
    cleanup.push(() => (link.close(), closed(link)));
    const order: string[] = [];
    link.on("message", (text: string) => order.push(text));
    const ponged = new Promise<void>((resolve) => link.once("pong", () => (order.push("pong"), resolve())));
    for (const n of [1, 2, 3]) gatewaySide.send(`run ${n}`);
    link.ping();
    await ponged;
    assert.deepEqual(order.slice(-4), ["run 1", "run 2", "run 3", "pong"]);
    assert.ok(!order.includes(PING_MESSAGE));
  });

  it("`sent` is called once the message has left (one at a time on a slow link), and at once on a closed link", async () => {
    const gw = await gateway(accepting());
    cleanup.push(gw.close);
    const link = await dialWebSocket(gw.url, {});
    const sent = await new Promise<boolean>((resolve) => link.send("x".repeat(1 << 20), () => resolve(true)));
    assert.equal(sent, true);
    link.close();
    await closed(link);
    assert.equal(await new Promise<boolean>((resolve) => link.send("late", () => resolve(true))), true);
  });
});
