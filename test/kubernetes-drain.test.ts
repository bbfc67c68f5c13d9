// A worker pod through a drain: the rendered pod run by a stand-in kubelet that follows the
// documented termination order, the shipped launcher bundle from the pod's ConfigMap, and a
// stand-in Docker engine behind the image's documented entrypoint rule. A run in flight when
// the pod is deleted must finish and reach the gateway; the engine may stop only after.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { kubernetes } from "../components";
import { byType, one, settled, valueOf } from "../devkit/pulumi-mocks";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { SimulatedKubelet, terminationOrder } from "./kubelet";

/**
 * The docker image's entrypoint rule (docker-library's dockerd-entrypoint.sh): with no
 * arguments, or a first one starting with "-", it prepends dockerd with the default unix
 * socket and a TCP listener on 0.0.0.0 (2376 with TLS). Then a daemon that serves the unix
 * sockets it was given, runs each "container" as a shell in its own process group, and on
 * SIGTERM stops the containers it still has, as dockerd does.
 */
const ENGINE = String.raw`
const net = require("node:net");
const { spawn } = require("node:child_process");
// The simulation passes where the pod's files live first: sockets elsewhere stay the container's own.
const [podRoot, ...given] = process.argv.slice(2);
let args = given;
if (args.length === 0 || args[0].startsWith("-")) args = ["dockerd", "--host=unix:///var/run/docker.sock", "--host=tcp://0.0.0.0:2376", ...args];
const hosts = args.filter((a) => a.startsWith("--host=")).map((a) => a.slice(7));
console.log("hosts " + JSON.stringify(hosts));
const containers = new Map();
const server = net.createServer((socket) => {
  let buffer = "";
  socket.on("data", (chunk) => {
    buffer += chunk;
    if (!buffer.includes("\n")) return;
    const request = JSON.parse(buffer.slice(0, buffer.indexOf("\n")));
    if (request.cmd === "version") return socket.end(JSON.stringify({ exit: 0 }) + "\n");
    if (request.cmd === "kill") return (containers.get(request.name)?.kill("SIGKILL"), socket.end(JSON.stringify({ exit: 0 }) + "\n"));
    const child = spawn("/bin/sh", ["-ec", request.script], { cwd: request.cwd, env: request.env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    containers.set(request.name, { kill: (signal) => process.kill(-child.pid, signal) });
    console.log("container " + request.name + " started");
    const out = (data) => socket.write(JSON.stringify({ out: data.toString("base64") }) + "\n");
    child.stdout.on("data", out);
    child.stderr.on("data", out);
    child.on("close", (code, signal) => {
      containers.delete(request.name);
      console.log("container " + request.name + " exited " + (code ?? signal));
      socket.end(JSON.stringify({ exit: code ?? 137 }) + "\n");
    });
  });
});
server.listen(hosts.find((h) => h.startsWith("unix://" + podRoot)).slice(7));
process.on("SIGTERM", () => {
  console.log("SIGTERM with " + containers.size + " containers running");
  for (const container of containers.values()) container.kill("SIGKILL");
  server.close();
  const exit = () => (containers.size === 0 ? process.exit(0) : setTimeout(exit, 10));
  exit();
});
`;

/** The docker CLI's part the launcher and the startup probe use: version, run, kill, over DOCKER_HOST or --host. */
const CLI = String.raw`
const net = require("node:net");
const args = process.argv.slice(2);
const hostArg = args.find((a) => a.startsWith("--host="));
const host = (hostArg ? hostArg.slice(7) : process.env.DOCKER_HOST).replace(/^unix:\/\//, "");
const after = (flag) => args[args.indexOf(flag) + 1];
let request;
if (args.includes("version")) request = { cmd: "version" };
else if (args.includes("kill")) request = { cmd: "kill", name: args[args.length - 1] };
else {
  const mount = args.find((a, i) => args[i - 1] === "--mount" && a.includes("target=/workspace"));
  const env = { PATH: "/usr/bin:/bin" };
  args.forEach((a, i) => { if (args[i - 1] === "-e") env[a] = process.env[a]; });
  request = { cmd: "run", name: after("--name"), script: after("-ec"), cwd: /source=([^,]+)/.exec(mount)[1], env };
}
const socket = net.connect(host, () => socket.write(JSON.stringify(request) + "\n"));
let buffer = "";
socket.on("data", (chunk) => {
  buffer += chunk;
  let newline;
  while ((newline = buffer.indexOf("\n")) !== -1) {
    const message = JSON.parse(buffer.slice(0, newline));
    buffer = buffer.slice(newline + 1);
    if (message.out) process.stdout.write(Buffer.from(message.out, "base64"));
    if (message.exit !== undefined) process.exit(message.exit);
  }
});
socket.on("error", (error) => (process.stderr.write("docker: " + error.message + "\n"), process.exit(125)));
socket.on("close", () => (process.stderr.write("docker: the engine went away\n"), process.exit(125)));
`;

describe("Kubernetes worker pod through a drain (stand-in kubelet, shipped launcher)", function () {
  // Each wait is for a hang (a pod through a drain takes under a second alone): a loaded machine takes many times that.
  this.timeout(90_000);
  let port: number;
  let gateway: Gateway;
  let token: string;
  let keyBase64: string;
  let certificate: string;

  const service = serviceKey();
  before(async () => {
    port = await freePort();
    const request = await makePoolKeyAndRequest("workers");
    keyBase64 = request.keyBase64;
    const dataDir = scratchDir("gw-");
    certificate = await signPoolRequest(await loadOrCreateAuthority(dataDir), request.csr, "workers");
    const made = createPool("workers", "worker", `http://127.0.0.1:${port}`, certificate);
    token = made.token;
    gateway = new Gateway({
      pools: [made.pool],
      keys: [service.definition],
      port,
      dataDir,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
  });
  after(() => gateway.close());

  /** The rendered worker pod of a pool with `poolToken`, ready for the stand-in kubelet. */
  async function renderedPod(name: string, poolToken: string, reshape: (spec: Record<string, any>) => void) {
    const component = new kubernetes.WorkerPool(name, { token: poolToken, poolPrivateKey: keyBase64 });
    await valueOf(component.workloadName);
    const resources = await settled(name);
    const spec = structuredClone(one(resources, "kubernetes:apps/v1:Deployment").inputs.spec.template.spec);
    reshape(spec);
    const bin = scratchDir("bin-");
    const engine = path.join(bin, "engine.js");
    writeFileSync(engine, ENGINE);
    writeFileSync(path.join(bin, "docker.js"), CLI);
    writeFileSync(
      path.join(bin, "docker"),
      `#!/bin/sh\nexec "${process.execPath}" "${path.join(bin, "docker.js")}" "$@"\n`,
    );
    chmodSync(path.join(bin, "docker"), 0o755);
    const secret = one(resources, "kubernetes:core/v1:Secret").inputs;
    const kubelet = new SimulatedKubelet({
      name: `${name}-7d9c5-x2x4q`,
      spec,
      configMaps: Object.fromEntries(
        byType(resources, "kubernetes:core/v1:ConfigMap").map((c) => [c.inputs.metadata.name, c.inputs.data]),
      ),
      secrets: { [secret.metadata.name]: secret.stringData.value },
      entrypoints: {
        [spec.initContainers?.[0]?.image ?? spec.containers[1].image]: [process.execPath, engine, tmpdir()],
      },
      binaries: { node: process.execPath, docker: path.join(bin, "docker") },
      path: `${bin}:${process.env.PATH}`,
    });
    return kubelet;
  }

  /** What the rendered probes of the launcher say right now. */
  const probes = (kubelet: SimulatedKubelet) => ({
    alive: kubelet.probePasses("launcher", "livenessProbe"),
    ready: kubelet.probePasses("launcher", "readinessProbe"),
  });
  /**
   * What they say once readiness is `ready`, or after 5 s what they say then: the runtime rewrites its status files
   * just after what the test waits on (the gateway counting the connection, the "draining" line), not before.
   */
  const probesWhen = (kubelet: SimulatedKubelet, ready: boolean) =>
    eventually(() => {
      const seen = probes(kubelet);
      return seen.ready === ready && seen;
    }, 5000).catch(() => probes(kubelet));

  async function podThroughDrain(name: string, reshape: (spec: Record<string, any>) => void = () => undefined) {
    const kubelet = await renderedPod(name, token, reshape);

    const fifo = path.join(scratchDir("release-"), "release");
    execFileSync("mkfifo", [fifo]);
    try {
      await kubelet.start();
      await eventually(
        () =>
          gateway.summary()[0].connections === 1 &&
          gateway.summary()[0].agents[0]?.metadata.pod === `${name}-7d9c5-x2x4q`,
        15_000,
        "the launcher connected",
      ).catch((error) => {
        throw new Error(`${error.message}: ${[...kubelet.output].map(([c, text]) => `${c}: ${text}`).join("\n")}`);
      });
      const connected = await probesWhen(kubelet, true);
      const { id } = await gateway.workers.submit(
        "workers",
        {
          image: "alpine:3",
          commands: ["echo started", `read line < ${fifo}`, "echo finished after the drain began"],
        },
        service.definition.id,
      );
      await eventually(
        () => kubelet.output.get("docker")?.includes(`container agentpools-run-${id} started`),
        20_000,
        "the run started in the engine",
      );
      const terminated = kubelet.terminate();
      await eventually(
        () => kubelet.output.get("launcher")?.includes('"msg":"draining"'),
        20_000,
        "the launcher drains",
      );
      const releaseRun = () => writeFileSync(fifo, "go\n");
      const eventsBeforeRelease = [...kubelet.events];
      const draining = await probesWhen(kubelet, false);
      // The run ends when released, or when its engine is stopped under it.
      if (
        (await gateway.workers.get("workers", id, service.definition.id)).status === "running" &&
        !eventsBeforeRelease.includes("SIGTERM docker")
      )
        releaseRun();
      await terminated;
      await eventually(
        async () =>
          !["queued", "running"].includes((await gateway.workers.get("workers", id, service.definition.id)).status),
        10_000,
        "the run's result reached the gateway",
      );
      const logs = await (
        await fetch(`http://127.0.0.1:${port}/_agentpools/api/workers/workers/runs/${id}/logs`, {
          headers: service.headers,
        })
      ).text();
      return {
        run: await gateway.workers.get("workers", id, service.definition.id),
        logs,
        probes: { connected, draining },
        events: kubelet.events,
        eventsBeforeRelease,
        engine: kubelet.output.get("docker") ?? "",
        launcher: kubelet.output.get("launcher") ?? "",
      };
    } finally {
      kubelet.kill();
    }
  }

  it("the engine is signalled only after the launcher has delivered the run it drained", async () => {
    const { run, logs, events, eventsBeforeRelease, engine, probes: seen } = await podThroughDrain("k-drain");
    // The rendered probes, run against the live runtime: ready once connected, not while draining, alive throughout.
    assert.deepEqual(seen, { connected: { alive: true, ready: true }, draining: { alive: true, ready: false } });
    assert.deepEqual(
      eventsBeforeRelease,
      ["started docker", "started launcher", "SIGTERM launcher"],
      "while the launcher drains, the engine is left alone",
    );
    assert.equal(run.status, "succeeded", logs);
    assert.match(logs, /finished after the drain began/);
    assert.deepEqual(events.slice(3), ["exited launcher 0", "SIGTERM docker", "exited docker 0"]);
    assert.match(engine, /container agentpools-run-\S+ exited 0\nSIGTERM with 0 containers running/);
    const hosts: string[] = JSON.parse(/hosts (.*)/.exec(engine)?.[1] ?? "[]");
    assert.equal(hosts.length, 1, "the engine listens on one address");
    assert.match(hosts[0], /^unix:\/\/\/.*\/docker-socket\/docker\.sock$/, "the socket in the pod's shared volume");
  });

  it("a gateway that is down: the launcher keeps trying, alive (no restart) and not ready", async () => {
    const closed = await freePort();
    const kubelet = await renderedPod(
      "k-down",
      createPool("workers", "worker", `http://127.0.0.1:${closed}`, certificate).token,
      () => undefined,
    );
    try {
      await kubelet.start();
      const attempts = () => kubelet.output.get("launcher")?.match(/cannot reach the gateway/g)?.length ?? 0;
      await eventually(() => attempts() >= 2, 15_000, "a second attempt to connect");
      assert.deepEqual(probes(kubelet), { alive: true, ready: false });
      assert.ok(!kubelet.events.some((e) => e.startsWith("exited launcher")), "the launcher is still running");
    } finally {
      kubelet.kill();
    }
  });

  it("not blind: with the engine as a regular container, the same drain kills the run", async () => {
    const { run, events, engine } = await podThroughDrain("k-drain-old", (spec) => {
      const [docker] = spec.initContainers;
      delete docker.restartPolicy;
      delete docker.startupProbe;
      docker.args = docker.args.slice(1); // and the old arguments, flags first
      spec.containers.push(docker);
      delete spec.initContainers;
    });
    assert.deepEqual(terminationOrder({ containers: [{ name: "launcher" }, { name: "docker" }] }).first, [
      "launcher",
      "docker",
    ]);
    assert.ok(events.indexOf("SIGTERM docker") < events.indexOf("exited launcher 0"), events.join(", "));
    assert.equal(run.status, "failed");
    assert.match(engine, /SIGTERM with 1 containers running/);
    assert.match(engine, /tcp:\/\/0\.0\.0\.0:2376/, "flags first: the entrypoint adds a TCP listener");
  });
});
