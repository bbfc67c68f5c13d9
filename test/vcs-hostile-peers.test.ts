import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createSign, generateKeyPairSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import http from "node:http";
import type { Socket } from "node:net";
import path from "node:path";
import { vcsAgentSettings } from "../agent/config/vcs-agent";
import { dialGateway } from "../agent/tunnel/dial";
import { vcsAgentRole } from "../agent/vcs-agent/agent";
import { packageRoot, RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { createPool } from "../gateway/pools";
import {
  CLIENT_PREFACE,
  data,
  FLAG,
  FRAME,
  FrameReader,
  headers,
  ping,
  rstStream,
  SETTING,
  settings,
  settingsAck,
  type ReadFrame,
} from "../devkit/h2-frames";
import { LocalVcs } from "../devkit/local-vcs";
import { capturingLogger, eventually, freePort, rawRequest, scratchDir, serviceKey } from "../devkit/helpers";
import { FLOWS_CONNECT_PATH } from "../protocol/flows";
import { newKey } from "../protocol/websocket";
import { proofPayload, WORKER_CONNECT_PATH } from "../protocol/worker";
import { memoryMb, statuses, vcsStack } from "./vcs-stack";

/** One end of an HTTP/2 connection driven by hand: frames written as given, frames read as they come. */
function peer(socket: Socket, prefaceToSkip: number) {
  const frames: ReadFrame[] = [];
  const reader = new FrameReader(prefaceToSkip);
  let closed = false;
  socket.on("data", (chunk: Buffer) => {
    const read = reader.push(chunk);
    frames.push(...read);
    // A GOAWAY ends the connection for our purposes: no new stream would be served on it.
    if (read.some((frame) => frame.type === FRAME.GOAWAY)) closed = true;
  });
  socket.on("error", () => undefined);
  socket.once("close", () => (closed = true));
  socket.resume();
  return {
    socket,
    frames,
    get closed() {
      return closed;
    },
    send: (...buffers: Buffer[]) => void (socket.writable && socket.write(Buffer.concat(buffers))),
    /** The first frame (from `from` on) that matches, or undefined if the connection closed first. */
    until: (match: (frame: ReadFrame) => boolean, from = 0) =>
      eventually(
        () => frames.slice(from).find(match) ?? (closed ? ({ type: -1 } as ReadFrame) : undefined),
        10_000,
        "a frame from the peer",
      ),
  };
}

/** Write frames as fast as the peer takes them, never reading; stops when it hangs up. Returns the bytes sent. */
async function flood(socket: Socket, unit: Buffer, limitMb: number): Promise<number> {
  socket.pause();
  const block = Buffer.concat(Array(4096).fill(unit));
  let sent = 0;
  while (sent < limitMb * 1024 * 1024 && !socket.destroyed) {
    if (!socket.write(block))
      await new Promise((resolve) => (socket.once("drain", resolve), socket.once("close", resolve)));
    sent += block.length;
  }
  return sent;
}

const request = (id: number, method: string, target: string, extra: [string, string][] = [], endStream = false) =>
  headers(
    id,
    [[":method", method], [":scheme", "http"], [":authority", "gateway"], [":path", target], ...extra],
    endStream,
  );

describe("hostile peers on the tunnel: a gateway against an agent, an agent against a gateway", function () {
  this.timeout(30_000);
  let vcs: LocalVcs;
  before(async () => {
    vcs = new LocalVcs();
    vcs.createRepository("group/repo.git");
    await vcs.listen();
  });
  after(() => vcs.close());

  /** A "gateway" that accepts a VCS agent's upgrade and then speaks HTTP/2 frames by hand. */
  async function rawGateway() {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const sockets: Socket[] = [];
    let taken = 0;
    const server = http.createServer((_, res) => res.writeHead(404).end());
    server.on("upgrade", (_req, socket: Socket) => {
      socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: agentpools-h2\r\n\r\n");
      sockets.push(socket);
    });
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
    return {
      url,
      token: createPool("git", "vcs", url).token,
      /** The agent's next connection, its SETTINGS acknowledged, ours sent. */
      async next() {
        const socket = await eventually(
          () => sockets.slice(taken).find((s) => !s.destroyed),
          10_000,
          "the agent to connect",
        );
        taken = sockets.indexOf(socket) + 1;
        const agent = peer(socket, 0);
        agent.send(CLIENT_PREFACE, settings(), windowFor());
        await agent.until((f) => f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK));
        agent.send(settingsAck());
        return agent;
      },
      close: () => new Promise<void>((resolve) => (sockets.forEach((s) => s.destroy()), server.close(() => resolve()))),
    };
  }
  // A connection window as a real gateway gives, so an agent's answers are not held at 64 KiB.
  const windowFor = () => Buffer.from([0, 0, 4, FRAME.WINDOW_UPDATE, 0, 0, 0, 0, 0, 0, 0xf0, 0, 0]);

  describe("request smuggling from the tunnel side: what reaches the VCS", () => {
    let gateway: Awaited<ReturnType<typeof rawGateway>>;
    let agent: Awaited<ReturnType<typeof vcsAgentRole.start>>;
    const agentLog = capturingLogger("vcs-agent");
    let tunnel: ReturnType<typeof peer>;
    let nextId = 1;
    before(async () => {
      gateway = await rawGateway();
      agent = await vcsAgentRole.start(
        vcsAgentSettings.parse({
          token: gateway.token,
          targetBaseEndpoint: vcs.url,
          vendor: "gitlab",
          allowedProjects: "group/repo",
        }),
        { log: agentLog.log },
      );
    });
    after(async () => {
      await agent.drain(Date.now() + 500);
      await gateway.close();
    });
    /** A live tunnel for the next test (the last may have been closed as malformed). */
    beforeEach(async () => {
      if (!tunnel || tunnel.closed) {
        tunnel = await gateway.next();
        nextId = 1;
      }
    });
    // A write carries no query: its tag is the merge request it comments on.
    const notes = (tag: string) => `/api/v4/projects/group%2Frepo/merge_requests/${tag}/notes`;
    const tagged = (tag: string) => (text: string) =>
      text.includes(`t=${tag}`) || text.includes(`/merge_requests/${tag}/notes`);
    const json = [["content-type", "application/json"]] as [string, string][];
    /** Wait for the stream's outcome: an answer, a reset, or the connection closed. */
    const outcome = (id: number, from: number) =>
      tunnel.until(
        (f) =>
          (f.stream === id && (f.type === FRAME.HEADERS || f.type === FRAME.RST_STREAM)) || f.type === FRAME.GOAWAY,
        from,
      );
    /** What the VCS made of a tagged request: settled (answered or dropped) before it is judged. */
    const atVcs = async (tag: string) => {
      await eventually(
        () =>
          !vcs.hits.some(tagged(tag)) || vcs.received.some((r) => tagged(tag)(r.url)) || vcs.aborted.some(tagged(tag)),
        5000,
        "the VCS to settle",
      );
      return vcs.received.filter((r) => tagged(tag)(r.url));
    };

    it("DATA past the declared content-length: the VCS never reads a byte beyond it, nor the request hidden there", async () => {
      const id = (nextId += 2);
      const from = tunnel.frames.length;
      tunnel.send(
        request(id, "POST", notes("past"), [...json, ["content-length", "7"]]),
        data(id, '{"a":1}'),
        data(id, "\r\n\r\nPOST /group/repo.git/git-receive-pack HTTP/1.1\r\nHost: vcs\r\n\r\n", true),
      );
      await outcome(id, from);
      for (const received of await atVcs("past"))
        assert.equal(received.body.toString(), '{"a":1}', "at most the declared bytes");
      assert.ok(!vcs.hits.some((h) => h.includes("receive-pack")));
    });

    it("DATA short of the declared content-length: the VCS never reads it as a whole request", async () => {
      const id = (nextId += 2);
      const from = tunnel.frames.length;
      tunnel.send(request(id, "POST", notes("short"), [...json, ["content-length", "500"]]), data(id, '{"a":1}', true));
      await outcome(id, from);
      assert.deepEqual(await atVcs("short"), []);
    });

    it("framing headers HTTP/2 forbids (Transfer-Encoding, Connection), two Content-Lengths, a Content-Length that is not a number: refused before the VCS", async () => {
      const cases: [string, [string, string][]][] = [
        ["te", [["transfer-encoding", "chunked"]]],
        ["conn", [["connection", "keep-alive"]]],
        [
          "twocl",
          [
            ["content-length", "7"],
            ["content-length", "70"],
          ],
        ],
        ["nancl", [["content-length", "7, 7"]]],
      ];
      for (const [tag, extra] of cases) {
        if (tunnel.closed) tunnel = await gateway.next();
        const id = (nextId += 2);
        const from = tunnel.frames.length;
        tunnel.send(request(id, "POST", notes(tag), [...json, ...extra]), data(id, '{"a":1}', true));
        await outcome(id, from);
        assert.deepEqual(await atVcs(tag), [], tag);
        assert.ok(!vcs.hits.some(tagged(tag)), `${tag} reached the VCS`);
      }
    });

    it("a GET with a body is refused (400) and nothing reaches the VCS", async () => {
      const id = (nextId += 2);
      const from = tunnel.frames.length;
      tunnel.send(
        request(id, "GET", "/api/v4/projects/group%2Frepo?t=getbody"),
        data(id, "DELETE /api/v4/projects/group%2Frepo HTTP/1.1\r\n\r\n", true),
      );
      const frame = await outcome(id, from);
      assert.equal(frame.type, FRAME.HEADERS, "the agent answered");
      await eventually(() =>
        agentLog.lines.find(
          (l) =>
            l.msg === "denied" &&
            String(l.path).includes("t=getbody") &&
            l.status === 400 &&
            /has no body/.test(l.reason),
        ),
      );
      assert.ok(!vcs.hits.some((h) => h.includes("t=getbody")));
    });

    it("a body without a length crosses in chunks the agent makes: the VCS reads exactly its bytes, and a request hidden in them stays a body", async () => {
      const body =
        '{"a":1}\r\n0\r\n\r\nPOST /group/repo.git/git-receive-pack HTTP/1.1\r\nHost: vcs\r\nContent-Length: 4\r\n\r\n0000';
      const id = (nextId += 2);
      const from = tunnel.frames.length;
      tunnel.send(
        request(id, "POST", notes("chunks"), json),
        data(id, body.slice(0, 20)),
        data(id, body.slice(20), true),
      );
      await outcome(id, from);
      const [received, ...others] = await atVcs("chunks");
      assert.deepEqual(others, []);
      assert.equal(received.body.toString(), body);
      const names = received.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      assert.deepEqual([names.includes("transfer-encoding"), names.includes("content-length")], [true, false]);
      assert.ok(!vcs.hits.some((h) => h.includes("receive-pack")));
    });

    it("the gateway's Host, :authority, and a target with a line break never choose what the VCS sees", async () => {
      const id = (nextId += 2);
      let from = tunnel.frames.length;
      tunnel.send(
        request(
          id,
          "GET",
          "/api/v4/projects/group%2Frepo?t=host",
          [
            ["host", "admin.internal"],
            ["x-forwarded-host", "admin.internal"],
          ],
          true,
        ),
      );
      await outcome(id, from);
      const [received] = await atVcs("host");
      assert.equal(
        received.rawHeaders[received.rawHeaders.findIndex((n) => n.toLowerCase() === "host") + 1],
        new URL(vcs.url).host,
      );
      assert.ok(!received.rawHeaders.map((n) => n.toLowerCase()).includes("x-forwarded-host"));
      const split = (nextId += 2);
      from = tunnel.frames.length;
      tunnel.send(request(split, "GET", "/api/v4/version?t=crlf HTTP/1.1\r\nX-Injected: 1", [], true));
      await outcome(split, from);
      assert.ok(!vcs.hits.some((h) => h.includes("t=crlf")));
    });
  });

  describe("floods: a peer that never reads cannot grow the other side's memory", () => {
    const children: ChildProcess[] = [];
    afterEach(() => {
      for (const child of children.splice(0)) child.kill("SIGKILL");
    });

    it("a hostile agent flooding a gateway process with PING and SETTINGS it never reads the answers to", async () => {
      const dir = scratchDir("flood-gateway-");
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const pool = createPool("git", "vcs", url);
      const service = serviceKey();
      const config = path.join(dir, "gateway.json");
      writeFileSync(
        config,
        JSON.stringify({
          listen: { host: "127.0.0.1", port },
          publicUrl: url,
          pools: [pool.pool],
          keys: [service.definition],
        }),
      );
      const gateway = spawn(
        process.execPath,
        [path.join(packageRoot(), "build/gateway/main.js"), "serve", "--config", config],
        { stdio: "ignore" },
      );
      children.push(gateway);
      const alive = async () =>
        (await rawRequest(url, "/_agentpools/api/pools", { headers: service.headers }).catch(() => ({ status: 0 })))
          .status === 200;
      await eventually(alive, 10_000, "the gateway to serve");
      for (const [kind, unit] of [
        ["PING", ping()],
        ["SETTINGS", settings([[SETTING.INITIAL_WINDOW_SIZE, 65535]])],
      ] as const) {
        const before = memoryMb(gateway.pid as number);
        const socket = await dialGateway(new URL(url), {
          authorization: `Bearer ${pool.token}`,
          "x-agentpools-role": "vcs-agent",
        });
        socket.write(settings([[SETTING.MAX_CONCURRENT_STREAMS, 4]]));
        const sent = await flood(socket, unit, 64);
        const after = memoryMb(gateway.pid as number);
        assert.ok(
          sent < 64 * 1024 * 1024,
          `${kind}: the gateway hung up on the flood (after ${(sent / 1048576).toFixed(1)} MiB)`,
        );
        assert.ok(
          after.peak - before.peak < 32,
          `${kind}: gateway peak memory grew ${(after.peak - before.peak).toFixed(1)} MB`,
        );
        assert.ok(await alive(), "the gateway goes on serving");
      }
    });

    it("a hostile gateway flooding an agent process (PING, SETTINGS, rapid resets, answers it never reads)", async () => {
      const gateway = await rawGateway();
      try {
        const agent = spawn(
          process.execPath,
          [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/vcs-agent.js")],
          {
            env: {
              PATH: process.env.PATH,
              SPACELIFT_VCS_AGENT_POOL_TOKEN: gateway.token,
              SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: vcs.url,
              SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
              SPACELIFT_VCS_AGENT_PARALLELISM: "4",
            },
            stdio: "ignore",
          },
        );
        children.push(agent);
        const resets = Buffer.concat(
          Array.from({ length: 64 }, (_, i) =>
            Buffer.concat([request(2 * i + 1, "GET", "/admin", [], true), rstStream(2 * i + 1)]),
          ),
        );
        let baseline: number | undefined;
        for (const [kind, unit] of [
          ["PING", ping()],
          ["SETTINGS", settings([[SETTING.INITIAL_WINDOW_SIZE, 65535]])],
          ["rapid reset", resets],
        ] as const) {
          const tunnel = await gateway.next();
          baseline ??= memoryMb(agent.pid as number).peak;
          const sent = await flood(tunnel.socket, unit, 64);
          assert.ok(sent < 64 * 1024 * 1024, `${kind}: the agent hung up on the flood`);
          const grew = memoryMb(agent.pid as number).peak - baseline;
          assert.ok(grew < 32, `${kind}: agent peak memory grew ${grew.toFixed(1)} MB`);
        }
        // Answers it never reads: four 256 MB downloads, the socket never read again.
        const tunnel = await gateway.next();
        tunnel.socket.pause();
        for (let i = 0; i < 4; i++)
          tunnel.send(
            request(
              2 * i + 1,
              "GET",
              `/api/v4/projects/group%2Frepo/repository/archive?size=${256 << 20}&t=unread${i}`,
              [],
              true,
            ),
          );
        // The agent has taken all it will: each download's writes at the VCS wait for the agent to read.
        const blocked = () => [0, 1, 2, 3].every((i) => [...vcs.blocked].some((url) => url.includes(`t=unread${i}`)));
        await eventually(blocked, 10_000, "backpressure to reach the VCS");
        const grew = memoryMb(agent.pid as number).peak - (baseline ?? 0);
        assert.ok(grew < 32, `unread answers: agent peak memory grew ${grew.toFixed(1)} MB`);
      } finally {
        await gateway.close();
      }
    });
  });

  describe("a hostile agent's answers are checked before a byte reaches the client", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    let answer: (id: number) => Buffer[] = () => [];
    let agent: ReturnType<typeof peer> | undefined;
    before(async () => (stack = await vcsStack(vcs)));
    after(() => stack.close());
    // A stand-in agent: the real dial and upgrade, then frames by hand. A malformed answer
    // costs it its connection, so each test dials again when it must.
    const connect = async () => {
      await eventually(() => stack.summary().connections === 0, 5000, "the last stand-in gone");
      const socket = await dialGateway(new URL(stack.url), {
        authorization: `Bearer ${stack.pool.token}`,
        "x-agentpools-role": "vcs-agent",
      });
      const current = (agent = peer(socket, CLIENT_PREFACE.length));
      current.send(settings([[SETTING.MAX_CONCURRENT_STREAMS, 4]]));
      socket.on("data", () => {
        for (const frame of current.frames.splice(0)) {
          if (frame.type === FRAME.SETTINGS && !(frame.flags & FLAG.ACK)) current.send(settingsAck());
          if (frame.type === FRAME.HEADERS) current.send(...answer(frame.stream));
        }
      });
      await eventually(() => stack.summary().connections === 1);
    };
    beforeEach(async () => {
      if (!agent || agent.closed) await connect();
    });

    const status = (id: number, code: string, extra: [string, string][] = [], endStream = false) =>
      headers(id, [[":status", code], ...extra], endStream);

    it("bytes after a content-length of 0 never reach the client", async () => {
      answer = (id) => [
        status(id, "200", [["content-length", "0"]]),
        data(id, "HTTP/1.1 200 OK\r\nSet-Cookie: stolen=1\r\n\r\n", true),
      ];
      const reply = await stack.raw(
        `GET /git/api/v4/version HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\nConnection: close\r\n\r\n`,
      );
      assert.ok(!reply.includes("stolen"), reply);
      assert.ok(statuses(reply).length <= 1);
    });

    it("a body shorter than its content-length is cut, never ended as if whole", async () => {
      answer = (id) => [status(id, "200", [["content-length", "10"]]), data(id, "12345", true)];
      const reply = await stack.request("/git/api/v4/version");
      assert.equal(reply.complete, false, `${reply.status} ${reply.body}`);
    });

    it("a header value with a line break is dropped; a framing header or a status that is not final: 502; nothing of them forwarded", async () => {
      answer = (id) => [status(id, "200", [["x-injected", "a\r\nset-cookie: stolen=1"]]), data(id, "body", true)];
      const injected = await stack.raw(
        `GET /git/api/v4/version HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\nConnection: close\r\n\r\n`,
      );
      assert.ok(!/stolen|x-injected/i.test(injected), injected);
      for (const bad of [
        [["transfer-encoding", "chunked"]],
        [["connection", "close"]],
        [["keep-alive", "timeout=5"]],
      ] as [string, string][][]) {
        if (agent?.closed) await connect();
        answer = (id) => [status(id, "200", bad), data(id, "body", true)];
        const reply = await stack.request("/git/api/v4/version");
        assert.equal(reply.status, 502, JSON.stringify(bad));
        assert.ok(!reply.body.includes("body"));
      }
      if (agent?.closed) await connect();
      answer = (id) => [status(id, "101", [], true)];
      assert.equal((await stack.request("/git/api/v4/version")).status, 502);
      assert.equal((await stack.request("/_agentpools/api/pools")).status, 200, "the gateway goes on serving");
    });
  });

  describe("a hostile gateway refusing an agent", () => {
    it("an endless refusal: the agent reads a KiB of it and hangs up, within the dial's time", async () => {
      let sent = 0;
      let closed!: () => void;
      const hungUp = new Promise<void>((resolve) => (closed = resolve));
      const server = http.createServer((_req, res) => {
        res.writeHead(403, { "content-type": "text/plain" });
        const chunk = Buffer.alloc(64 * 1024, "x");
        const more = () => {
          while (!res.destroyed && res.write(chunk)) sent += chunk.length;
        };
        res.on("drain", more);
        res.once("close", closed);
        more();
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      try {
        const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
        const error = await dialGateway(new URL(url), { authorization: "Bearer x" }, { timeoutMs: 5000 }).then(
          () => undefined,
          (reason: Error & { status?: number }) => reason,
        );
        assert.equal(error?.status, 403);
        assert.ok((error?.message.length ?? 0) < 1200, "the reason is cut to its first KiB");
        await hungUp;
        assert.ok(sent < 16 * 1024 * 1024, `the agent kept reading: ${sent} bytes sent before it hung up`);
      } finally {
        server.closeAllConnections();
        server.close();
      }
    });
  });

  describe("credentials of another role", () => {
    it("a worker token, a Flows secret, a service key or another role never opens a VCS tunnel; a VCS token never opens a Flows or worker link", async () => {
      const dir = scratchDir("roles-");
      const url = "http://127.0.0.1:1";
      const made = await makePoolKeyAndRequest("workers");
      const worker = createPool(
        "workers",
        "worker",
        url,
        await signPoolRequest(await loadOrCreateAuthority(dir), made.csr, "workers"),
      );
      const flows = createPool("flows", "flows", url);
      const stack = await vcsStack(vcs, { pools: [worker.pool, flows.pool] });
      try {
        const refused = async (headers: Record<string, string>, options: Parameters<typeof dialGateway>[2] = {}) => {
          const outcome = await dialGateway(new URL(stack.url), headers, options).then(
            (socket) => (socket.destroy(), 101),
            (error: { status?: number }) => error.status,
          );
          return outcome;
        };
        const vcsRole = { "x-agentpools-role": "vcs-agent" };
        assert.equal(
          await refused({ authorization: `Bearer ${worker.token}`, ...vcsRole }),
          401,
          "a worker token at the VCS tunnel",
        );
        assert.equal(
          await refused({ authorization: `Bearer ${flows.token}`, ...vcsRole }),
          401,
          "a Flows secret at the VCS tunnel",
        );
        assert.equal(
          await refused({ authorization: `Bearer ${stack.keys.a.key}`, ...vcsRole }),
          401,
          "a service key at the VCS tunnel",
        );
        assert.equal(
          await refused({ authorization: `Bearer ${stack.pool.token}`, "x-agentpools-role": "flows-agent" }),
          401,
          "a VCS token claiming another role",
        );
        const webSocket = { path: FLOWS_CONNECT_PATH, protocol: "websocket" };
        const wsHeaders = { "sec-websocket-key": newKey(), "sec-websocket-version": "13" };
        assert.equal(
          await refused(
            { authorization: `Bearer ${stack.pool.token}`, "x-agentpools-pool": "git", ...wsHeaders },
            webSocket,
          ),
          401,
          "a VCS token at the Flows link",
        );
        assert.equal(
          await refused(
            { authorization: `Bearer ${stack.pool.token}`, "x-agentpools-pool": "flows", ...wsHeaders },
            webSocket,
          ),
          401,
          "a VCS token for a Flows pool",
        );
        const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
        const timestamp = String(Date.now());
        const proof = `${timestamp}.${createSign("sha256").update(proofPayload("git", timestamp)).sign(privateKey).toString("base64url")}`;
        const secret = JSON.parse(Buffer.from(stack.pool.token.slice(4), "base64url").toString()).secret;
        const workerHeaders = {
          authorization: `Bearer ${secret}`,
          "x-agentpools-pool": "git",
          "x-agentpools-worker": "00000000-0000-4000-8000-000000000000",
          "x-agentpools-proof": proof,
          ...wsHeaders,
        };
        assert.equal(
          await refused(workerHeaders, { path: WORKER_CONNECT_PATH, protocol: "websocket" }),
          401,
          "a VCS pool's secret at the worker link",
        );
        assert.deepEqual(
          stack.gateway.summary().map((p) => [p.name, p.connections]),
          [
            ["git", 0],
            ["workers", 0],
            ["flows", 0],
          ],
        );
        assert.ok(!JSON.stringify(stack.gatewayLog.lines).includes(secret), "refusals never log a secret");
      } finally {
        await stack.close();
      }
    });
  });
});
