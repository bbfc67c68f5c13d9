import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { Readable } from "node:stream";
import { eventually } from "../../devkit/helpers";
import { dialGateway, fetchGateway } from "./dial";

describe("dialling the gateway (agent/tunnel/dial.ts)", () => {
  it("an https:// proxy is refused before anything is sent to it (its credentials would go in clear)", async () => {
    const received: Buffer[] = [];
    let connections = 0;
    const proxy = net.createServer((socket) => {
      connections++;
      socket.on("data", (chunk) => received.push(chunk));
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const { port } = proxy.address() as net.AddressInfo;
    try {
      await assert.rejects(
        dialGateway(
          new URL("https://gateway.example"),
          { authorization: "Bearer pool-secret" },
          { proxy: `https://corp-user:corp-password@127.0.0.1:${port}`, timeoutMs: 2000 },
        ),
        /the proxy 127\.0\.0\.1:\d+ is https:\/\/: this dialer reaches proxies by http:\/\/ only/,
      );
      assert.equal(connections, 0);
      assert.equal(Buffer.concat(received).length, 0);
    } finally {
      proxy.close();
    }
  });

  it("a plain http:// (loopback) gateway is dialled directly, never through the proxy: the proxy sees no token", async () => {
    const proxied: Buffer[] = [];
    const proxy = net.createServer((socket) => socket.on("data", (chunk) => proxied.push(chunk)));
    const heard: string[] = [];
    const gateway = net.createServer((socket) => socket.once("data", (chunk) => heard.push(String(chunk))));
    for (const server of [proxy, gateway]) await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server: net.Server) => (server.address() as net.AddressInfo).port;
    try {
      await dialGateway(
        new URL(`http://127.0.0.1:${port(gateway)}`),
        { authorization: "Bearer pool-secret" },
        { proxy: `http://127.0.0.1:${port(proxy)}`, timeoutMs: 200 },
      ).catch(() => undefined); // this gateway never answers the upgrade
      assert.match(heard.join(""), /authorization: Bearer pool-secret/i, "the gateway itself got the request");
      assert.equal(Buffer.concat(proxied).length, 0, "nothing reached the proxy");
    } finally {
      proxy.close();
      gateway.close();
    }
  });

  it("an https:// gateway goes through the proxy's CONNECT to its own host and port, unless NO_PROXY names it", async () => {
    const connects: string[] = [];
    // A proxy that records the CONNECT and closes: the dial fails after, which is not the point here.
    const proxy = net.createServer((socket) =>
      socket.once("data", (head) => {
        connects.push(/^CONNECT (\S+) HTTP\/1\.1\r\n/.exec(String(head))?.[1] ?? String(head));
        socket.destroy();
      }),
    );
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const options = { proxy: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, timeoutMs: 500 };
    try {
      await dialGateway(new URL("https://gateway.corp.example:8443"), {}, options).catch(() => undefined);
      assert.deepEqual(connects, ["gateway.corp.example:8443"]);
      const direct = { ...options, noProxy: ".corp.example", timeoutMs: 100 };
      await dialGateway(new URL("https://gateway.corp.example:8443"), {}, direct).catch(() => undefined);
      assert.equal(connects.length, 1, "NO_PROXY sent it direct");
    } finally {
      proxy.close();
    }
  });

  it("a gateway that accepts the connection and never speaks: each timed-out dial ends its connection", async () => {
    const open = new Set<net.Socket>();
    const silent = net.createServer((socket) => {
      open.add(socket);
      socket.on("close", () => open.delete(socket)).resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as net.AddressInfo;
    try {
      for (const scheme of ["https", "http"]) {
        for (let i = 0; i < 3; i++) {
          await assert.rejects(
            dialGateway(new URL(`${scheme}://127.0.0.1:${port}`), {}, { timeoutMs: 100 }),
            scheme === "https" ? /TLS with 127\.0\.0\.1:\d+ timed out/ : /did not answer the upgrade/,
          );
        }
      }
      await eventually(() => open.size === 0, 5000, "every timed-out dial's connection closed");
    } finally {
      for (const socket of open) socket.destroy();
      silent.close();
    }
  });
});

describe("state transfers on EC2: Node's fetch (agent/tunnel/dial.ts fetchGateway)", () => {
  let server: http.Server;
  let gateway: URL;
  let handle: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  before(async () => {
    server = http.createServer((req, res) => handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    gateway = new URL(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });
  const read = async (stream: Readable) => {
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(Buffer.from(chunk));
    return Buffer.concat(chunks);
  };

  it("an upload: the gateway receives the body's exact bytes, chunked, with the headers given; the answer's status", async () => {
    const sent = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 256));
    let received: { method?: string; path?: string; headers: http.IncomingHttpHeaders; body: Buffer } | undefined;
    handle = async (req, res) => {
      received = { method: req.method, path: req.url, headers: req.headers, body: await read(req) };
      res.writeHead(204).end();
    };
    const response = await fetchGateway(gateway, {
      method: "PUT",
      path: "/_agentpools/api/x/state",
      headers: { "x-agentpools-fence": "3", "content-type": "application/octet-stream" },
      body: Readable.from([sent.subarray(0, 100_000), sent.subarray(100_000)]),
    });
    assert.equal(response.statusCode, 204);
    assert.equal((await read(response)).length, 0);
    assert.equal(received?.method, "PUT");
    assert.equal(received?.path, "/_agentpools/api/x/state");
    assert.equal(received?.headers["x-agentpools-fence"], "3");
    assert.equal(received?.headers["transfer-encoding"], "chunked");
    assert.ok(received?.body.equals(sent));
  });

  it("a redirect is not followed: nothing of the request (its proof) reaches the other origin", async () => {
    const elsewhere: http.IncomingHttpHeaders[] = [];
    const other = http.createServer((req, res) => (elsewhere.push(req.headers), res.end("state of another")));
    await new Promise<void>((resolve) => other.listen(0, "127.0.0.1", resolve));
    handle = (_req, res) =>
      res.writeHead(307, { location: `http://127.0.0.1:${(other.address() as net.AddressInfo).port}/x` }).end();
    try {
      await assert.rejects(
        fetchGateway(gateway, {
          method: "GET",
          path: "/_agentpools/api/x/state",
          headers: { "x-agentpools-proof": "p" },
        }),
      );
      assert.deepEqual(elsewhere, []);
    } finally {
      other.close();
    }
  });

  it("a download: the body as the gateway sent it, however slowly, once its head came within the time", async () => {
    const sent = Buffer.from("sealed state ".repeat(10_000));
    handle = (_req, res) => {
      res.writeHead(200);
      res.write(sent.subarray(0, 10));
      // The rest after longer than the time given to answer: the body is not held to it.
      setTimeout(() => res.end(sent.subarray(10)), 150);
    };
    const response = await fetchGateway(gateway, { method: "GET", path: "/s", headers: {} }, 50);
    assert.equal(response.statusCode, 200);
    assert.ok((await read(response)).equals(sent));
  });

  it("the caller's signal ends a download under way: no byte after it, the caller's reason", async () => {
    let served: http.ServerResponse | undefined;
    handle = (_req, res) => {
      served = res;
      res.writeHead(200);
      res.write("first bytes");
    };
    const stop = new AbortController();
    const response = await fetchGateway(gateway, { method: "GET", path: "/s", headers: {}, signal: stop.signal });
    const got: string[] = [];
    const reading = (async () => {
      for await (const chunk of response) {
        got.push(String(chunk));
        stop.abort(new Error("the state stopped coming"));
        served?.write("more bytes");
      }
    })();
    await assert.rejects(reading, /the state stopped coming/);
    assert.deepEqual(got, ["first bytes"]);
    served?.destroy();
  });

  it('a gateway that does not answer in time, or cannot be reached: the reason, not fetch\'s "fetch failed"', async () => {
    const silent: http.ServerResponse[] = [];
    handle = (_req, res) => void silent.push(res);
    await assert.rejects(
      fetchGateway(gateway, { method: "GET", path: "/s", headers: {} }, 50),
      new RegExp(`^Error: ${gateway.host.replace(/\./g, "\\.")} did not answer$`),
    );
    assert.equal(silent.length, 1);
    silent[0].destroy();
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    await assert.rejects(
      fetchGateway(new URL(`http://127.0.0.1:${port}`), { method: "GET", path: "/s", headers: {} }),
      /ECONNREFUSED/,
    );
  });
});
