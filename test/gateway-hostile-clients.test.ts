import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import path from "node:path";
import { dialGateway } from "../agent/tunnel/dial";
import { decodeToken } from "../protocol/token";
import { MAX_REQUEST_HEADERS, SESSION_OPTIONS, SETTINGS } from "../protocol/vcs";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { LocalVcs } from "../devkit/local-vcs";
import { capturingLogger, eventually, freePort, rawRequest, scratchDir, serviceKey } from "../devkit/helpers";
import { FakeLauncher } from "./fake-launcher";
import { statuses, vcsStack } from "./vcs-stack";

/** Bytes written as they are; what the gateway sent back until it closed. */
function raw(port: number, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const socket = net.connect(port, "127.0.0.1", () => socket.write(bytes));
    socket.on("data", (chunk) => (text += chunk.toString("latin1")));
    socket.on("error", () => undefined);
    socket.once("close", () => resolve(text));
  });
}

/** The gateway's open client sockets (file descriptors), as it tracks them. */
const openSockets = (gateway: Gateway) => (gateway as unknown as { sockets: Set<net.Socket> }).sockets.size;

/**
 * The gateway's public side, attacked as anyone who reaches it would: with no key, a key for
 * another pool, a target two readers read differently, an upgrade it never completes, a
 * reset, a flood of agent connections, a key already revoked. Each test asserts what reached
 * the launcher or the VCS, or what the gateway still holds, not only the status.
 */
describe("hostile clients at the gateway", function () {
  this.timeout(30_000);

  describe("one reading of the target: the worker API", () => {
    const POOL = "workers";
    const limited = serviceKey("vcs only", ["git"]);
    const full = serviceKey("operator");
    let gateway: Gateway;
    let port: number;
    let launcher: FakeLauncher;

    before(async () => {
      port = await freePort();
      const made = await makePoolKeyAndRequest(POOL);
      const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL);
      const workers = createPool(POOL, "worker", `http://127.0.0.1:${port}`, certificate);
      const git = createPool("git", "vcs", `http://127.0.0.1:${port}`);
      gateway = new Gateway({
        port,
        pools: [workers.pool, git.pool],
        keys: [limited.definition, full.definition],
        dataDir: scratchDir("gw-"),
        log: capturingLogger("gateway").log,
      });
      await gateway.listen();
      const { secret } = decodeToken(workers.token);
      launcher = await FakeLauncher.connect({
        url: `http://127.0.0.1:${port}`,
        pool: POOL,
        secret,
        keyBase64: made.keyBase64,
      });
      await eventually(() => gateway.summary().find((p) => p.name === POOL)?.connections === 1);
    });
    after(async () => {
      launcher.drop();
      await gateway.close();
    });

    it("\\, # and dot segments never move a request to another pool or past the key check: no run is made, listed or read", async () => {
      const submit = JSON.stringify({ image: "alpine:3", commands: ["id"] });
      const post = (target: string, key = "") =>
        raw(
          port,
          `POST ${target} HTTP/1.1\r\nHost: g\r\n${key}Content-Type: application/json\r\nContent-Length: ${submit.length}\r\nConnection: close\r\n\r\n${submit}`,
        );
      const get = (target: string, key = "") =>
        raw(port, `GET ${target} HTTP/1.1\r\nHost: g\r\n${key}Connection: close\r\n\r\n`);
      const limitedKey = `x-agentpools-key: ${limited.key}\r\n`;
      const attempts = [
        await post("/_agentpools/api/workers/x/runs/..\\..\\workers\\runs#/state"),
        await post("/_agentpools/api/workers/x/runs/../../workers/runs/00000000-0000-0000-0000-000000000000/state"),
        await post("/_agentpools/api/workers/x/runs/%2e%2e/%2e%2e/workers/runs"),
        await post("/_agentpools/api/workers/git/runs/..\\..\\workers\\runs", limitedKey),
        await get("/_agentpools/api/workers/x/runs/..\\..\\workers\\runs#/state"),
        await get("/_agentpools/api/workers/git/runs/..\\..\\workers\\runs", limitedKey),
      ];
      for (const reply of attempts) {
        assert.ok([400, 401, 403, 404].includes(statuses(reply)[0]), reply);
        assert.doesNotMatch(reply, /"runs"|"id"/, "nothing of the pool's runs is shown");
      }
      // What crossed: the pool's store holds no run, and its launcher was offered none.
      const listed = await rawRequest(`http://127.0.0.1:${port}`, `/_agentpools/api/workers/${POOL}/runs`, {
        headers: full.headers,
      });
      assert.deepEqual(JSON.parse(listed.body).runs, []);
      assert.equal(launcher.received.filter((m) => m.type === "run").length, 0);
      // The documented path with a key still works (the control): one run, offered to the launcher.
      const made = await rawRequest(`http://127.0.0.1:${port}`, `/_agentpools/api/workers/${POOL}/runs`, {
        method: "POST",
        headers: { ...full.headers, "content-type": "application/json" },
        body: submit,
      });
      assert.equal(made.status, 201, made.body);
      const offered = await launcher.next("run");
      assert.equal(offered.run.id, JSON.parse(made.body).id);
    });
  });

  describe("upgrades that are not an agent's", () => {
    let vcs: LocalVcs;
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      vcs = new LocalVcs();
      vcs.createRepository("group/repo.git");
      await vcs.listen();
      stack = await vcsStack(vcs, { headersTimeoutMs: 300, requestTimeoutMs: 1000, idleTimeoutMs: 1000 });
      await stack.startAgent();
    });
    after(async () => {
      await stack.close();
      await vcs.close();
    });

    it("a reset on a refused upgrade is that socket's end, never the gateway's: it keeps serving", async () => {
      const base = openSockets(stack.gateway);
      for (const target of ["/", "/_agentpools/connect", "/git/api/v4/version"]) {
        const socket = net.connect({ port: stack.port, host: "127.0.0.1", allowHalfOpen: true });
        socket.on("error", () => undefined);
        await new Promise<void>((resolve) => {
          socket.once("data", () => resolve());
          socket.write(`GET ${target} HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
        });
        socket.resetAndDestroy();
      }
      await eventually(() => openSockets(stack.gateway) === base, 5000, "every reset socket closed");
      assert.equal((await stack.request("/git/api/v4/version")).status, 200);
    });

    it("keyless upgrades that never close their side are closed by the gateway within its deadlines (no descriptor kept)", async () => {
      const base = openSockets(stack.gateway);
      const sockets = ["/anything", "/_agentpools/connect", "/git/api/v4/version"].flatMap((target) =>
        Array.from({ length: 10 }, () => {
          const socket = net.connect({ port: stack.port, host: "127.0.0.1", allowHalfOpen: true }, () =>
            socket.write(`GET ${target} HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: whatever\r\n\r\n`),
          );
          socket.on("error", () => undefined);
          socket.resume();
          return socket;
        }),
      );
      // Each is refused (401, or 400 on the agents' path) and closed by the gateway: the client reads its end
      // although it never sent a FIN of its own, and the gateway holds none of them.
      await Promise.all(sockets.map((socket) => new Promise((resolve) => socket.once("end", resolve))));
      await eventually(() => openSockets(stack.gateway) === base, 5000, "the gateway let go of every socket");
      for (const socket of sockets) socket.destroy();
    });

    it("Upgrade: h2c is served as the plain request it also is: nothing of the upgrade reaches the VCS, no internal detail in a refusal", async () => {
      const h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n";
      const from = vcs.received.length;
      const served = await raw(
        stack.port,
        `GET /git/api/v4/version?h2c=1 HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\n${h2c}\r\n`,
      );
      assert.deepEqual(statuses(served), [200]);
      const [received] = vcs.received.slice(from);
      assert.equal(received.url, "/api/v4/version?h2c=1");
      const names = received.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      assert.ok(!names.some((n) => ["upgrade", "http2-settings"].includes(n)), names.join(","));
      const refused = await raw(stack.port, `GET /git/api/v4/version HTTP/1.1\r\nHost: g\r\n${h2c}\r\n`);
      assert.deepEqual(statuses(refused), [401]);
      const body = JSON.parse(refused.slice(refused.indexOf("{"), refused.lastIndexOf("}") + 1));
      assert.deepEqual(Object.keys(body), ["error"]);
      assert.doesNotMatch(refused, /127\.0\.0\.1|:\d{4,5}\b/);
    });

    it(`more than ${MAX_REQUEST_HEADERS} header fields: 431 from the gateway, nothing reaches the agent or the VCS`, async () => {
      const from = vcs.hits.length;
      const fields = Array.from({ length: MAX_REQUEST_HEADERS + 1 }, (_, i) => `x-f${i}: ${i}\r\n`).join("");
      const reply = await raw(
        stack.port,
        `GET /git/api/v4/version HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${stack.keys.a.key}\r\n${fields}Connection: close\r\n\r\n`,
      );
      assert.deepEqual(statuses(reply), [431]);
      assert.deepEqual(vcs.hits.slice(from), []);
    });
  });

  it("a VCS that cannot be reached: 502 naming no internal address (the agent's log has it)", async () => {
    const vcs = new LocalVcs();
    await vcs.listen();
    const stack = await vcsStack(vcs);
    try {
      const { lines } = await stack.startAgent();
      const internal = new URL(vcs.url).host;
      await vcs.close();
      const reply = await stack.request("/git/api/v4/version");
      assert.equal(reply.status, 502);
      assert.ok(!reply.body.includes(internal) && !/ECONNREFUSED/.test(reply.body), reply.body);
      assert.ok(
        lines.some((line) => String(line.error ?? "").includes(internal)),
        "the agent logs why",
      );
    } finally {
      await stack.close();
    }
  });

  it("agent connections per pool are capped: the next one is refused (503) and holds nothing; a freed place is taken again", async () => {
    const vcs = new LocalVcs();
    await vcs.listen();
    const stack = await vcsStack(vcs, { maxAgentsPerPool: 2 });
    const sessions: http2.ServerHttp2Session[] = [];
    const connect = async () => {
      const socket = await dialGateway(new URL(stack.url), {
        authorization: `Bearer ${stack.pool.token}`,
        "x-agentpools-role": "vcs-agent",
      });
      const session = http2.performServerHandshake(socket, {
        ...SESSION_OPTIONS,
        settings: { ...SETTINGS, maxConcurrentStreams: 4 },
      });
      socket.resume();
      session.on("error", () => undefined);
      sessions.push(session);
    };
    try {
      await connect();
      await connect();
      await eventually(() => stack.summary().connections === 2);
      const base = openSockets(stack.gateway);
      await assert.rejects(connect(), /503.*2 agents connected already/);
      await eventually(() => openSockets(stack.gateway) === base, 5000, "the refused connection released");
      assert.equal(stack.summary().connections, 2);
      sessions.shift()!.destroy();
      await eventually(() => stack.summary().connections === 1);
      await connect();
      await eventually(() => stack.summary().connections === 2);
    } finally {
      for (const session of sessions) session.destroy();
      await stack.close();
      await vcs.close();
    }
  });

  describe("service keys on a running gateway (main.js serve)", () => {
    const main = path.join(__dirname, "..", "gateway", "main.js");
    const cli = (...args: string[]) => execFileSync(process.execPath, [main, ...args], { encoding: "utf8" }).trim();
    let child: ChildProcess;
    const started: ChildProcess[] = [];
    let out = "";
    const printed = (text: string, from: number) => eventually(() => out.slice(from).includes(text), 5000, text);
    after(() => started.forEach((gateway) => gateway.kill()));

    it("remove-key: the key is refused by the running gateway at once; add-key: the new one is accepted, no restart", async () => {
      const port = await freePort();
      const config = path.join(scratchDir("gw-config-"), "gateway.json");
      writeFileSync(
        config,
        JSON.stringify({ publicUrl: `http://127.0.0.1:${port}`, listen: { host: "127.0.0.1", port } }),
      );
      cli("add-pool", "--config", config, "--name", "git", "--kind", "vcs");
      const leaked = cli("add-key", "--config", config, "--name", "leaked");
      child = spawn(process.execPath, [main, "serve", "--config", config], { stdio: ["ignore", "pipe", "inherit"] });
      started.push(child);
      child.stdout!.on("data", (chunk) => (out += chunk));
      await printed("listening", 0);
      const call = async (key: string) =>
        (
          await rawRequest(`http://127.0.0.1:${port}`, "/_agentpools/api/pools", {
            headers: { "x-agentpools-key": key },
          })
        ).status;
      assert.equal(await call(leaked), 200);

      let mark = out.length;
      cli("remove-key", "--config", config, "--id", leaked.split(".")[1]);
      await printed("service keys changed", mark);
      assert.equal(await call(leaked), 401);

      mark = out.length;
      const fresh = cli("add-key", "--config", config, "--name", "fresh");
      await printed("service keys changed", mark);
      assert.equal(await call(fresh), 200);
      assert.equal(await call(leaked), 401);
    });

    it("rotate-key: a new secret under the same id keeps the key's worker runs; hand-over-runs gives them to another key, never under a serving gateway", async () => {
      const port = await freePort();
      const dir = scratchDir("gw-config-");
      const config = path.join(dir, "gateway.json");
      const base = `http://127.0.0.1:${port}`;
      writeFileSync(
        config,
        JSON.stringify({ publicUrl: base, listen: { host: "127.0.0.1", port }, dataDir: path.join(dir, "data") }),
      );
      writeFileSync(path.join(dir, "pool.csr"), (await makePoolKeyAndRequest("workers")).csr);
      cli("add-pool", "--config", config, "--name", "workers", "--kind", "worker", "--csr", path.join(dir, "pool.csr"));
      const first = cli("add-key", "--config", config, "--name", "ci");
      const other = cli("add-key", "--config", config, "--name", "other");
      const serve = async () => {
        out = "";
        child = spawn(process.execPath, [main, "serve", "--config", config], { stdio: ["ignore", "pipe", "inherit"] });
        started.push(child);
        child.stdout!.on("data", (chunk) => (out += chunk));
        await printed("listening", 0);
      };
      await serve();
      const runs = "/_agentpools/api/workers/workers/runs";
      const submitted = await rawRequest(base, runs, {
        method: "POST",
        headers: { "x-agentpools-key": first },
        body: JSON.stringify({ image: "alpine:3", commands: ["echo queued"] }),
      });
      assert.equal(submitted.status, 201);
      const run = `${runs}/${(JSON.parse(submitted.body) as { id: string }).id}`;
      const read = async (key: string) =>
        (await rawRequest(base, run, { headers: { "x-agentpools-key": key } })).status;

      const mark = out.length;
      const rotated = cli("rotate-key", "--config", config, "--id", first.split(".")[1]);
      await printed("service keys changed", mark);
      assert.equal(rotated.split(".")[1], first.split(".")[1], "the same id");
      assert.notEqual(rotated, first);
      assert.deepEqual([await read(first), await read(rotated), await read(other)], [401, 200, 404]);

      const [from, to] = [rotated.split(".")[1], other.split(".")[1]];
      // While the gateway serves the data directory it holds the runs' owners: the command refuses, nothing moves.
      assert.throws(
        () =>
          execFileSync(process.execPath, [main, "hand-over-runs", "--config", config, "--from", from, "--to", to], {
            stdio: "pipe",
          }),
        (error: { status: number; stderr: Buffer }) =>
          error.status === 2 &&
          new RegExp(`^a gateway \\(pid ${child.pid}\\) serves .*: stop it`).test(error.stderr.toString()),
      );
      assert.deepEqual([await read(rotated), await read(other)], [200, 404]);
      child.kill();
      await new Promise((resolve) => child.once("exit", resolve));
      assert.equal(
        cli("hand-over-runs", "--config", config, "--from", from, "--to", to),
        `1 runs handed over to key ${to}`,
      );
      await serve();
      assert.deepEqual([await read(rotated), await read(other)], [404, 200]);
    });
  });
});
