// `npm start`: the whole loop on this machine. A gateway on loopback with a VCS pool, a Flows
// pool and a worker pool; the vcs-agent, flows-agent and launcher runtimes (the very bundles
// the components ship in user-data) dialling it; and a demo Git repository standing in for
// your internal Git server. It checks itself, prints where to look and what to try, and runs
// until Ctrl-C.
import { execFile, spawn } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { packageRoot } from "../components/shared/bundles";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { LocalVcs } from "../devkit/local-vcs";
import { createPool } from "../gateway/pools";
import { createServiceKey, KEY_HEADER } from "../gateway/auth";
import { freePort, scratchDir } from "../devkit/helpers";

const run = promisify(execFile);
const PORT = Number(process.env.PORT ?? 8080);

async function main(): Promise<void> {
  const vcs = new LocalVcs();
  vcs.createRepository("demo/infrastructure.git", {
    "README.md": "# infrastructure\nServed by a Git server only this machine can reach.\n",
    "main.tf": 'resource "null_resource" "hello" {}\n',
  });
  vcs.createRepository("secret/keys.git", { "README.md": "not for the service\n" });
  await vcs.listen();

  const port = await freePort(PORT);
  const { pool, token } = createPool("demo", "vcs", `http://127.0.0.1:${port}`);
  const flowsPool = createPool("FLOWSDEMO", "flows", `http://127.0.0.1:${port}`);
  // A worker pool as a user makes one: their key and CSR, signed by the gateway's CA.
  const dataDir = scratchDir("demo-gateway-");
  const workerKey = await makePoolKeyAndRequest("workers");
  const workerPool = createPool(
    "workers",
    "worker",
    `http://127.0.0.1:${port}`,
    await signPoolRequest(await loadOrCreateAuthority(dataDir), workerKey.csr, "workers"),
  );
  // The service's key: every service-side request carries it. The status page is open to this host's browser.
  const service = createServiceKey("demo");
  const auth = { [KEY_HEADER]: service.key };
  const gateway = new Gateway({
    pools: [pool, flowsPool.pool, workerPool.pool],
    keys: [service.definition],
    statusOnLoopback: true,
    port,
    dataDir,
  });
  const url = await gateway.listen();
  const flowsBundle = path.join(packageRoot(), "build/bundles/flows-agent.js");
  const flows = spawn(process.execPath, [...RUNTIME_NODE_FLAGS, flowsBundle], {
    env: {
      PATH: process.env.PATH,
      FLOWS_AGENT_POOL_ID: "FLOWSDEMO",
      FLOWS_AGENT_POOL_TOKEN: flowsPool.token,
      FLOWS_GATEWAY_ENDPOINT: url,
      FLOWS_ENDPOINT: url,
      // No Docker engine is assumed here: each run is a separate, confined Node.js process.
      FLOWS_EXECUTOR: "process",
      FLOWS_DOCKER_MOUNTS_TEMPDIR: scratchDir("demo-flows-"),
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  flows.stdout?.on("data", (chunk: Buffer) =>
    process.stdout.write(chunk.toString().replace(/^(?=.)/gm, "[flows-agent] ")),
  );
  const agent = spawn(
    process.execPath,
    [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/vcs-agent.js")],
    {
      env: {
        PATH: process.env.PATH,
        SPACELIFT_VCS_AGENT_POOL_TOKEN: token,
        SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: vcs.url,
        SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
        SPACELIFT_VCS_AGENT_ALLOWED_PROJECTS: "demo/.*",
        SPACELIFT_METADATA_host: "demo",
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  agent.stdout?.on("data", (chunk: Buffer) =>
    process.stdout.write(chunk.toString().replace(/^(?=.)/gm, "[vcs-agent] ")),
  );
  const launcher = spawn(
    process.execPath,
    [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/launcher.js")],
    {
      env: {
        PATH: process.env.PATH,
        SPACELIFT_TOKEN: workerPool.token,
        SPACELIFT_POOL_PRIVATE_KEY: workerKey.keyBase64,
        SPACELIFT_WHITELIST_ENVS: "DEMO_REGION",
        SPACELIFT_MASK_ENVS: "DEMO_PASSWORD",
        DEMO_REGION: "eu-west-1",
        DEMO_PASSWORD: "correct-horse-battery-staple",
        SPACELIFT_METADATA_host: "demo",
        // No Docker engine is assumed here: each run is a shell on this machine, in its own workspace.
        AGENTPOOLS_WORKER_EXECUTOR: "process",
        AGENTPOOLS_WORK_DIR: scratchDir("demo-runs-"),
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  launcher.stdout?.on("data", (chunk: Buffer) =>
    process.stdout.write(chunk.toString().replace(/^(?=.)/gm, "[launcher] ")),
  );

  const connected = () => gateway.summary().every((p) => p.connections > 0);
  for (let i = 0; i < 100 && !connected(); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  if (!connected()) throw new Error("an agent did not connect");

  // Check the loop before inviting anyone to use it.
  const clone = scratchDir("demo-clone-");
  await run("git", [
    "-c",
    `http.extraHeader=${KEY_HEADER}: ${service.key}`,
    "clone",
    "--quiet",
    `${url}/demo/demo/infrastructure.git`,
    clone,
  ]);
  const head = (await run("git", ["-C", clone, "log", "--oneline", "-1"])).stdout.trim();
  const refused = await fetch(`${url}/demo/secret/keys.git/info/refs?service=git-upload-pack`, { headers: auth });
  const keyless = await fetch(`${url}/demo/demo/infrastructure.git/info/refs?service=git-upload-pack`);
  const runUrl = `${url}/_agentpools/api/flows/FLOWSDEMO/run`;
  const flowsRun = (await (
    await fetch(runUrl, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ code: "inputs.a * inputs.b", inputs: { a: 6, b: 7 } }),
    })
  ).json()) as { value: unknown };
  const runsUrl = `${url}/_agentpools/api/workers/workers/runs`;
  const workerRun = (await (
    await fetch(runsUrl, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ image: "alpine:3", commands: ["echo region=$DEMO_REGION password=$DEMO_PASSWORD"] }),
    })
  ).json()) as { id: string };
  const workerLog = (await (await fetch(`${runsUrl}/${workerRun.id}/logs?follow=1`, { headers: auth })).text()).trim();

  console.log(`
agentpools demo: a gateway with a VCS agent pool, a Flows pool and a worker pool, and a Git server, all on this machine.

  self-check   cloned demo/infrastructure through the agent: ${head}
               secret/keys is outside the pool's allowed projects: ${refused.status} ${refused.status === 403 ? "(refused, as it should be)" : "(UNEXPECTED)"}
               a request without the service key: ${keyless.status} ${keyless.status === 401 ? "(refused, as it should be)" : "(UNEXPECTED)"}
               a Flows run of 6 * 7 on the Flows agent: ${JSON.stringify(flowsRun.value)}
               a worker run on the launcher logged: ${workerLog}   (the password is masked)

  service key  ${service.key}
               (made for this run; a real gateway makes one with: node build/gateway/main.js add-key --config gateway.json --name NAME)
  status page  ${url}/   (open to this host without the key)
  JSON API     ${url}/_agentpools/api/pools
  Git server   ${vcs.url}  (stands in for an internal server the service cannot reach)

Try (every request carries the key):
  KEY=${service.key}
  git -c http.extraHeader="${KEY_HEADER}: $KEY" clone ${url}/demo/demo/infrastructure.git
  curl -H "${KEY_HEADER}: $KEY" ${url}/demo/api/v4/projects/demo%2Finfrastructure/repository/branches   # allowed: list branches
  curl -H "${KEY_HEADER}: $KEY" ${url}/demo/api/v4/projects/secret%2Fkeys                               # refused: project not allowed
  curl -H "${KEY_HEADER}: $KEY" -X DELETE ${url}/demo/api/v4/projects/demo%2Finfrastructure             # refused: not on the allowlist
  curl ${url}/demo/api/v4/projects/demo%2Finfrastructure                                                 # refused: no key (401)
  curl -H "Authorization: Bearer $KEY" -d '{"code":"inputs.name.toUpperCase()","inputs":{"name":"flows"}}' ${runUrl}
  curl -H "Authorization: Bearer $KEY" -d '{"kind":"block","code":"return (await import(\\"node:fs\\")).readFileSync(\\"/etc/passwd\\", \\"utf8\\")"}' ${runUrl}   # refused: outside the run's scratch
  curl -H "Authorization: Bearer $KEY" -d '{"image":"alpine:3","commands":["echo hello","sleep 2","echo done"]}' ${runsUrl}   # a worker run; then:
  curl -H "Authorization: Bearer $KEY" ${runsUrl}/<id>/logs?follow=1                                                  # its log, live

The agents log one line per request above. Ctrl-C stops everything (the agents drain first).
`);

  const stop = async () => {
    for (const child of [agent, flows, launcher]) child.kill("SIGTERM");
    await Promise.all([agent, flows, launcher].map((child) => new Promise((resolve) => child.once("exit", resolve))));
    await gateway.close();
    await vcs.close();
    process.exit(0);
  };
  process.once("SIGINT", () => void stop());
  process.once("SIGTERM", () => void stop());
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
