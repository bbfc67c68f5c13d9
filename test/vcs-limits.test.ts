import assert from "node:assert/strict";
import net from "node:net";
import { LocalVcs } from "../devkit/local-vcs";
import { eventually } from "../devkit/helpers";
import { vcsStack } from "./vcs-stack";

/** Write a request and never read the answer: the socket stays open, paused. */
function stalledClient(port: number, request: string): Promise<net.Socket> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => {
      socket.write(request);
      socket.pause();
      resolve(socket);
    });
    socket.on("error", () => undefined);
  });
}

/**
 * A pool's streams are a shared, bounded resource: no client may hold all of them, a
 * client that stops reading or trickles is cut off after a bounded time, and whatever ends
 * an exchange gives its stream back exactly once (a leak would turn the pool into 503s).
 */
describe("VCS pools under abuse: shares, stalls and streams released exactly once", function () {
  this.timeout(30_000);
  let vcs: LocalVcs;
  before(async () => {
    vcs = new LocalVcs();
    // A real repository: git http-backend then waits for a fetch's whole body (for a missing one it answers at once).
    vcs.createRepository("group/repo.git");
    await vcs.listen();
  });
  after(() => vcs.close());

  const head = (key: string, path: string, extra = "") =>
    `GET /git${path} HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${key}\r\n${extra}\r\n`;
  /** Settled: no stream held, nobody waiting (polled: the counters have no event of their own). */
  const settled = (stack: Awaited<ReturnType<typeof vcsStack>>) =>
    eventually(
      () => stack.summary().activeRequests === 0 && stack.summary().waiting === 0,
      5000,
      "every stream released",
    );

  describe("starvation", () => {
    it("a client that holds streams it never reads leaves a second client served at once (its share is 3 of 4)", async () => {
      const stack = await vcsStack(vcs, { stallTimeoutMs: 20_000 });
      const sockets: net.Socket[] = [];
      try {
        await stack.startAgent({ parallelism: 4 });
        for (let i = 0; i < 4; i++)
          sockets.push(
            await stalledClient(
              stack.port,
              head(stack.keys.a.key, `/api/v4/projects/group%2Frepo/repository/archive?size=${64 << 20}&n=${i}`),
            ),
          );
        await eventually(
          () => stack.summary().activeRequests === 3 && stack.summary().waiting === 1,
          5000,
          "client a at its share, one waiting",
        );
        const served = await stack.request("/git/api/v4/projects/group%2Frepo", { key: stack.keys.b.key });
        assert.equal(served.status, 200);
        assert.equal(stack.summary().activeRequests, 3, "b was served while a still held its three");
      } finally {
        for (const socket of sockets) socket.destroy();
        await settled(stack);
        await stack.close();
      }
    });

    for (const parallelism of [2, 3])
      it(`a pool of ${parallelism} streams: one client's long exchanges hold ${parallelism - 1}, never all; another client's request reaches the VCS at once`, async () => {
        const stack = await vcsStack(vcs, { stallTimeoutMs: 20_000, queueTimeoutMs: 10_000 });
        const sockets: net.Socket[] = [];
        try {
          await stack.startAgent({ parallelism });
          const start = vcs.hits.length;
          for (let i = 0; i < parallelism; i++)
            sockets.push(
              await stalledClient(
                stack.port,
                head(stack.keys.a.key, `/api/v4/projects/group%2Frepo/repository/archive?size=${64 << 20}&small=${i}`),
              ),
            );
          // Held at the VCS too: a request the agent is still forwarding would reach it after b's.
          await eventually(
            () =>
              stack.summary().activeRequests === parallelism - 1 &&
              stack.summary().waiting === 1 &&
              vcs.hits.slice(start).length === parallelism - 1,
            5000,
            "client a at its share (all streams but one) at the VCS, its last request waiting",
          );
          // A stream is counted once the gateway hands the request on: wait until each held one has reached the VCS
          // (under load it may arrive after the count), so what comes next is b's alone.
          const held = Array.from({ length: parallelism - 1 }, (_, i) => `small=${i}`);
          await eventually(
            () => held.every((mark) => vcs.hits.some((h) => h.includes(mark))),
            5000,
            "a's held requests at the VCS",
          );
          const from = vcs.hits.length;
          const served = await stack.request("/git/api/v4/projects/group%2Frepo?client=b", { key: stack.keys.b.key });
          assert.equal(served.status, 200);
          assert.deepEqual(
            vcs.hits.slice(from),
            ["GET /api/v4/projects/group%2Frepo?client=b"],
            "b's request reached the VCS",
          );
          assert.ok(!vcs.hits.some((h) => h.includes(`small=${parallelism - 1}`)), "a's last request never reached it");
        } finally {
          for (const socket of sockets) socket.destroy();
          await settled(stack);
          await stack.close();
        }
      });

    it("a stream whose client stops reading is reset after the stall limit, at the VCS too, and its stream freed", async () => {
      const stack = await vcsStack(vcs, { stallTimeoutMs: 300 });
      try {
        await stack.startAgent({ parallelism: 2 });
        const socket = await stalledClient(
          stack.port,
          head(stack.keys.a.key, `/api/v4/projects/group%2Frepo/repository/archive?size=${256 << 20}&stall=1`),
        );
        await eventually(() => stack.summary().activeRequests === 1);
        await eventually(() => vcs.aborted.some((a) => a.includes("stall=1")), 10_000, "the VCS saw the reset");
        await settled(stack);
        // The gateway closed the client's connection: reading it again finds its end.
        socket.resume();
        await new Promise((resolve) => socket.once("close", resolve));
      } finally {
        await stack.close();
      }
    });

    it("a client that trickles its body (one byte at a time) is cut at the request deadline; nothing incomplete reaches the VCS", async () => {
      const stack = await vcsStack(vcs, { requestTimeoutMs: 400, headersTimeoutMs: 300 });
      try {
        await stack.startAgent({ parallelism: 1 });
        const from = vcs.received.length;
        const socket = await stalledClient(
          stack.port,
          `POST /git/api/v4/projects/group%2Frepo/merge_requests/1/notes?trickle=1 HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`,
        );
        const timer = setInterval(() => socket.writable && socket.write(" "), 50);
        await new Promise((resolve) => socket.once("close", resolve));
        clearInterval(timer);
        await settled(stack);
        assert.equal(vcs.received.slice(from).length, 0, "no complete request reached the VCS");
        await eventually(
          () => vcs.aborted.some((a) => a.includes("trickle=1")) || !vcs.hits.some((h) => h.includes("trickle=1")),
          5000,
        );
        assert.equal(
          (await stack.request("/git/api/v4/projects/group%2Frepo")).status,
          200,
          "the pool serves the next request",
        );
      } finally {
        await stack.close();
      }
    });

    it("a slow head (slowloris) is cut at the head deadline", async () => {
      const stack = await vcsStack(vcs, { headersTimeoutMs: 200, requestTimeoutMs: 1000 });
      try {
        const socket = await stalledClient(stack.port, "GET /git/api/v4/version HTTP/1.1\r\nHost: g\r\n");
        socket.resume();
        const started = Date.now();
        await new Promise((resolve) => socket.once("close", resolve));
        assert.ok(Date.now() - started < 5000);
      } finally {
        await stack.close();
      }
    });

    it("a full queue answers 503 with Retry-After at once; a client cannot fill the queue alone", async () => {
      const stack = await vcsStack(vcs, { maxQueued: 4, queueTimeoutMs: 10_000 });
      const sockets: net.Socket[] = [];
      try {
        await stack.startAgent({ parallelism: 1 });
        for (let i = 0; i < 4; i++)
          sockets.push(
            await stalledClient(stack.port, head(stack.keys.a.key, `/api/v4/projects/group%2Frepo?hang=1&n=${i}`)),
          );
        // One holds the stream; a may queue 3 of the 4 places (its share), then is told to come back.
        await eventually(() => stack.summary().activeRequests === 1 && stack.summary().waiting === 3);
        const refused = await stack.request("/git/api/v4/version");
        assert.equal(refused.status, 503);
        assert.equal(refused.headers["retry-after"], "2");
        const other = stack.request("/git/api/v4/version", { key: stack.keys.b.key });
        await eventually(() => stack.summary().waiting === 4, 5000, "b queued in the last place");
        sockets.shift()!.destroy();
        assert.equal((await other).status, 200, "b, holding no stream, is served before a's waiters");
      } finally {
        for (const socket of sockets) socket.destroy();
        await settled(stack);
        await stack.close();
      }
    });
  });

  describe("each stream is released exactly once, whatever ends the exchange (parallelism 1: a leak would block the next request)", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      stack = await vcsStack(vcs, { queueTimeoutMs: 2000 });
      await stack.startAgent({ parallelism: 1, upstreamTimeout: "300ms" });
    });
    after(() => stack.close());
    afterEach(async () => {
      await settled(stack);
      assert.equal(
        (await stack.request("/git/api/v4/projects/group%2Frepo")).status,
        200,
        "the pool's one stream serves the next request",
      );
    });

    it("the client gone before the answer's head", async () => {
      const socket = await stalledClient(
        stack.port,
        head(stack.keys.a.key, "/api/v4/projects/group%2Frepo?hang=1&gone=head"),
      );
      await eventually(() => vcs.hits.some((h) => h.includes("gone=head")));
      socket.destroy();
      await eventually(() => vcs.aborted.some((a) => a.includes("gone=head")), 5000, "the VCS saw the cancel");
    });

    it("the client gone while queued", async () => {
      const holder = await stalledClient(
        stack.port,
        head(stack.keys.b.key, "/api/v4/projects/group%2Frepo?hang=1&gone=holder"),
      );
      await eventually(() => stack.summary().activeRequests === 1);
      const queued = await stalledClient(
        stack.port,
        head(stack.keys.a.key, "/api/v4/projects/group%2Frepo?gone=queued"),
      );
      await eventually(() => stack.summary().waiting === 1);
      queued.destroy();
      await eventually(() => stack.summary().waiting === 0, 5000, "the queue forgot it");
      holder.destroy();
      await eventually(() => stack.summary().activeRequests === 0);
      assert.ok(!vcs.hits.some((h) => h.includes("gone=queued")), "a request whose client left never reaches the VCS");
    });

    it("a key removed while its request waits: 401 at once, and the request never reaches the VCS; another key's is served", async () => {
      const holder = await stalledClient(
        stack.port,
        head(stack.keys.b.key, "/api/v4/projects/group%2Frepo?hang=1&revoked=holder"),
      );
      await eventually(() => stack.summary().activeRequests === 1);
      const removed = stack.request("/git/api/v4/projects/group%2Frepo?revoked=a");
      const kept = stack.request("/git/api/v4/projects/group%2Frepo?revoked=b", { key: stack.keys.b.key });
      await eventually(() => stack.summary().waiting === 2);
      stack.gateway.setKeys([stack.keys.b.definition]);
      try {
        const refused = await removed;
        assert.deepEqual(
          [refused.status, JSON.parse(refused.body).error],
          [401, "the service key no longer allows pool git"],
        );
        assert.equal(stack.summary().waiting, 1, "the other key still waits");
        holder.destroy();
        assert.equal((await kept).status, 200);
        assert.ok(!vcs.hits.some((h) => h.includes("revoked=a")), "the removed key's request never reached the VCS");
        assert.ok(vcs.hits.some((h) => h.includes("revoked=b")));
      } finally {
        holder.destroy();
        stack.gateway.setKeys([stack.keys.a.definition, stack.keys.b.definition]);
      }
    });

    it("the client gone in the middle of its body", async () => {
      const socket = await stalledClient(
        stack.port,
        // A fetch's body streams (an API write's is read whole and checked at the gateway first).
        `POST /git/group/repo.git/git-upload-pack?gone=body HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: 1000\r\n\r\n0032want `,
      );
      await eventually(() => vcs.hits.some((h) => h.includes("gone=body")));
      socket.destroy();
      await eventually(() => vcs.aborted.some((a) => a.includes("gone=body")), 5000);
    });

    it("the client gone in the middle of the answer", async () => {
      await new Promise<void>((resolve) => {
        const socket = net.connect(stack.port, "127.0.0.1", () =>
          socket.write(
            head(stack.keys.a.key, `/api/v4/projects/group%2Frepo/repository/archive?size=${64 << 20}&gone=answer`),
          ),
        );
        socket.once("data", () => (socket.destroy(), resolve()));
      });
      await eventually(() => vcs.aborted.some((a) => a.includes("gone=answer")), 5000);
    });

    it("the VCS silent past the agent's upstream timeout: 504, and the VCS request dropped", async () => {
      const reply = await stack.request("/git/api/v4/projects/group%2Frepo?hang=1&gone=upstream");
      assert.equal(reply.status, 504);
      assert.deepEqual(
        JSON.parse(reply.body),
        { error: "the VCS did not answer in time" },
        "why stays in the agent's log",
      );
      assert.ok(stack.agents.some(({ lines }) => lines.some((l) => /silent for 300 ms/.test(l.error ?? ""))));
      await eventually(() => vcs.aborted.some((a) => a.includes("gone=upstream")));
    });

    it("the agent gone mid-exchange: the client's answer is cut, never ended as if whole; another agent serves the next", async () => {
      const { agent } = stack.agents.shift()!;
      let received = "";
      const socket = net.connect(stack.port, "127.0.0.1", () =>
        socket.write(head(stack.keys.a.key, "/api/v4/projects/group%2Frepo/repository/archive?slow=1&gone=agent")),
      );
      socket.on("data", (chunk) => (received += chunk.toString("latin1")));
      await eventually(() => received.startsWith("HTTP/1.1 200"), 5000, "the answer's head");
      await stack.startAgent({ parallelism: 1, upstreamTimeout: "300ms" });
      await agent.drain(Date.now()); // the deadline is now: its connection is cut at once
      await new Promise((resolve) => socket.once("close", resolve));
      assert.match(received, /transfer-encoding: chunked/i);
      assert.ok(!received.endsWith("0\r\n\r\n"), "the chunked answer has no last chunk: the client sees it cut");
    });
  });

  describe("routing", () => {
    it("least busy first, then the agent idle longest (not always the first connected)", async () => {
      const stack = await vcsStack(vcs);
      try {
        const first = await stack.startAgent({ parallelism: 2 });
        const second = await stack.startAgent({ parallelism: 2 });
        const served = (lines: Record<string, any>[], tag: string) =>
          lines.filter((l) => String(l.path).includes(tag)).length;
        for (let i = 0; i < 6; i++)
          assert.equal((await stack.request(`/git/api/v4/projects/group%2Frepo?lru=${i}`)).status, 200);
        await eventually(() => served(first.lines, "lru=") + served(second.lines, "lru=") === 6);
        assert.deepEqual([served(first.lines, "lru="), served(second.lines, "lru=")], [3, 3], "turns taken in order");
        // One stream held on whichever agent takes it: the other, less busy, takes the next requests.
        const held = await stalledClient(
          stack.port,
          head(stack.keys.b.key, "/api/v4/projects/group%2Frepo?hang=1&held=1"),
        );
        await eventually(() => stack.summary().activeRequests === 1);
        const busy = stack.summary().agents.findIndex((a) => a.active === 1);
        for (let i = 0; i < 2; i++)
          assert.equal((await stack.request(`/git/api/v4/projects/group%2Frepo?idle=${i}`)).status, 200);
        const idle = [first, second][1 - busy];
        await eventually(() => served(idle.lines, "idle=") === 2, 5000, "both went to the idle agent");
        held.destroy();
        await settled(stack);
      } finally {
        await stack.close();
      }
    });
  });

  it("a burst of 50 concurrent requests against one default agent: all served, none refused", async () => {
    const stack = await vcsStack(vcs);
    try {
      await stack.startAgent();
      const replies = await Promise.all(
        Array.from({ length: 50 }, (_, i) => stack.request(`/git/api/v4/projects/group%2Frepo?delay=20&burst=${i}`)),
      );
      assert.deepEqual(
        replies.map((r) => r.status),
        Array(50).fill(200),
      );
      await settled(stack);
    } finally {
      await stack.close();
    }
  });
});
