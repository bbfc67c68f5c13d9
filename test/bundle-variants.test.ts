// The EC2 variants of the runtime bundles (agent/config/variants.ts): what each leaves out, and
// that a pool's instances get the one that serves their file.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { EC2_VARIANTS, bundleFile, ec2Variant, type BundleVariant } from "../agent/config/variants";
import type { RoleName } from "../agent/config/roles";
import { packageRoot, RUNTIME_NODE_FLAGS, runtimeBundle } from "../components/shared/bundles";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";
import { TOKENS } from "../devkit/fixtures";
import { capturingLogger, eventually, freePort, runBundle, scratchDir } from "../devkit/helpers";
import { secretSettings } from "../agent/config/env";
import { settingsJsonSchema } from "../agent/config/settings-schema";
import { VCS_VENDORS } from "../agent/config/vcs-agent";
import { validateSettings } from "../agent/config/validate";
import { preparePool } from "../components/aws/agent-pool";
import { poolUserDataSpec, worstCasePlace } from "../components/aws/pool-core";
import { flowsAgentPoolArgs, flowsAgentPoolKind } from "../components/aws/flows-agent-pool";
import { vcsAgentPoolArgs, vcsAgentPoolKind } from "../components/aws/vcs-agent-pool";
import { workerPoolArgs, workerPoolKind } from "../components/aws/worker-pool";
import { flowsArgs, LARGEST, vcsArgs, workerArgs } from "../devkit/fixtures";
import { readAnswer } from "./flows-stand-in";

/**
 * A variant started as on an instance, with these settings in its instance file and these variables (the secret
 * settings, which the pool's secret holds there) and nothing else: what it says, and its exit code.
 */
function startBundle(
  role: RoleName,
  variant: BundleVariant,
  settings: Record<string, unknown>,
  env: Record<string, string> = {},
  args: string[] = [],
) {
  const config = path.join(scratchDir("variant-"), `${role}.json`);
  writeFileSync(config, JSON.stringify({ role, pool: "pool", settings, drainTimeoutSeconds: 30 }));
  const bundle = path.join(packageRoot(), "build", "bundles", bundleFile(role, variant));
  return runBundle(bundle, args, { ...env, AGENTPOOLS_CONFIG: config });
}

/** The EC2 bundle of the Flows process executor. */
const FLOWS_PROCESS_BUNDLE = path.join(
  packageRoot(),
  "build",
  "bundles",
  bundleFile("flows-agent", { platform: "ec2", executor: "process" }),
);

describe("EC2 bundle variants", () => {
  // What only one side of each choice needs, as it reads in the minified code.
  const marks = {
    kubernetesProbes: '"heartbeat"',
    processSandbox: "--unshare-all",
    dockerRuntime: "--cap-drop=ALL",
    processRuns: "detached:!0",
    gitlabRules: "/api/v4/projects/",
    githubRules: "/api/v3/repos/",
  };
  const has = (role: RoleName, variant: BundleVariant, mark: string) => runtimeBundle(role, variant).includes(mark);

  it("the full bundles carry every path (the marks below are real)", () => {
    assert.ok(has("launcher", {}, marks.kubernetesProbes) && has("launcher", {}, marks.processRuns));
    assert.ok(has("flows-agent", {}, marks.processSandbox) && has("flows-agent", {}, marks.dockerRuntime));
    assert.ok(has("vcs-agent", {}, marks.gitlabRules) && has("vcs-agent", {}, marks.githubRules));
  });

  it("each variant leaves out Kubernetes' probe files and what its executor or vendor does not use", () => {
    for (const [role, variants] of Object.entries(EC2_VARIANTS) as [RoleName, BundleVariant[]][]) {
      for (const variant of variants) {
        assert.ok(!has(role, variant, marks.kubernetesProbes), `${bundleFile(role, variant)}: probe files`);
        assert.ok(runtimeBundle(role, variant).length < runtimeBundle(role).length);
      }
    }
    assert.ok(!has("launcher", { platform: "ec2", executor: "docker" }, marks.processRuns));
    assert.ok(!has("flows-agent", { platform: "ec2", executor: "docker" }, marks.processSandbox));
    assert.ok(has("flows-agent", { platform: "ec2", executor: "docker" }, marks.dockerRuntime));
    assert.ok(!has("flows-agent", { platform: "ec2", executor: "process" }, marks.dockerRuntime));
    assert.ok(has("flows-agent", { platform: "ec2", executor: "process" }, marks.processSandbox));
    assert.ok(!has("vcs-agent", { platform: "ec2", vendor: "gitlab" }, marks.githubRules));
    assert.ok(!has("vcs-agent", { platform: "ec2", vendor: "github_enterprise" }, marks.gitlabRules));
  });

  it("the component's choice: the variant of the pool's executor or vendor, the Docker executor unless told", () => {
    assert.deepEqual(ec2Variant("launcher", {}), { platform: "ec2", executor: "docker" });
    assert.deepEqual(ec2Variant("flows-agent", { executor: "process" }), { platform: "ec2", executor: "process" });
    assert.deepEqual(ec2Variant("vcs-agent", { vendor: "azure_devops" }), { platform: "ec2", vendor: "azure_devops" });
    assert.throws(() => ec2Variant("launcher", { executor: "process" }), /no EC2 bundle of the launcher/);
  });

  it("an instance file holds each setting as the full runtime would read it: a variant, which checks and fills in nothing, sees the same", () => {
    const kinds = [
      ["WorkerPool", "launcher", workerPoolArgs, workerPoolKind, [workerArgs(), LARGEST.worker]],
      ["VcsAgentPool", "vcs-agent", vcsAgentPoolArgs, vcsAgentPoolKind, [vcsArgs(), LARGEST.vcs]],
      ["FlowsAgentPool", "flows-agent", flowsAgentPoolArgs, flowsAgentPoolKind, [flowsArgs(), LARGEST.flows]],
      [
        "FlowsAgentPool",
        "flows-agent",
        flowsAgentPoolArgs,
        flowsAgentPoolKind,
        [flowsArgs({ executor: "process" }), LARGEST.flowsProcess],
      ],
    ] as const;
    for (const [component, role, schema, kind, configurations] of kinds) {
      for (const args of configurations) {
        const { settings } = preparePool(component, role, "pool", schema as never, args as never, kind as never);
        // The secret settings come from the pool's secret, beside the file.
        const secrets = Object.fromEntries(
          secretSettings(settingsJsonSchema(role)).map(({ key }) => [
            key,
            (args as unknown as Record<string, unknown>)[key],
          ]),
        );
        const full = validateSettings(role, settingsJsonSchema(role), { ...settings, ...secrets });
        assert.deepEqual(full, { ...settings, ...secrets }, `${component} (${role})`);
      }
    }
  });

  it("a pool's instances get the variant of the executor or vendor their own file names, for every choice", () => {
    const choices = [
      ["WorkerPool", "launcher", workerPoolArgs, workerPoolKind, [workerArgs(), LARGEST.worker]],
      [
        "VcsAgentPool",
        "vcs-agent",
        vcsAgentPoolArgs,
        vcsAgentPoolKind,
        [...VCS_VENDORS.map((vendor) => vcsArgs({ vendor })), LARGEST.vcs],
      ],
      [
        "FlowsAgentPool",
        "flows-agent",
        flowsAgentPoolArgs,
        flowsAgentPoolKind,
        [flowsArgs(), flowsArgs({ executor: "process" }), LARGEST.flows, LARGEST.flowsProcess],
      ],
    ] as const;
    const seen = new Set<string>();
    for (const [component, role, schema, kind, configurations] of choices) {
      for (const args of configurations) {
        const spec = preparePool(component, role, "pool", schema as never, args as never, kind as never);
        const userData = poolUserDataSpec("pool", spec, worstCasePlace("pool", spec.core));
        const file = userData.config.settings as { executor?: string; vendor?: string };
        const variant = EC2_VARIANTS[role].find((v) => runtimeBundle(role, v) === userData.bundle);
        assert.ok(variant, `${component}: an EC2 variant`);
        // What the variant serves is what the file names (a variant no longer checks it: it cannot differ).
        if (variant.executor) assert.equal(file.executor ?? "docker", variant.executor, `${component} executor`);
        if (variant.vendor) assert.equal(file.vendor, variant.vendor, `${component} vendor`);
        seen.add(bundleFile(role, variant));
      }
    }
    assert.equal(seen.size, Object.values(EC2_VARIANTS).flat().length, `every variant reached: ${[...seen]}`);
  });

  it("a variant still names a missing secret setting (a secret of the user's own may lack it)", async () => {
    const missing = await startBundle("launcher", { platform: "ec2", executor: "docker" }, {});
    assert.equal(missing.code, 1);
    assert.match(missing.output, /SPACELIFT_TOKEN \(token\): is required/);
    const vcs = await startBundle("vcs-agent", { platform: "ec2", vendor: "gitlab" }, { vendor: "gitlab" });
    assert.equal(vcs.code, 1);
    assert.match(vcs.output, /SPACELIFT_VCS_AGENT_POOL_TOKEN \(token\): is required/);
  });

  it("the Flows process bundle without the capabilities its unit grants: no runtime starts, so the agent never connects, and it says why", async function () {
    if (process.getuid?.() !== 0) this.skip(); // to start it as another user
    // It no longer looks for them first (the component grants them): the trial runtime is what fails.
    // Outside the scratch root (0700, root's): the unprivileged agent reads its file and makes its folder here.
    const dir = mkdtempSync(path.join(tmpdir(), "agentpools-nocaps-"));
    after(() => rmSync(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o777);
    const { settings } = preparePool(
      "FlowsAgentPool",
      "flows-agent",
      "pool",
      flowsAgentPoolArgs,
      flowsArgs({ executor: "process", mountsDir: path.join(dir, "mounts"), runtimeUids: "1900300100-1900300115" }),
      flowsAgentPoolKind,
    );
    const config = path.join(dir, "flows-agent.json");
    writeFileSync(config, JSON.stringify({ role: "flows-agent", pool: "pool", settings, drainTimeoutSeconds: 30 }));
    chmodSync(config, 0o644);
    const child = spawn(process.execPath, [...RUNTIME_NODE_FLAGS, FLOWS_PROCESS_BUNDLE], {
      uid: 65534,
      gid: 65534,
      env: { PATH: process.env.PATH, AGENTPOOLS_CONFIG: config, FLOWS_AGENT_POOL_TOKEN: TOKENS.flows },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 1, output);
    assert.match(output, /FLOWS_RUNTIME_ISOLATION=namespaces is not possible here: a runtime did not start: .*setpriv/);
    assert.doesNotMatch(output, /Connected to the server|runtimes isolated/);
  });

  it("the full Flows bundle (a pod's agent), runtimes of user isolation: its disk walker thread, evaluated from the minified code, ends a run over its disk; a run under it answers", async function () {
    if (process.getuid?.() !== 0) this.skip(); // uids of their own
    this.timeout(30_000);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const { pool, token } = createPool("01PODFLOWS", "flows", url);
    const gateway = new Gateway({ pools: [pool], port, log: capturingLogger("gateway").log });
    await gateway.listen();
    // Where runtimes of other uids reach it: right under the temporary directory.
    const runtimes = mkdtempSync(path.join(tmpdir(), "agentpools-pod-flows-"));
    const child = spawn(
      process.execPath,
      [...RUNTIME_NODE_FLAGS, path.join(packageRoot(), "build/bundles/flows-agent.js")],
      {
        env: {
          PATH: process.env.PATH,
          FLOWS_AGENT_POOL_ID: "01PODFLOWS",
          FLOWS_AGENT_POOL_TOKEN: token,
          FLOWS_GATEWAY_ENDPOINT: url,
          FLOWS_ENDPOINT: url,
          FLOWS_EXECUTOR: "process",
          FLOWS_RUNTIME_ISOLATION: "user",
          FLOWS_RUNTIME_DISK_MB: "16",
          FLOWS_RUNTIME_POOL_SIZE: "1",
          FLOWS_RUNTIME_UIDS: "1900300016-1900300019",
          FLOWS_DOCKER_MOUNTS_TEMPDIR: runtimes,
        },
        stdio: ["ignore", "ignore", "inherit"],
      },
    );
    const run = (code: string) => readAnswer(gateway.flows.run("01PODFLOWS", { kind: "block", code }));
    try {
      await eventually(() => gateway.summary()[0].connections === 1, 15_000, "the agent connected");
      // At least 4 KB an entry: 5000 empty files are over 16 MB. Each run waits long enough to be measured.
      const filler = await run(
        "const fs = await import('node:fs'); for (let d = 0; d < 50; d++) { fs.mkdirSync('t/' + d, { recursive: true }); for (let f = 0; f < 100; f++) fs.writeFileSync('t/' + d + '/' + f, ''); } await new Promise((r) => setTimeout(r, 10000)); return 'kept';",
      );
      assert.match(filler.error?.message ?? JSON.stringify(filler), /disk limit: \d+ MB of 16 MB/);
      const small = await run(
        "(await import('node:fs')).writeFileSync('a', 'b'); await new Promise((r) => setTimeout(r, 300)); return 'measured';",
      );
      assert.deepEqual([small.ok, small.value], [true, "measured"], JSON.stringify(small));
    } finally {
      child.kill("SIGTERM");
      await gateway.close();
      rmSync(runtimes, { recursive: true, force: true });
    }
  });

  it("the Flows process bundle (Node's own WebSocket): runs code through a real gateway; on SIGTERM a run in flight still answers, then it leaves", async function () {
    if (process.getuid?.() !== 0) this.skip(); // EC2's process executor isolates runtimes in namespaces under uids of their own
    this.timeout(30_000);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const { pool, token } = createPool("01EC2FLOWS", "flows", url);
    const gateway = new Gateway({ pools: [pool], port, log: capturingLogger("gateway").log });
    await gateway.listen();
    const args = flowsArgs({
      executor: "process",
      poolId: "01EC2FLOWS",
      gatewayEndpoint: url,
      backendEndpoint: url,
      mountsDir: scratchDir("ec2-flows-"),
      runtimePoolSize: 2,
      runtimeUids: "1900300000-1900300015",
    });
    const { settings } = preparePool(
      "FlowsAgentPool",
      "flows-agent",
      "pool",
      flowsAgentPoolArgs,
      args,
      flowsAgentPoolKind,
    );
    const config = path.join(scratchDir("variant-"), "flows-agent.json");
    writeFileSync(config, JSON.stringify({ role: "flows-agent", pool: "pool", settings, drainTimeoutSeconds: 30 }));
    const child = spawn(process.execPath, [...RUNTIME_NODE_FLAGS, FLOWS_PROCESS_BUNDLE], {
      env: { PATH: process.env.PATH, AGENTPOOLS_CONFIG: config, FLOWS_AGENT_POOL_TOKEN: token },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const connections = () => gateway.summary()[0].connections;
    try {
      await eventually(() => connections() === 1, 15_000, "the agent connected");
      const done = await readAnswer(
        gateway.flows.run("01EC2FLOWS", {
          kind: "expression",
          code: "inputs.a * 2",
          inputs: { a: 21 },
        }),
      );
      assert.deepEqual([done.ok, done.value], [true, 42], JSON.stringify(done));
      assert.match(output, /"isolation":"namespaces"/);
      const inFlight = readAnswer(
        gateway.flows.run("01EC2FLOWS", {
          kind: "block",
          code: "await new Promise((r) => setTimeout(r, 300)); return 'finished';",
        }),
      );
      await eventually(() => gateway.summary()[0].activeRequests === 1, 5_000, "the run in flight");
      child.kill("SIGTERM");
      assert.equal((await inFlight).value, "finished");
      assert.equal(await exited, 0, output);
      assert.equal(connections(), 0);
    } finally {
      child.kill("SIGKILL");
      await gateway.close();
    }
    assert.ok(!output.includes(token), "the token appears in no log");
  });
});
