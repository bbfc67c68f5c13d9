import assert from "node:assert/strict";
import net from "node:net";
import { eventually } from "../../devkit/helpers";
import { dialGateway } from "./dial";

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
