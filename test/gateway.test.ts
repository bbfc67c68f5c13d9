import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import path from "node:path";
import { Readable } from "node:stream";
import { vcsAgentSettings } from "../agent/config/vcs-agent";
import { decodeToken } from "../protocol/token";
import { vcsAgentRole } from "../agent/vcs-agent/agent";
import { packageRoot } from "../components/shared/bundles";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { makePoolKeyAndRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { LocalVcs } from "../devkit/local-vcs";
import { gatewayCertificates } from "../devkit/certificates";
import { main as gatewayMain } from "../gateway/main";
import { createPool, secretMatches } from "../gateway/pools";
import { capturingLogger, eventually, freePort, rawRequest, scratchDir, serviceKey } from "../devkit/helpers";

describe("gateway", function () {
  this.timeout(30_000);
  let vcs: LocalVcs;
  before(async () => {
    vcs = new LocalVcs();
    await vcs.listen();
  });
  after(() => vcs.close());

  it("stores only a digest of each pool's secret and checks it in constant time", () => {
    const { pool, token } = createPool("git", "vcs", "https://gateway.example.com");
    const secret = JSON.parse(Buffer.from(token.slice(4), "base64url").toString()).secret as string;
    assert.ok(!JSON.stringify(pool).includes(secret));
    assert.equal(secretMatches(pool, secret), true);
    assert.equal(secretMatches(pool, secret.slice(1)), false);
    assert.throws(
      () => createPool("bad name", "vcs", "https://gateway.example.com"),
      /letters, digits, dashes and underscores/,
    );
  });

  it("refuses plain HTTP on anything but loopback", () => {
    assert.throws(() => new Gateway({ pools: [], host: "0.0.0.0" }), /plain HTTP is allowed on loopback only/);
  });

  it("TLS: agents that trust the gateway's CA (NODE_EXTRA_CA_CERTS) connect; others do not", async () => {
    const dir = scratchDir("tls-");
    const { ca, cert, key } = gatewayCertificates(dir);
    const port = await freePort();
    const { pool, token } = createPool("secure", "vcs", `https://127.0.0.1:${port}`);
    const service = serviceKey();
    const gateway = new Gateway({
      pools: [pool],
      keys: [service.definition],
      port,
      tls: { cert, key },
      log: capturingLogger("gateway").log,
    });
    const url = await gateway.listen();
    assert.equal(url, `https://127.0.0.1:${port}`);
    const agents: ChildProcess[] = [];
    const startBundle = (env: Record<string, string>) => {
      let output = "";
      const child = spawn(
        process.execPath,
        [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/vcs-agent.js")],
        {
          env: {
            PATH: process.env.PATH,
            SPACELIFT_VCS_AGENT_POOL_TOKEN: token,
            SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: vcs.url,
            SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
            ...env,
          },
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      child.stdout?.on("data", (d) => (output += d));
      agents.push(child);
      return () => output;
    };
    try {
      const untrusting = startBundle({});
      await eventually(
        () => untrusting().includes("cannot reach the gateway"),
        10_000,
        "the untrusting agent's TLS failure",
      );
      assert.match(untrusting(), /self.signed|unable to verify|certificate/i);
      assert.equal(gateway.summary()[0].connections, 0);

      const trusting = startBundle({ NODE_EXTRA_CA_CERTS: ca });
      await eventually(() => gateway.summary()[0].connections === 1, 10_000, "the trusting agent connected").catch(
        (e) => {
          throw new Error(e.message + "\n" + trusting());
        },
      );
      const body = await new Promise<string>((resolve, reject) => {
        https
          .get(`${url}/secure/api/v4/version`, { ca: readFileSync(ca), headers: service.headers }, (res) => {
            let text = "";
            res.on("data", (d) => (text += d));
            res.on("end", () => resolve(text));
          })
          .on("error", reject);
      });
      assert.equal(JSON.parse(body).path, "/api/v4/version");
    } finally {
      for (const child of agents) child.kill("SIGTERM");
      await gateway.close();
    }
  });

  it("private://<pool>/<path> requests stream a body through the agent", async () => {
    const port = await freePort();
    const { pool, token } = createPool("api", "vcs", `http://127.0.0.1:${port}`);
    const gateway = new Gateway({ pools: [pool], port, log: capturingLogger("gateway").log });
    await gateway.listen();
    const agent = await vcsAgentRole.start(
      vcsAgentSettings.parse({ token, targetBaseEndpoint: vcs.url, vendor: "gitlab" }),
      { log: capturingLogger("vcs-agent").log },
    );
    try {
      await agent.ready;
      await eventually(() => gateway.summary()[0].connections === 1);
      const response = await gateway.request("private://api/api/v4/projects/group%2Frepo/merge_requests/3/notes", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: Readable.from([Buffer.from('{"body":'), Buffer.from('"looks good"}')]),
      });
      assert.equal(response.status, 200);
      const chunks: Buffer[] = [];
      for await (const chunk of response.body) chunks.push(chunk as Buffer);
      assert.deepEqual(JSON.parse(Buffer.concat(chunks).toString()), {
        method: "POST",
        path: "/api/v4/projects/group%2Frepo/merge_requests/3/notes",
        body: '{"body":"looks good"}',
        authorization: null,
      });
      await assert.rejects(gateway.request("https://not-private/x"), /not a private:\/\/<pool>\/<path> address/);
      await assert.rejects(gateway.request("private://missing/x"), /no pool named missing/);
    } finally {
      await agent.drain(Date.now() + 2000);
      await gateway.close();
    }
  });

  /** Run the command line, returning what it printed. */
  async function cli(args: string[]): Promise<string> {
    const printed: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => (printed.push(chunk), true)) as typeof process.stdout.write;
    try {
      await gatewayMain(args);
    } finally {
      process.stdout.write = write;
    }
    return printed.join("").trim();
  }

  it("the command line makes service keys (printing each once, storing its digest), limited to pools or not, and removes them", async () => {
    const dir = scratchDir("cli-keys-");
    const file = path.join(dir, "gateway.json");
    const port = await freePort();
    writeFileSync(file, JSON.stringify({ listen: { host: "127.0.0.1", port }, publicUrl: `http://127.0.0.1:${port}` }));
    await cli(["add-pool", "--config", file, "--name", "alpha", "--kind", "vcs"]);
    await cli(["add-pool", "--config", file, "--name", "beta", "--kind", "vcs"]);
    const all = await cli(["add-key", "--config", file, "--name", "ci"]);
    const alphaOnly = await cli(["add-key", "--config", file, "--name", "alpha team", "--pools", "alpha"]);
    await assert.rejects(cli(["add-key", "--config", file, "--name", "x", "--pools", "gamma"]), /no pool named gamma/);
    const stored = readFileSync(file, "utf8");
    for (const key of [all, alphaOnly]) {
      assert.match(key, /^apk1\.[0-9a-f]{12}\.[A-Za-z0-9_-]{43}$/);
      assert.ok(!stored.includes(key.split(".")[2]), "the secret is not stored");
    }
    assert.deepEqual(
      JSON.parse(stored).keys.map((k: { name: string; pools?: string[] }) => [k.name, k.pools]),
      [
        ["ci", undefined],
        ["alpha team", ["alpha"]],
      ],
    );
    assert.equal(JSON.parse(stored).queueTimeoutMs, undefined, "defaults stay out of the file");

    const server = spawn(
      process.execPath,
      [path.join(packageRoot(), "build/gateway/main.js"), "serve", "--config", file],
      { stdio: "ignore" },
    );
    const url = `http://127.0.0.1:${port}`;
    const pools = async (key?: string) => {
      const response = await rawRequest(url, "/_agentpools/api/pools", {
        headers: key ? { authorization: `Bearer ${key}` } : {},
      });
      return response.status === 200
        ? JSON.parse(response.body).pools.map((p: { name: string }) => p.name)
        : response.status;
    };
    try {
      await eventually(async () => (await pools(all).catch(() => 0)) !== 0, 10_000, "the gateway to serve");
      assert.deepEqual(await pools(all), ["alpha", "beta"]);
      assert.deepEqual(await pools(alphaOnly), ["alpha"], "a limited key sees only its pools");
      assert.equal(await pools(), 401);
      assert.equal(
        (await rawRequest(url, "/beta/api/v4/version", { headers: { "x-agentpools-key": alphaOnly } })).status,
        403,
      );
    } finally {
      server.kill("SIGTERM");
    }
    await cli(["remove-key", "--config", file, "--id", alphaOnly.split(".")[1]]);
    assert.deepEqual(
      JSON.parse(readFileSync(file, "utf8")).keys.map((k: { name: string }) => k.name),
      ["ci"],
    );
    await assert.rejects(cli(["remove-key", "--config", file, "--id", "000000000000"]), /no key with id/);
  });

  it("the command line adds a pool (printing its token once) and serves the config", async () => {
    const dir = scratchDir("cli-");
    const file = path.join(dir, "gateway.json");
    const port = await freePort();
    writeFileSync(file, JSON.stringify({ listen: { host: "127.0.0.1", port }, publicUrl: `http://127.0.0.1:${port}` }));
    const printed: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => (printed.push(chunk), true)) as typeof process.stdout.write;
    try {
      await gatewayMain(["add-pool", "--config", file, "--name", "cli", "--kind", "vcs"]);
    } finally {
      process.stdout.write = write;
    }
    const token = printed.join("").trim();
    const stored = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(stored.pools[0].name, "cli");
    assert.ok(
      !readFileSync(file, "utf8").includes(JSON.parse(Buffer.from(token.slice(4), "base64url").toString()).secret),
    );
    await assert.rejects(
      gatewayMain(["add-pool", "--config", file, "--name", "cli", "--kind", "vcs"]),
      /exists already/,
    );

    // A worker pool: signed from a CSR, with the CA kept in dataDir; refused without either.
    await assert.rejects(
      gatewayMain(["add-pool", "--config", file, "--name", "workers", "--kind", "worker"]),
      /needs --csr FILE/,
    );
    const { csr } = await makePoolKeyAndRequest("workers");
    writeFileSync(path.join(dir, "spacelift.csr"), csr);
    const addWorkerPool = () =>
      gatewayMain([
        "add-pool",
        "--config",
        file,
        "--name",
        "workers",
        "--kind",
        "worker",
        "--csr",
        path.join(dir, "spacelift.csr"),
      ]);
    await assert.rejects(addWorkerPool(), /set dataDir/);
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), dataDir: path.join(dir, "data") }));
    printed.length = 0;
    process.stdout.write = ((chunk: string) => (printed.push(chunk), true)) as typeof process.stdout.write;
    try {
      await addWorkerPool();
    } finally {
      process.stdout.write = write;
    }
    const workerToken = decodeToken(printed.join("").trim());
    assert.equal(workerToken.pool, "workers");
    assert.equal(JSON.parse(readFileSync(file, "utf8")).pools[1].certificate, workerToken.certificate);
    assert.ok(existsSync(path.join(dir, "data", "worker-ca.key")));

    const server = spawn(
      process.execPath,
      [path.join(packageRoot(), "build/gateway/main.js"), "serve", "--config", file],
      { stdio: "ignore" },
    );
    const agent = await vcsAgentRole.start(
      vcsAgentSettings.parse({ token, targetBaseEndpoint: vcs.url, vendor: "gitlab" }),
      { log: capturingLogger("vcs-agent").log },
    );
    try {
      await agent.ready;
    } finally {
      await agent.drain(Date.now() + 2000);
      server.kill("SIGTERM");
    }
  });
});
