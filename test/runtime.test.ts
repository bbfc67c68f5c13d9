import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { settingsJsonSchema } from "../agent/config/settings-schema";
import type { VcsAgentSettings } from "../agent/config/vcs-agent";
import { runRole, writeStatusFiles, type Role, type RunningAgent } from "../agent/runtime/runtime";
import { decodeUserData, renderUserData } from "../components/aws/userdata";
import { poolNoProxy, poolUserDataSpec, type PoolSpec } from "../components/aws/pool-core";
import { FakeAws } from "../devkit/fake-aws";
import { gatewayCertificates } from "../devkit/certificates";
import { writeDockerStandIn } from "../devkit/docker-stand-in";
import { vcsAgentPoolArgs } from "../components/aws/vcs-agent-pool";
import { workerPoolArgs } from "../components/aws/worker-pool";
import { plainSettings } from "../agent/config/env";
import { encodeToken } from "../protocol/token";
import { METRICS, METRICS_NAMESPACE, POOL_DIMENSION } from "../agent/config/metrics";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, recordingProxy, runBundle, scratchDir } from "../devkit/helpers";

/** See devkit/lookup-recorder.ts. */
const LOOKUP_RECORDER = path.join(__dirname, "..", "devkit", "lookup-recorder.js");

const SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:agentpools/vcs-AbCdEf";
const TOKEN = encodeToken({
  gateway: "https://gateway.example.com",
  pool: "git",
  secret: "vcs-secret-that-must-stay-secret",
});

/**
 * A role for these tests: it "connects" by opening a TCP connection to the port in its
 * target endpoint and drains by saying goodbye. It records what it was given.
 */
function tcpRole(seen: { settings?: VcsAgentSettings; drained?: boolean; order: string[] }): Role<VcsAgentSettings> {
  return {
    name: "vcs-agent",
    start(settings, { log }): RunningAgent {
      seen.settings = settings;
      const url = new URL(settings.targetBaseEndpoint);
      const socket = net.connect(Number(url.port), url.hostname);
      const stopped = new Promise<void>((resolve, reject) => {
        socket.on("error", reject);
        socket.on("close", () => resolve());
      });
      stopped.catch(() => undefined);
      return {
        ready: new Promise((resolve) =>
          socket.once(
            "connect",
            () => (seen.order.push("connected"), log.info("connected", { token: settings.token }), resolve()),
          ),
        ),
        stopped,
        async drain() {
          seen.drained = true;
          seen.order.push("drained");
          await new Promise<void>((resolve) => socket.end("bye\n", resolve));
        },
      };
    },
  };
}

/** The instance configuration a pool renders, read back out of its user-data (a VcsAgentPool unless told). */
/** A pool token's fields (protocol/token.ts). */
const parsed = (token: string) => JSON.parse(Buffer.from(token.slice(4), "base64url").toString("utf8"));

function renderedInstance(
  gatewayPort: number,
  extraSettings: Record<string, unknown> = {},
  role: "vcs-agent" | "launcher" = "vcs-agent",
  awsOverrides: Record<string, number> = {},
  /** Settings that differ run after run (scratch paths), set in the decoded configuration like the port. */
  placed: Record<string, unknown> = {},
) {
  // As the component renders them: every non-secret setting, defaults filled in by the pool's zod schema.
  const settings = {
    ...plainSettings(
      settingsJsonSchema(role),
      role === "vcs-agent"
        ? vcsAgentPoolArgs.parse({ targetBaseEndpoint: "https://git.example.com", vendor: "gitlab" })
        : workerPoolArgs.parse({}),
    ),
    ...(role === "vcs-agent" ? { targetBaseEndpoint: "http://127.0.0.1:1" } : {}),
  };
  // A free port or a scratch path rendered would make the user-data differ each run, and Brotli at quality 11 (some
  // 70 ms of CPU a render) miss the cache of the last run's archives (devkit/brotli-cache.ts): they go into the decoded
  // configuration instead, over what was rendered in their place.
  placed = { ...(role === "vcs-agent" ? { targetBaseEndpoint: `http://127.0.0.1:${gatewayPort}` } : {}), ...placed };
  const spec = {
    kind: role === "vcs-agent" ? "VcsAgentPool" : "WorkerPool",
    role,
    core: {
      ...vcsAgentPoolArgs.parse({ targetBaseEndpoint: "https://git.example.com", vendor: "gitlab" }),
      drainTimeoutSeconds: 30,
    },
    settings: { ...settings, ...extraSettings },
    docker: false,
    gvisor: false,
  } as unknown as PoolSpec;
  const decoded = decodeUserData(
    renderUserData(
      poolUserDataSpec("git", spec, {
        secretArn: SECRET_ARN,
        autoScalingGroupName: "agentpools-git-1a2b",
        logGroupName: "/agentpools/agentpools-git-1a2b",
        region: "eu-west-1",
        dnsSuffix: "amazonaws.com",
      }),
    ),
  );
  const dir = scratchDir("instance-");
  const file = path.join(dir, `${role}.json`);
  const config = JSON.parse(decoded.files.get(`/etc/agentpools/${role}.json`)?.content as string);
  // Intervals a test can wait for: the rendered ones are a minute and more, the polls (left to their defaults) seconds.
  const polls = { lifecyclePollSeconds: 0.02, protectionPollSeconds: 0.02 };
  for (const key of Object.keys(placed)) assert.ok(key in config.settings, `${key} is rendered into the configuration`);
  const settingsPlaced = { ...config.settings, ...placed };
  writeFileSync(
    file,
    JSON.stringify({ ...config, settings: settingsPlaced, aws: { ...config.aws, ...polls, ...awsOverrides } }),
  );
  const bundle = path.join(dir, `${role}.js`);
  writeFileSync(bundle, decoded.files.get(`/opt/agentpools/${role}.js`)?.content as string);
  return { configFile: file, bundleFile: bundle };
}

describe("runtime start-up path (against a fake AWS on loopback)", () => {
  let aws: FakeAws;
  let base: string;
  let gateway: net.Server;
  let gatewayPort: number;
  const received: string[] = [];

  beforeEach(async () => {
    aws = new FakeAws();
    base = await aws.start();
    aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKEN }));
    gateway = net.createServer((socket) => socket.on("data", (d) => received.push(d.toString())));
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
    gatewayPort = (gateway.address() as net.AddressInfo).port;
  });
  afterEach(async () => {
    await aws.stop();
    await new Promise((resolve) => gateway.close(resolve));
  });

  /** The shipped bundle as systemd would start it on the instance, against the fake AWS. */
  function startInstance(
    bundleFile: string,
    configFile: string,
    env: Record<string, string> = aws.env(base),
    nodeArgs: string[] = [],
  ) {
    const child = spawn(process.execPath, [...nodeArgs, bundleFile], {
      env: { PATH: process.env.PATH, ...env, AGENTPOOLS_CONFIG: configFile },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    // Both go to the unit's log file, which the CloudWatch agent ships to the pool's log group.
    for (const stream of [child.stdout, child.stderr]) stream.on("data", (d) => ((output += d), aws.tail(d)));
    return { child, output: () => output, exited: new Promise<number | null>((resolve) => child.on("exit", resolve)) };
  }

  async function run(
    options: {
      env?: Record<string, string>;
      stop?: Promise<string>;
      extraSettings?: Record<string, unknown>;
      aws?: Record<string, number>;
      role?: Role<VcsAgentSettings>;
    } = {},
  ) {
    const seen = { order: [] as string[] } as { settings?: VcsAgentSettings; drained?: boolean; order: string[] };
    const { configFile } = renderedInstance(gatewayPort, options.extraSettings, "vcs-agent", options.aws);
    const originalLog = process.stdout.write;
    const lines: string[] = [];
    // Its output is the unit's log file, which the CloudWatch agent ships to the pool's log group.
    process.stdout.write = ((chunk: string) => (
      lines.push(chunk),
      aws.tail(chunk),
      true
    )) as typeof process.stdout.write;
    try {
      const code = await runRole(options.role ?? tcpRole(seen), settingsJsonSchema("vcs-agent"), {
        env: { ...aws.env(base), AGENTPOOLS_CONFIG: configFile, ...options.env },
        argv: [],
        exit: () => undefined,
        stopSignal: options.stop ?? new Promise(() => undefined),
      });
      return { code, seen, lines };
    } finally {
      process.stdout.write = originalLog;
    }
  }

  /**
   * The shipped bundle started as the unit starts it behind a pool's proxy (the stand-in AWS, on http://, goes
   * around it), first without the gateway's CA, then trusting it: what it says, and only the gateway crosses the proxy.
   */
  async function dialThroughProxy(
    bundleFile: string,
    configFile: string,
    gatewayPort: number,
    ca: string,
    connections: () => number,
  ): Promise<string[]> {
    const proxy = await recordingProxy();
    const instanceEnv = (trust: boolean) => ({
      ...aws.env(base),
      NODE_USE_ENV_PROXY: "1",
      HTTPS_PROXY: proxy.url,
      NO_PROXY: "169.254.169.254",
      ...(trust ? { NODE_EXTRA_CA_CERTS: ca } : {}),
    });
    const outputs: string[] = [];
    try {
      const untrusting = startInstance(bundleFile, configFile, instanceEnv(false));
      try {
        await eventually(() => /cannot reach the gateway/.test(untrusting.output()), 10_000, "the untrusting dial");
        assert.match(untrusting.output(), /self.signed|unable to verify|certificate/i, "the certificate is checked");
        assert.ok(proxy.asked.includes(`127.0.0.1:${gatewayPort}`), `through the proxy (asked: ${proxy.asked})`);
        assert.equal(connections(), 0);
      } finally {
        untrusting.child.kill();
        outputs.push(untrusting.output());
      }
      proxy.asked.length = 0;
      const trusting = startInstance(bundleFile, configFile, instanceEnv(true));
      try {
        await eventually(() => connections() === 1, 10_000, "connected through the proxy");
        assert.deepEqual(
          [...new Set(proxy.asked)],
          [`127.0.0.1:${gatewayPort}`],
          "the gateway, and nothing else, through the proxy",
        );
      } finally {
        trusting.child.kill();
        outputs.push(trusting.output());
      }
    } finally {
      await proxy.close();
    }
    return outputs;
  }

  /** Once the runtime has asked to complete the launch hook (its agent connected): the moment to stop it. */
  const launched = () =>
    eventually(() => aws.callsOf("CompleteLifecycleAction").length > 0, 15_000, "the launch hook's completion");
  const terminatedOnceLaunched = () => launched().then(() => void (aws.lifecycleState = "Terminated"));

  it("fetches the credentials, connects, completes the launch hook; on termination drains and completes the other", async () => {
    const [{ code, seen, lines }] = await Promise.all([run(), terminatedOnceLaunched()]);
    assert.equal(code, 0);
    assert.deepEqual(aws.rejected, []);
    assert.equal(seen.settings?.token, TOKEN);
    assert.equal(seen.settings?.metadataTags.instance_id, "i-0123456789abcdef0");
    assert.equal(seen.settings?.metadataTags.availability_zone, "eu-west-1b");
    const lifecycle = aws.calls.filter((c) => c.action === "CompleteLifecycleAction").map((c) => c.body);
    assert.deepEqual(
      lifecycle.map((b) => [b.LifecycleHookName, b.AutoScalingGroupName, b.InstanceId, b.LifecycleActionResult]),
      [
        ["agent-connected", "agentpools-git-1a2b", "i-0123456789abcdef0", "CONTINUE"],
        ["agent-drained", "agentpools-git-1a2b", "i-0123456789abcdef0", "CONTINUE"],
      ],
    );
    assert.deepEqual(seen.order, ["connected", "drained"]);
    assert.ok(received.join("").includes("bye"));
    assert.ok(
      aws.logEvents.some((line) => JSON.parse(line).msg === "agent ready"),
      "logs reach the log group",
    );
    assert.ok(aws.logEvents.some((line) => JSON.parse(line).msg === "lifecycle action completed"));
    for (const line of aws.logEvents) assert.ok(!line.includes(TOKEN), `token leaked: ${line}`);
    assert.ok(
      lines.some((line) => line.includes("[redacted]")),
      "the role's attempt to log the token was redacted",
    );
  });

  it("a pool secret that is no JSON object (a bare token put there by hand) stops the runtime without a character of it", async () => {
    const bare = "spacelift-vcs-token-9f2c4e7a1b";
    for (const value of [bare, `${bare}"`, JSON.stringify(bare), "null"]) {
      aws.secrets.set(SECRET_ARN, value);
      const { code } = await run();
      assert.equal(code, 1);
      const said = aws.logEvents.join("\n");
      assert.match(said, new RegExp(`secret ${SECRET_ARN} is not a JSON object`));
      // (JSON.parse's own message quotes what it met: "Unexpected token 's', "spacelift-"... is not valid JSON".)
      assert.ok(!/'s'|spacelift-/.test(said), said);
      aws.logEvents.length = 0;
    }
  });

  it("README promise: no credential is ever in its log, even one the agent itself logs", async () => {
    const [{ code }] = await Promise.all([run(), terminatedOnceLaunched()]);
    assert.equal(code, 0);
    const shipped = aws.logEvents.join("\n");
    assert.ok(shipped.includes("[redacted]"), "the role did try to log its token");
    assert.ok(!shipped.includes(TOKEN), "the token is in a log");
    assert.ok(!shipped.includes(JSON.stringify(TOKEN).slice(1, -1)), "the token, JSON-escaped, is in a log");
  });

  it("on SIGTERM drains and exits without completing the termination hook", async () => {
    let stop!: (signal: string) => void;
    const stopped = new Promise<string>((resolve) => (stop = resolve));
    const [{ code, seen }] = await Promise.all([run({ stop: stopped }), launched().then(() => stop("SIGTERM"))]);
    assert.equal(code, 0);
    assert.equal(seen.drained, true);
    assert.deepEqual(
      aws.calls.filter((c) => c.action === "CompleteLifecycleAction").map((c) => c.body.LifecycleHookName),
      ["agent-connected"],
    );
  });

  it("a bad setting stops it before any hook is completed, naming the variable", async () => {
    const { code, seen, lines } = await run({ extraSettings: { parallelism: "lots" } });
    assert.equal(code, 1);
    assert.equal(seen.settings, undefined);
    assert.ok(
      lines.some((l) => l.includes('SPACELIFT_VCS_AGENT_PARALLELISM (parallelism): \\"lots\\" is not allowed')),
      lines.join(""),
    );
    assert.equal(
      aws.calls.filter((c) => c.action === "CompleteLifecycleAction").length,
      0,
      "the launch hook times out and the instance is abandoned",
    );
  });

  it("an agent that cannot connect fails without completing the launch hook", async () => {
    await new Promise((resolve) => gateway.close(resolve));
    const { code } = await run();
    assert.equal(code, 1);
    assert.equal(aws.calls.filter((c) => c.action === "CompleteLifecycleAction").length, 0);
    gateway = net.createServer().listen(0, "127.0.0.1");
  });

  it("a restarted runtime finds no pending launch action and carries on", async () => {
    aws.noPendingAction = true;
    const [{ code, lines }] = await Promise.all([run(), terminatedOnceLaunched()]);
    assert.equal(code, 0);
    const warned = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === "could not complete lifecycle action");
    assert.match(warned[0]?.error ?? "", /No active Lifecycle Action/);
    assert.ok(
      warned.every((l) => l.level === "warn"),
      "a warning, not an error the alarm counts",
    );
  });

  it("a missing secret is a clear failure", async () => {
    aws.secrets.clear();
    const { code, lines } = await run();
    assert.equal(code, 1);
    assert.ok(lines.some((l) => l.includes("ResourceNotFoundException")));
  });

  it("the shipped vcs-agent bundle, from decoded user-data: connects to a real gateway, completes both hooks, drains on termination", async function () {
    this.timeout(30_000);
    const port = await freePort();
    const { pool, token } = createPool("git", "vcs", `http://127.0.0.1:${port}`);
    const realGateway = new Gateway({ pools: [pool], port, log: capturingLogger("gateway").log });
    await realGateway.listen();
    aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_VCS_AGENT_POOL_TOKEN: token }));
    const { configFile, bundleFile } = renderedInstance(gatewayPort);
    const { child, output, exited } = startInstance(bundleFile, configFile);
    try {
      await eventually(() => realGateway.summary()[0].connections === 1, 10_000, "the bundle connected");
      const agent = realGateway.summary()[0].agents[0];
      assert.equal(agent.metadata.instance_id, "i-0123456789abcdef0", "instance metadata tags reach the gateway");
      await eventually(
        () =>
          aws.calls.some(
            (c) => c.action === "CompleteLifecycleAction" && c.body.LifecycleHookName === "agent-connected",
          ),
        5000,
      );
      aws.lifecycleState = "Terminated";
      assert.equal(await exited, 0, output());
    } finally {
      child.kill();
      await realGateway.close();
    }
    assert.equal(process.versions.node.split(".")[0], "24", "tests run on the instances' Node.js major");
    assert.deepEqual(aws.rejected, []);
    assert.ok(
      aws.calls.some((c) => c.action === "CompleteLifecycleAction" && c.body.LifecycleHookName === "agent-drained"),
    );
    assert.ok(
      aws.logEvents.some((line) => JSON.parse(line).msg === "drained"),
      "logs reached CloudWatch before exit",
    );
    assert.ok(!output().includes(token) && !aws.logEvents.join("").includes(token), "the token appears in no log");
  });

  it("the shipped launcher bundle, from decoded user-data: credentials from Secrets Manager, runs a job, drains on termination", async function () {
    this.timeout(60_000);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const dataDir = scratchDir("gw-");
    const { keyBase64, csr } = await makePoolKeyAndRequest("workers");
    const { pool, token } = createPool(
      "workers",
      "worker",
      url,
      await signPoolRequest(await loadOrCreateAuthority(dataDir), csr, "workers"),
    );
    const realGateway = new Gateway({ pools: [pool], port, dataDir, log: capturingLogger("gateway").log });
    await realGateway.listen();
    aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_TOKEN: token, SPACELIFT_POOL_PRIVATE_KEY: keyBase64 }));
    // The Docker executor, the only one a worker pool's bundle carries: no engine runs here, a stand-in docker
    // on the instance's PATH runs the job's script on this host.
    const { configFile, bundleFile } = renderedInstance(
      port,
      {},
      "launcher",
      {},
      {
        workDirectory: path.join(scratchDir("instance-"), "runs"),
      },
    );
    const bin = scratchDir("bin-");
    const calls = path.join(bin, "calls");
    writeDockerStandIn(bin, calls);
    const { child, output, exited } = startInstance(bundleFile, configFile, {
      ...aws.env(base),
      PATH: `${bin}:${process.env.PATH}`,
    });
    try {
      await eventually(() => realGateway.summary()[0].connections === 1, 15_000, "the launcher connected");
      assert.equal(realGateway.summary()[0].agents[0].metadata.instance_id, "i-0123456789abcdef0");
      await eventually(
        () =>
          aws.calls.some(
            (c) => c.action === "CompleteLifecycleAction" && c.body.LifecycleHookName === "agent-connected",
          ),
        5000,
      );
      const run = realGateway.workers.submit("workers", { image: "alpine:3", commands: ["echo ran on the instance"] });
      const id = (await run).id;
      await eventually(
        async () => (await realGateway.workers.get("workers", id)).status === "succeeded",
        10_000,
        "the run to succeed",
      );
      assert.match(readFileSync(calls, "utf8"), /\0run\0--rm\0/, "the job went through docker run");
      aws.lifecycleState = "Terminated";
      assert.equal(await exited, 0, output());
    } finally {
      child.kill();
      await realGateway.close();
    }
    assert.deepEqual(aws.rejected, []);
    assert.ok(
      aws.calls.some((c) => c.action === "CompleteLifecycleAction" && c.body.LifecycleHookName === "agent-drained"),
    );
    for (const secret of [token, keyBase64])
      assert.ok(!output().includes(secret) && !aws.logEvents.join("").includes(secret), "no credential in any log");
  });

  /**
   * A role whose connection and work the test sets; its drain lasts until released. `within`
   * runs a test body against it and, pass or fail, stops the runtime and waits for it.
   */
  function puppet() {
    const state = {
      connected: true,
      busy: false as boolean | number,
      started: 0,
      release: () => undefined as void,
      changed: async () => undefined as void,
    };
    const released = new Promise<void>((resolve) => (state.release = resolve));
    const role: Role<VcsAgentSettings> = {
      name: "vcs-agent",
      start: (_settings, context) => (
        (state.changed = context.busyChanged ?? state.changed),
        state.started++,
        {
          ready: Promise.resolve(),
          stopped: new Promise<void>(() => undefined),
          connected: () => state.connected,
          busy: () => state.busy,
          drain: () => released,
        }
      ),
    };
    let stop!: (signal: string) => void;
    const stopping = new Promise<string>((resolve) => (stop = resolve));
    const within = async (
      awsConfig: Record<string, number>,
      body: (running: ReturnType<typeof run>) => Promise<void>,
    ) => {
      const running = run({ role, stop: stopping, aws: awsConfig });
      try {
        await body(running);
      } finally {
        stop("SIGTERM");
        state.release();
        await running;
      }
    };
    return { state, stop: (signal: string) => stop(signal), within };
  }
  const metric = (name: string) => aws.metrics.filter((m) => m.name === name && m.namespace === METRICS_NAMESPACE);

  it("writes its connected, busy and draining metrics as embedded-metric lines of its log", async () => {
    const { state, stop, within } = puppet();
    await within({ metricsSeconds: 0.01 }, async () => {
      await eventually(() => metric(METRICS.connected).length >= 2, 5000, "connected data points");
      state.busy = true;
      await eventually(() => metric(METRICS.busy).some((m) => m.value === 1), 5000, "busy");
      stop("SIGTERM");
      await eventually(() => metric(METRICS.draining).some((m) => m.value === 1), 5000, "draining");
    });
    for (const point of aws.metrics) assert.deepEqual(point.dimensions, { [POOL_DIMENSION]: "agentpools-git-1a2b" });
    assert.ok(metric(METRICS.connected).some((m) => m.value === 1));
    // Each line carries one moment's metrics (two lines may share a millisecond: joined by line, not by timestamp).
    const draining = aws.logEvents.map((line) => JSON.parse(line)).filter((line) => line[METRICS.draining] === 1);
    assert.ok(draining.length > 0, "draining reported");
    assert.ok(
      draining.every((line) => line[METRICS.connected] === 0),
      "a draining agent is not counted as connected",
    );
    assert.deepEqual(
      aws.calls.filter((c) => !/Lifecycle|GetSecretValue|SetInstanceProtection/.test(c.action)),
      [],
      "no API call of their own",
    );
  });

  it("asks Auto Scaling to replace the instance once its agent has been cut off for the configured time, not before", async () => {
    // Not before: cut off for less than the time (a minute here, which no pause of a loaded machine spans), nothing asked.
    const patient = puppet();
    await patient.within({ metricsSeconds: 0.01, unhealthyAfterSeconds: 60 }, async () => {
      await eventually(() => metric(METRICS.connected).length >= 2, 5000, "running");
      patient.state.connected = false;
      await eventually(() => metric(METRICS.connected).at(-1)?.value === 0, 5000, "a disconnected data point");
      patient.state.connected = true;
      await eventually(() => metric(METRICS.connected).at(-1)?.value === 1, 5000, "reconnected");
    });
    assert.equal(aws.instanceHealth, "Healthy");
    assert.deepEqual(aws.callsOf("SetInstanceHealth"), []);

    // Once cut off for the time (a fifth of a second here: twenty data points), asked; then again as long after.
    const { state, within } = puppet();
    let running!: ReturnType<typeof run>;
    await within({ metricsSeconds: 0.01, unhealthyAfterSeconds: 0.2 }, async (started) => {
      running = started;
      const before = metric(METRICS.connected).length;
      await eventually(() => metric(METRICS.connected).length >= before + 2, 5000, "running");
      state.connected = false;
      await eventually(() => aws.instanceHealth === "Unhealthy", 5000, "marked unhealthy");
      // Auto Scaling ignores the request within the group's grace period: the runtime asks again, as long after.
      aws.instanceHealth = "Healthy";
      await eventually(() => aws.callsOf("SetInstanceHealth").length === 2, 5000, "asked again");
    });
    // When the runtime decided to ask, by its own log's clock (what a request's trip took is not counted).
    const asked = (await running).lines
      .map((line) => JSON.parse(line) as { time: string; msg: string })
      .filter((line) => line.msg === "gateway unreachable: asking for a new instance")
      .map((line) => Date.parse(line.time));
    // (A third may come before the runtime stops, on a loaded machine: each as long after the last.)
    assert.ok(asked.length >= 2, `asked ${asked.length} times`);
    for (const [i, at] of asked.slice(1).entries())
      // (200 ms by the runtime's clock; each line is dated a moment after its decision, hence the margin.)
      assert.ok(at - asked[i] >= 150, `asked again after ${at - asked[i]} ms: not once per 10 ms period`);
    // Each ask a request for this instance (the last may still be on its way when the runtime has stopped).
    const calls = aws.callsOf("SetInstanceHealth").map((b) => [b.InstanceId, b.HealthStatus]);
    assert.ok(calls.length >= 2 && calls.length <= asked.length, `${calls.length} requests, ${asked.length} asks`);
    assert.deepEqual(
      calls,
      calls.map(() => ["i-0123456789abcdef0", "Unhealthy"]),
    );
  });

  it("a drain longer than the termination hook's timeout renews it with heartbeats, then completes it", async () => {
    const { state, within } = puppet();
    await within({ heartbeatSeconds: 0.02 }, async () => {
      await eventually(() => aws.callsOf("CompleteLifecycleAction").length === 1, 5000, "launch hook completed");
      aws.lifecycleState = "Terminated";
      await eventually(
        () => aws.callsOf("RecordLifecycleActionHeartbeat").length >= 3,
        5000,
        "heartbeats while draining",
      );
      state.release();
      await eventually(() => aws.callsOf("CompleteLifecycleAction").length === 2, 5000, "termination hook completed");
    });
    const beats = aws.callsOf("RecordLifecycleActionHeartbeat");
    assert.ok(
      beats.every(
        (b) =>
          b.LifecycleHookName === "agent-drained" &&
          b.AutoScalingGroupName === "agentpools-git-1a2b" &&
          b.InstanceId === "i-0123456789abcdef0",
      ),
    );
    assert.equal(
      aws.calls.filter((c) => c.action.includes("Lifecycle")).at(-1)?.action,
      "CompleteLifecycleAction",
      "completed after the last heartbeat",
    );
    assert.equal(aws.callsOf("CompleteLifecycleAction")[1].LifecycleHookName, "agent-drained");
  });

  it("drained for SIGTERM (not by Auto Scaling), it records no heartbeat on a hook that holds nothing", async () => {
    const { stop, within } = puppet();
    await within({ heartbeatSeconds: 0.01, metricsSeconds: 0.01 }, async () => {
      await eventually(() => aws.callsOf("CompleteLifecycleAction").length === 1, 5000, "launch hook completed");
      stop("SIGTERM");
      await eventually(
        () => metric(METRICS.draining).filter((m) => m.value === 1).length >= 5,
        5000,
        "draining a while",
      );
    });
    assert.deepEqual(aws.callsOf("RecordLifecycleActionHeartbeat"), []);
  });

  it("reaches AWS at the partition's own domain (China here), around the proxy or through it as the pool says", async function () {
    this.timeout(20_000);
    aws.identity.region = "cn-north-1";
    aws.domain = "amazonaws.com.cn";
    aws.secrets.clear();
    // A proxy that records where it is asked to go, and goes nowhere.
    const asked: string[] = [];
    const proxy = http.createServer().on("connect", (req, socket) => {
      asked.push(req.url ?? "");
      // The instance is killed at any moment: its reset is expected, not the test's failure.
      socket.on("error", () => undefined).end("HTTP/1.1 502 Bad Gateway\r\n\r\n");
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
    // What goes around the proxy, as a pool renders it for this region (and the stand-in IMDS on loopback).
    const place = {
      secretArn: SECRET_ARN,
      autoScalingGroupName: "agentpools-git-1a2b",
      logGroupName: "/agentpools/agentpools-git-1a2b",
      region: "cn-north-1",
      dnsSuffix: "amazonaws.com.cn",
    };
    const core = vcsAgentPoolArgs.parse({
      targetBaseEndpoint: "https://git.example.com",
      vendor: "gitlab",
      httpsProxy: proxyUrl,
    });
    const noProxy = (viaProxy: boolean) =>
      `127.0.0.1,${poolNoProxy({ core: { ...core, awsApisViaProxy: viaProxy } } as unknown as PoolSpec, place) ?? ""}`;
    const { configFile, bundleFile } = renderedInstance(gatewayPort);
    try {
      for (const viaProxy of [true, false]) {
        asked.length = 0;
        const env = {
          AWS_EC2_METADATA_SERVICE_ENDPOINT: base,
          NODE_USE_ENV_PROXY: "1",
          HTTPS_PROXY: proxyUrl,
          NO_PROXY: noProxy(viaProxy),
        };
        const { child, output } = startInstance(bundleFile, configFile, env, ["--require", LOOKUP_RECORDER]);
        try {
          // Through the proxy: seen at once. Around it: the instance resolves the host itself (the call then fails, no
          // network here, and is retried for seconds), having asked the proxy nothing.
          // A failure says what the instance printed meanwhile (it failed once under load, the proxy asked nothing).
          const told = (error: Error) => {
            throw new Error(
              `${error.message}; asked: [${asked.join(", ")}]; the instance said:\n${output().slice(-2000)}`,
            );
          };
          if (viaProxy)
            await eventually(
              () => asked.includes("secretsmanager.cn-north-1.amazonaws.com.cn:443"),
              10_000,
              "CONNECT to Secrets Manager",
            ).catch(told);
          else
            await eventually(
              () => /^lookup secretsmanager\.cn-north-1\.amazonaws\.com\.cn$/m.test(output()),
              10_000,
              "the direct call's own lookup",
            ).catch(told);
          if (viaProxy) assert.doesNotMatch(output(), /^lookup .*amazonaws/m, "no AWS name resolved beside the proxy");
        } finally {
          child.kill();
        }
        if (!viaProxy) assert.deepEqual(asked, [], "the AWS APIs go around the proxy");
        assert.ok(!asked.some((host) => host.includes("amazonaws.com:")), "never the commercial partition's domain");
      }
    } finally {
      proxy.close();
    }
  });

  it("the shipped bundle reaches an https gateway through the instance's proxy (Node's, as the unit sets it), TLS checked end to end", async function () {
    this.timeout(30_000);
    const { ca, cert, key } = gatewayCertificates(scratchDir("tls-"));
    const port = await freePort();
    const { pool, token } = createPool("git", "vcs", `https://127.0.0.1:${port}`);
    const secureGateway = new Gateway({ pools: [pool], port, tls: { cert, key }, log: capturingLogger("gw").log });
    await secureGateway.listen();
    aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_VCS_AGENT_POOL_TOKEN: token }));
    const { configFile, bundleFile } = renderedInstance(gatewayPort);
    try {
      const outputs = await dialThroughProxy(
        bundleFile,
        configFile,
        port,
        ca,
        () => secureGateway.summary()[0].connections,
      );
      assert.ok(!outputs.join("").includes(token), "the token appears in no log");
    } finally {
      await secureGateway.close();
    }
  });

  it("the shipped launcher bundle (Node's own WebSocket) through the instance's proxy: only the gateway crosses it, TLS checked, a refusal final", async function () {
    this.timeout(60_000);
    const { ca, cert, key } = gatewayCertificates(scratchDir("tls-"));
    const port = await freePort();
    const dataDir = scratchDir("gw-");
    const { keyBase64, csr } = await makePoolKeyAndRequest("workers");
    const { pool, token } = createPool(
      "workers",
      "worker",
      `https://127.0.0.1:${port}`,
      await signPoolRequest(await loadOrCreateAuthority(dataDir), csr, "workers"),
    );
    const secureGateway = new Gateway({
      pools: [pool],
      port,
      dataDir,
      tls: { cert, key },
      log: capturingLogger("gw").log,
    });
    await secureGateway.listen();
    const useToken = (value: string) =>
      aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_TOKEN: value, SPACELIFT_POOL_PRIVATE_KEY: keyBase64 }));
    const { configFile, bundleFile } = renderedInstance(
      port,
      {},
      "launcher",
      {},
      {
        workDirectory: path.join(scratchDir("instance-"), "runs"),
      },
    );
    const outputs: string[] = [];
    try {
      useToken(token);
      outputs.push(
        ...(await dialThroughProxy(bundleFile, configFile, port, ca, () => secureGateway.summary()[0].connections)),
      );
      // The pool's secret replaced: the gateway refuses it, and the launcher stops for good, saying so once.
      useToken(encodeToken({ ...parsed(token), secret: "a-secret-the-gateway-never-made" }));
      const refused = startInstance(bundleFile, configFile, { ...aws.env(base), NODE_EXTRA_CA_CERTS: ca });
      try {
        assert.notEqual(await refused.exited, 0, refused.output());
        assert.match(refused.output(), /the gateway refused the connection: 401/);
        assert.equal(refused.output().match(/refused the connection/g)?.length, 1, "a refusal is not retried");
      } finally {
        refused.child.kill();
        outputs.push(refused.output());
      }
    } finally {
      await secureGateway.close();
    }
    for (const secret of [token, keyBase64, parsed(token).secret])
      assert.ok(!outputs.join("").includes(secret), "no credential in any log");
  });

  it("probes: a runtime's uid cannot replace the status files (a volume the kubelet made 2777), nor under a shared /tmp; a failed write fails the probe, never the agent", () => {
    // Traversable by every uid, as a pod's file system is; the volume as the kubelet makes it with an fsGroup.
    const root = mkdtempSync("/tmp/agentpools-status-");
    try {
      chmodSync(root, 0o755);
      const volume = path.join(root, "status");
      mkdirSync(volume);
      chmodSync(volume, 0o2777);
      const status = writeStatusFiles(volume, () => true, 60_000);
      const heartbeat = path.join(volume, "heartbeat");
      // What a runtime's uid does once past Node's permission model: the kernel is the wall.
      const attacker = (script: string) =>
        spawnSync("setpriv", ["--reuid=1900005001", "--regid=1900005001", "--clear-groups", "sh", "-c", script], {
          cwd: volume,
        }).status;
      assert.notEqual(attacker("mv heartbeat .gone"), 0, "renamed the heartbeat");
      assert.notEqual(attacker("touch -d 2099-01-01 planted && mv -f planted heartbeat"), 0, "planted a heartbeat");
      assert.notEqual(attacker("touch -d 2099-01-01 heartbeat"), 0, "dated the heartbeat in the future");
      assert.notEqual(attacker("rm -f ready"), 0, "removed the ready file");
      assert.equal(statSync(heartbeat).uid, 0);
      assert.ok(Math.abs(Number(readFileSync(heartbeat, "utf8")) - Date.now()) < 60_000);
      assert.ok(existsSync(path.join(volume, "ready")));
      assert.equal(statSync(volume).mode & 0o7777, 0o755);

      // A status directory inside a directory any uid may rename entries of (the pod's /tmp as an emptyDir was).
      mkdirSync(path.join(root, "shared"), { mode: 0o777 });
      chmodSync(path.join(root, "shared"), 0o2777);
      assert.throws(
        () => writeStatusFiles(path.join(root, "shared", "agentpools"), () => true, 60_000),
        new RegExp(`${root}/shared \\(mode 2777, uid 0\\) lets other users replace what it holds`),
      );

      // Its directory gone (whatever took it): the next write fails quietly, ready goes, the heartbeat goes stale.
      rmSync(volume, { recursive: true });
      writeFileSync(volume, "");
      assert.doesNotThrow(status.update);
      assert.doesNotThrow(status.stop);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("probes: alive from the first moment (waiting for a gateway that is down, draining), ready only while connected", async () => {
    const dir = path.join(scratchDir("status-"), "status");
    const heartbeat = () =>
      existsSync(path.join(dir, "heartbeat")) ? Number(readFileSync(path.join(dir, "heartbeat"), "utf8")) : 0;
    const ready = () => existsSync(path.join(dir, "ready"));
    const advanced = async (what: string) => {
      const before = heartbeat();
      await eventually(() => heartbeat() > before, 2000, `heartbeat advanced ${what}`);
    };
    let connect!: () => void;
    let finishDrain!: () => void;
    let stop!: (signal: string) => void;
    let connected = true;
    const draining = new Promise<void>((resolve) => (finishDrain = resolve));
    let drainStarted = false;
    const role: Role = {
      name: "vcs-agent",
      start: () => ({
        ready: new Promise<void>((resolve) => (connect = resolve)),
        stopped: new Promise<void>(() => undefined),
        connected: () => connected,
        drain: async () => {
          drainStarted = true;
          await draining;
        },
      }),
    };
    const exited = runRole(role, settingsJsonSchema("vcs-agent"), {
      env: {
        AGENTPOOLS_STATUS_DIR: dir,
        SPACELIFT_VCS_AGENT_POOL_TOKEN: "t",
        SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: "https://git.corp",
        SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
      },
      argv: [],
      exit: () => undefined,
      statusIntervalMs: 20,
      stopSignal: new Promise((resolve) => (stop = resolve)),
    });
    // The gateway is down: the agent has not connected, yet the process is alive and not ready.
    await eventually(() => connect !== undefined, 2000, "the agent started");
    await advanced("while not connected");
    assert.equal(ready(), false);
    connect();
    await eventually(ready, 2000, "ready once connected");
    connected = false;
    await eventually(() => !ready(), 2000, "not ready while reconnecting");
    await advanced("while reconnecting");
    connected = true;
    await eventually(ready, 2000, "ready again once reconnected");
    stop("SIGTERM");
    await eventually(() => drainStarted, 2000, "the drain started");
    assert.equal(ready(), false, "not ready once draining");
    await advanced("while draining");
    finishDrain();
    assert.equal(await exited, 0);
    assert.equal(ready(), false);
  });

  const protection = () => aws.callsOf("SetInstanceProtection").map((b) => b.ProtectedFromScaleIn);
  const isProtected = () => aws.group.instances.get(aws.identity.instanceId)?.protected;

  it("scale-in protection: lifted at start (a crashed runtime's), on while busy, off after; for its own instance and group", async () => {
    aws.group.instances.get(aws.identity.instanceId)!.protected = true; // left by a runtime that crashed mid-run
    const { state, within } = puppet();
    await within({ lingerSeconds: 0 }, async () => {
      await eventually(() => isProtected() === false, 5000, "lifted at start");
      state.busy = 0.25; // a share of its capacity is busy: protected all the same
      await eventually(() => isProtected() === true, 5000, "protected while busy");
      state.busy = 0;
      await eventually(() => isProtected() === false, 5000, "lifted once idle");
    });
    assert.deepEqual(protection(), ["false", "true", "false"]);
    for (const call of aws.callsOf("SetInstanceProtection")) {
      assert.deepEqual(
        [call.AutoScalingGroupName, call["InstanceIds.member.1"]],
        ["agentpools-git-1a2b", "i-0123456789abcdef0"],
      );
    }
  });

  it("scale-in protection is bounded: a stretch of work longer than protectSeconds lets the instance go; it lingers when asked", async () => {
    const { state, within } = puppet();
    await within({ protectSeconds: 0.3, lingerSeconds: 0.2 }, async () => {
      await eventually(() => protection().length === 1, 5000, "the first sync");
      state.busy = true;
      await eventually(() => isProtected() === true, 5000, "protected");
      await eventually(() => isProtected() === false, 5000, "lifted past the bound, though still busy");
      // How long the stretch had lasted, by the runtime's own clock (the test sees protection late on a loaded machine).
      const lifted = await eventually(
        () =>
          aws.logEvents
            .map((line) => JSON.parse(line))
            .find((line) => line.msg === "scale-in protection lifted" && "busySeconds" in line),
        5000,
        "the lift logged",
      );
      assert.ok(lifted.busySeconds >= 0.3, `not before the bound: ${lifted.busySeconds} s`);
      state.busy = false;
      await state.changed(); // as a launcher says its run ended: settled once AWS has it
      // Before the runtime last sees it busy (below): the linger runs from then, however late this test is scheduled.
      const since = Date.now();
      state.busy = true; // a new stretch of work
      await state.changed();
      assert.equal(isProtected(), true, "protected again, before busyChanged settled");
      state.busy = false;
      await eventually(() => isProtected() === false, 5000, "lifted after the linger");
      assert.ok(Date.now() - since >= 200, "kept for the linger");
    });
    assert.deepEqual(protection(), ["false", "true", "false", "true", "false"]);
  });

  it("a spot interruption notice drains at once, within the notice's time; then the termination hook is completed", async () => {
    const { state, within } = puppet();
    await within({ metricsSeconds: 0.01 }, async () => {
      await eventually(() => aws.callsOf("CompleteLifecycleAction").length === 1, 5000, "launch hook completed");
      state.busy = true;
      aws.spotAction = { action: "terminate", time: new Date(Date.now() + 20_000).toISOString() };
      await eventually(() => aws.logEvents.some((l) => JSON.parse(l).msg === "draining"), 5000, "draining");
      const draining = JSON.parse(aws.logEvents.find((l) => JSON.parse(l).msg === "draining") as string);
      assert.equal(draining.reason, "spot interruption");
      assert.ok(
        draining.timeoutSeconds <= 5 && draining.timeoutSeconds > 3,
        `the drain ends before the interruption (${draining.timeoutSeconds} s)`,
      );
      await eventually(() => metric(METRICS.draining).some((m) => m.value === 1), 5000, "reported draining");
      state.busy = false;
      state.release();
      await eventually(() => aws.logEvents.some((l) => JSON.parse(l).msg === "drained"), 5000, "drained");
      assert.equal(
        aws.callsOf("CompleteLifecycleAction").length,
        1,
        "the termination hook waits for Auto Scaling's termination",
      );
      aws.terminate();
      await eventually(
        () => aws.callsOf("CompleteLifecycleAction").length === 2,
        5000,
        "termination hook completed at once",
      );
    });
    assert.equal(aws.callsOf("CompleteLifecycleAction")[1].LifecycleHookName, "agent-drained");
  });

  it("a rebalance recommendation drains too (no new work), without a deadline shorter than the pool's", async () => {
    const { within } = puppet();
    await within({}, async () => {
      await eventually(() => aws.callsOf("CompleteLifecycleAction").length === 1, 5000, "launch hook completed");
      aws.rebalance = { noticeTime: new Date().toISOString() };
      await eventually(() => aws.logEvents.some((l) => JSON.parse(l).msg === "draining"), 5000, "draining");
    });
    const draining = JSON.parse(aws.logEvents.find((l) => JSON.parse(l).msg === "draining") as string);
    assert.deepEqual([draining.reason, draining.timeoutSeconds], ["rebalance recommendation", 30]);
  });

  it("in a warm pool: completes the launch hook without connecting, and connects only once put in service", async () => {
    aws.lifecycleState = "Warmed:Stopped";
    const { state, within } = puppet();
    await within({}, async () => {
      await eventually(
        () => aws.callsOf("CompleteLifecycleAction").length === 1,
        5000,
        "the warm pool's launch hook completed",
      );
      assert.equal(state.started, 0, "the agent did not start (nor connect) while warmed");
      aws.lifecycleState = "InService";
      await eventually(() => state.started === 1, 5000, "started once in service");
      await eventually(
        () => aws.callsOf("CompleteLifecycleAction").length === 2,
        5000,
        "the launch hook of going in service completed",
      );
    });
  });

  it("reports its boot once, as seconds from the instance's launch: the runtime started, the agent connected", async () => {
    const { within } = puppet();
    await within({}, async () => {
      await eventually(() => metric("BootAgentConnected").length === 1, 5000, "the boot reported");
    });
    for (const name of ["BootRuntimeStarted", "BootAgentConnected"]) {
      assert.equal(metric(name).length, 1, name);
      const value = metric(name)[0].value;
      assert.ok(value >= 90 && value < 120, `${name}: ${value} s after a launch 90 s ago`);
    }
    assert.ok(metric("BootRuntimeStarted")[0].value <= metric("BootAgentConnected")[0].value);
  });
});

describe("runtime command-line arguments", () => {
  /** A bundle started with arguments and nothing else: what it says, and its exit code. */
  const startBundle = (role: string, args: string[], env: Record<string, string> = {}) =>
    runBundle(path.join(__dirname, "..", "bundles", `${role}.js`), args, env);

  it("a role without flags (the launcher) refuses an argument, naming it, before reading any setting", async () => {
    const { code, output } = await startBundle("launcher", ["--token", "ap1.x"]);
    assert.equal(code, 1);
    assert.match(output, /unknown flag \\"--token\\"/);
    assert.doesNotMatch(output, /SPACELIFT_TOKEN/, "stopped before the settings were checked");
  });

  it("the VCS agent reads its flags, which win over its variables, and names a bad one", async () => {
    const env = {
      SPACELIFT_VCS_AGENT_POOL_TOKEN: TOKEN,
      SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: "http://127.0.0.1:1",
      SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
    };
    const bad = await startBundle("vcs-agent", ["--parallelism=0"], env);
    assert.equal(bad.code, 1);
    assert.match(
      bad.output,
      /SPACELIFT_VCS_AGENT_PARALLELISM \(parallelism\): 0 is not allowed: expected an integer from 1 to 64/,
    );
    const unknown = await startBundle("vcs-agent", ["--paralelism=2"], env);
    assert.equal(unknown.code, 1);
    assert.match(unknown.output, /unknown flag \\"--paralelism=2\\"/);
  });
});
