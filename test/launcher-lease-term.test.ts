// A hostile gateway's lease term (start.termMs): the launcher takes only a term within LEASE_TERM_MS.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { launcherSettings } from "../agent/config/launcher";
import { launcherRole } from "../agent/launcher/launcher";
import { loadOrCreateAuthority, signPoolRequest } from "../gateway/certificates";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, scratchDir } from "../devkit/helpers";
import { acceptWebSocket } from "../protocol/websocket";

const exec = promisify(execFile);

describe("launcher: a lease term from a hostile gateway", function () {
  this.timeout(30_000);
  for (const termMs of [0, "soon"]) {
    it(`start.termMs = ${JSON.stringify(termMs)} is not taken: no renewal storm (the default term renews every 20 s)`, async () => {
      const dir = scratchDir("lease-term-");
      const received: Record<string, any>[] = [];
      let link: ReturnType<typeof acceptWebSocket> | undefined;
      const server = http.createServer((_, res) => res.writeHead(500).end());
      server.on("upgrade", (req, socket: net.Socket, head) => {
        const ws = (link = acceptWebSocket(req.headers, socket, head));
        ws.on("message", (text: string) => {
          const message = JSON.parse(text);
          received.push(message);
          if (message.type === "hello" && received.filter((m) => m.type === "hello").length === 1)
            ws.send(
              JSON.stringify({
                type: "run",
                run: { id: "r1", image: "alpine:3", commands: ["echo hi"] },
                lease: { fence: 1 },
              }),
            );
          // The hostile part: a lease term of the gateway's choosing; no ack ever (the result stays held).
          if (message.type === "accepted")
            ws.send(JSON.stringify({ type: "start", id: "r1", fence: 1, lines: 0, termMs }));
        });
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
      await exec(
        "openssl",
        [
          "req",
          "-new",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-keyout",
          "k.pem",
          "-out",
          "c.csr",
          "-subj",
          "/CN=lease-term",
        ],
        { cwd: dir },
      );
      const certificate = await signPoolRequest(
        await loadOrCreateAuthority(path.join(dir, "ca")),
        readFileSync(path.join(dir, "c.csr"), "utf8"),
        "term",
      );
      const token = createPool("term", "worker", url, certificate).token;
      const log = capturingLogger("launcher");
      const launcher = await launcherRole().start(
        launcherSettings.parse({
          token,
          poolPrivateKey: readFileSync(path.join(dir, "k.pem")).toString("base64"),
          executor: "process",
          workDirectory: scratchDir("lease-term-work-"),
        }),
        { log: log.log, env: { PATH: process.env.PATH } },
      );
      try {
        await eventually(() => received.some((m) => m.type === "finished"), 10_000);
        const from = received.length;
        // A window to count in (what is measured is an absence): with the term it had, 60 s, the next renewal is 20 s away.
        await new Promise((r) => setTimeout(r, 500));
        const renewals = received.slice(from).filter((m) => m.type === "renew").length;
        assert.ok(renewals <= 1, `${renewals} renewals in half a second`);
        // Counted: now the result is taken, so that stopping need not wait out its grace for a delivery.
        link?.send(JSON.stringify({ type: "ack", id: "r1" }));
      } finally {
        await launcher.drain(Date.now() + 500);
        server.closeAllConnections();
        server.close();
      }
    });
  }
});
