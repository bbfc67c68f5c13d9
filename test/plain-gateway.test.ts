// An agent sends its pool's token to its gateway: never in plain http:// over a network. Each role's bundle, started
// as `docker run` or a pod would start it (settings from the environment, checked against the JSON Schema only),
// refuses such a gateway before it dials, and still dials a loopback one.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { packageRoot, RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { eventually, scratchDir } from "../devkit/helpers";
import { encodeToken } from "../protocol/token";

const secret = "s".repeat(43);
/** A worker pool's key and the certificate the gateway signed for it (before()). */
const pool = { keyBase64: "", certificate: "" };

/** Each role's environment for a gateway at `gateway`. */
const roles: Record<string, (gateway: string) => Record<string, string>> = {
  launcher: (gateway) => ({
    SPACELIFT_TOKEN: encodeToken({ gateway, pool: "workers", secret, certificate: pool.certificate }),
    SPACELIFT_POOL_PRIVATE_KEY: pool.keyBase64,
    AGENTPOOLS_WORKER_EXECUTOR: "process",
    AGENTPOOLS_WORK_DIR: scratchDir("plain-gw-"),
  }),
  "vcs-agent": (gateway) => ({
    SPACELIFT_VCS_AGENT_POOL_TOKEN: encodeToken({ gateway, pool: "git", secret }),
    SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: "http://git.corp.internal",
    SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
  }),
  "flows-agent": (gateway) => ({
    FLOWS_AGENT_POOL_ID: "pool",
    FLOWS_AGENT_POOL_TOKEN: secret,
    FLOWS_GATEWAY_ENDPOINT: gateway,
    FLOWS_ENDPOINT: "https://flows.example.com",
    FLOWS_EXECUTOR: "process",
    FLOWS_RUNTIME_ISOLATION: "none",
    FLOWS_DOCKER_MOUNTS_TEMPDIR: scratchDir("plain-gw-"),
  }),
};

function start(role: string, env: Record<string, string>) {
  const child = spawn(
    process.execPath,
    [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles", `${role}.js`)],
    { env: { PATH: process.env.PATH, ...env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  return { child, exited, output: () => output };
}

describe("agents refuse a plain-http gateway over a network", function () {
  this.timeout(20_000);
  const dialled: string[] = [];
  const server = net.createServer((socket) => {
    dialled.push(String(socket.remotePort));
    socket.destroy();
  });
  let port = 0;
  before(async () => {
    const { keyBase64, csr } = await makePoolKeyAndRequest("workers");
    pool.keyBase64 = keyBase64;
    pool.certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("plain-gw-ca-")), csr, "workers");
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as net.AddressInfo).port;
  });
  after(() => server.close());

  for (const [role, env] of Object.entries(roles)) {
    it(`${role}: refused before it dials, naming the setting, the value and what is allowed`, async () => {
      // A name that reads as loopback but is not: the check is the URL's host, as the dialer reads it.
      const agent = start(role, env(`http://localhost.example.com:${port}`));
      assert.notEqual(await agent.exited, 0);
      const variable = role === "flows-agent" ? "FLOWS_GATEWAY_ENDPOINT" : "the pool token is not valid: its gateway";
      assert.match(
        agent.output(),
        new RegExp(
          `${variable}:? http://localhost.example.com:${port} is not allowed: use https://, or http:// only ` +
            "to localhost, 127.0.0.0/8 or \\[::1\\]",
        ),
      );
      assert.ok(!agent.output().includes(secret), "the secret is not shown");
    });

    it(`${role}: a loopback gateway in plain http is dialled`, async () => {
      const before = dialled.length;
      const agent = start(role, env(`http://127.0.0.1:${port}`));
      try {
        await eventually(() => dialled.length > before, 10_000, `${role} to dial: ${agent.output()}`);
      } finally {
        agent.child.kill("SIGKILL");
        await agent.exited;
      }
    });
  }
});
