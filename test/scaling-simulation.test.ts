import { AsyncLocalStorage } from "node:async_hooks";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { settingsJsonSchema } from "../agent/config/settings-schema";
import { launcherRole } from "../agent/launcher/launcher";
import { runRole } from "../agent/runtime/runtime";
import { poolUserDataSpec, type PoolSpec } from "../components/aws/pool-core";
import { busyShareQueries, DEFAULT_TARGET_BUSY_PERCENT } from "../components/aws/scaling";
import { workerPoolArgs } from "../components/aws/worker-pool";
import { FakeAws, FakeGroup } from "../devkit/fake-aws";
import { capturingLogger, eventually, freePort, scratchDir } from "../devkit/helpers";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { createPool } from "../gateway/pools";

const GROUP = "agentpools-workers-1a2b3c4d";
const SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:workers-AbCdEf";

/** The policy's metric math (components/aws/scaling.ts), evaluated for one moment of the pool. */
function load(values: { busy: number; demand: number; inservice: number }): number {
  const expression = (
    busyShareQueries(GROUP, { namespace: "S", metricName: "Q", dimensions: {}, statistic: "Maximum" }).find(
      (q) => q.returnData,
    ) as { expression: string }
  ).expression;
  const js = expression.replace(/FILL\((\w+), 0\)/g, "v.$1").replace(/MAX\(\[([^\]]+)\]\)/g, "Math.max($1)");
  return Function("v", `return ${js}`)(values);
}

/**
 * A worker pool as Auto Scaling runs it, on one machine: a real gateway, launchers started by
 * the runtime as on an instance (each with its own fake IMDS and Auto Scaling API, one group),
 * and a driver doing what the target-tracking policy and the group do: the policy's metric
 * math, desired = ceil(instances × load / target) within min and max, launches, and scale-ins
 * that take only what the group may take (never a protected instance).
 */
describe("elastic worker pool: a burst of queued runs and back to idle, against the fake AWS", () => {
  it("never chooses an instance holding a run for scale-in, runs every run exactly once, and a spot notice hands the rest back", async function () {
    this.timeout(90_000);
    const dir = scratchDir("sim-");
    const ranFile = path.join(dir, "ran");
    writeFileSync(ranFile, "");
    const port = await freePort();
    const { keyBase64, csr } = await makePoolKeyAndRequest("workers");
    const { pool, token } = createPool(
      "workers",
      "worker",
      `http://127.0.0.1:${port}`,
      await signPoolRequest(await loadOrCreateAuthority(dir), csr, "workers"),
    );
    const gateway = new Gateway({ pools: [pool], port, dataDir: dir, log: capturingLogger("gateway").log });
    await gateway.listen();

    // The instance configuration the WorkerPool component renders (protection bound and linger by its rules).
    const spec = {
      component: "WorkerPool",
      role: "launcher",
      core: workerPoolArgs.parse({}),
      settings: { executor: "process" },
      docker: false,
      gvisor: false,
    } as unknown as PoolSpec;
    const place = {
      secretArn: SECRET_ARN,
      autoScalingGroupName: GROUP,
      logGroupName: `/agentpools/${GROUP}`,
      region: "eu-west-1",
      dnsSuffix: "amazonaws.com",
    };
    const config = poolUserDataSpec("workers", spec, place).config;
    const configFile = path.join(dir, "launcher.json");
    // IMDS asked every 20 ms (5 s on an instance): the simulation's time runs faster.
    writeFileSync(
      configFile,
      JSON.stringify({ ...config, drainTimeoutSeconds: 30, aws: { ...config.aws, lifecyclePollSeconds: 0.02 } }),
    );

    const group = new FakeGroup(GROUP);
    const instances = new Map<string, { aws: FakeAws; exited: Promise<number>; gone?: boolean }>();
    const scaledIn: string[] = [];
    const violations: string[] = [];
    let launched = 0;
    // Each instance's output (its log file, as its CloudWatch agent ships it) to its own fake AWS: the runtimes share
    // this process's stdout, and each writes from within its own asynchronous context.
    const instance = new AsyncLocalStorage<FakeAws>();
    const quiet = process.stdout.write;
    process.stdout.write = ((chunk: string) => (instance.getStore()?.tail(chunk), true)) as typeof process.stdout.write;

    const launch = async () => {
      const aws = new FakeAws();
      aws.identity.instanceId = `i-${String(++launched).padStart(17, "0")}`;
      aws.inGroup(group);
      aws.secrets.set(SECRET_ARN, JSON.stringify({ SPACELIFT_TOKEN: token, SPACELIFT_POOL_PRIVATE_KEY: keyBase64 }));
      const base = await aws.start();
      const exited = instance.run(aws, () =>
        runRole(launcherRole(), settingsJsonSchema("launcher"), {
          env: {
            ...aws.env(base),
            AGENTPOOLS_CONFIG: configFile,
            AGENTPOOLS_WORK_DIR: path.join(dir, aws.identity.instanceId),
            PATH: process.env.PATH,
          },
          argv: [],
          exit: () => undefined,
          stopSignal: new Promise(() => undefined),
        }),
      );
      instances.set(aws.identity.instanceId, { aws, exited });
    };
    const agents = () => gateway.workers.summary("workers").agents;
    const instanceOf = (worker?: string) => agents().find((a) => a.id === worker)?.metadata.instance_id;

    /** Every run that has started is on an instance that Auto Scaling may not take. */
    const checkHolders = async (ids: string[]) => {
      for (const id of ids) {
        const run = await gateway.workers.get("workers", id);
        const instance = run.status === "running" ? instanceOf((run as { worker?: string }).worker) : undefined;
        if (
          instance &&
          group.instances.get(instance)?.state === "InService" &&
          !group.instances.get(instance)?.protected
        )
          violations.push(`${id} runs on unprotected ${instance}`);
      }
    };

    const ids: string[] = [];
    let stopDriver = false;
    const driver = (async () => {
      while (!stopDriver) {
        const inService = [...group.instances].filter(([, i]) => i.state === "InService").map(([id]) => id);
        const summary = gateway.workers.summary("workers");
        const connected = summary.agents.filter((a) => !a.draining);
        const busy = connected.length ? connected.filter((a) => a.currentRun).length / connected.length : 0;
        const value = load({ busy, demand: summary.queued, inservice: inService.length });
        const desired = Math.min(
          4,
          Math.max(
            0,
            inService.length === 0
              ? +(summary.queued > 0)
              : Math.ceil((inService.length * value) / DEFAULT_TARGET_BUSY_PERCENT),
          ),
        );
        const starting = [...instances.keys()].filter(
          (id) => !group.instances.has(id) || !agents().some((a) => a.metadata.instance_id === id),
        ).length;
        if (desired > inService.length && starting === 0)
          for (let i = inService.length; i < desired; i++) await launch();
        if (desired < inService.length) {
          for (const id of group.chooseForScaleIn(inService.length - desired)) {
            const holding = agents().find((a) => a.metadata.instance_id === id)?.currentRun;
            const run = holding ? await gateway.workers.get("workers", holding) : undefined;
            if (run?.status === "running") violations.push(`scale-in chose ${id}, which runs ${holding}`);
            scaledIn.push(id);
            instances.get(id)?.aws.terminate();
          }
        }
        await checkHolders(ids);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })();

    try {
      // A burst: 12 runs, every fourth one failing.
      for (let i = 0; i < 12; i++) {
        const commands = [`echo "$AGENTPOOLS_RUN_ID" >> ${ranFile}`, "sleep 0.3", ...(i % 4 === 3 ? ["exit 3"] : [])];
        ids.push((await gateway.workers.submit("workers", { image: "alpine:3", commands })).id);
      }
      await eventually(() => agents().length >= 2, 20_000, "the pool scaled out from zero");

      // Mid-way, a spot notice to an instance holding a run: it finishes that run and takes no other.
      const noticed = await eventually(
        () => agents().find((a) => a.currentRun && !a.draining),
        20_000,
        "an instance holding a run",
      );
      const spotInstance = instances.get(noticed.metadata.instance_id)!;
      spotInstance.aws.spotAction = { action: "terminate", time: new Date(Date.now() + 25_000).toISOString() };
      await eventually(
        () => spotInstance.aws.logEvents.some((l) => l.includes('"msg":"drained"')),
        20_000,
        "the noticed instance drained",
      );
      // EC2 takes the instance: the group sees it go.
      spotInstance.aws.terminate();
      assert.equal(await spotInstance.exited, 0);

      const final = await eventually(
        async () => {
          const runs = await Promise.all(ids.map((id) => gateway.workers.get("workers", id)));
          return runs.every((r) => ["succeeded", "failed"].includes(r.status)) && runs;
        },
        60_000,
        "every run finished",
      );
      const draining = JSON.parse(spotInstance.aws.logEvents.find((l) => l.includes('"msg":"draining"')) as string);
      assert.equal(draining.reason, "spot interruption");
      const onSpot = final.filter((r) => (r as { worker?: string }).worker === noticed.id);
      assert.ok(onSpot.length >= 1);
      // The instance's own log, in order (no clocks compared: the gateway stamps a start after the launcher took it):
      // a launcher runs one run at a time, so each run it took finished before the drain began, or was the one it held.
      const lines = spotInstance.aws.logEvents.map((line) => JSON.parse(line));
      const drainedFrom = lines.findIndex((line) => line.msg === "draining");
      const finishedBefore = lines.slice(0, drainedFrom).filter((line) => line.msg === "run finished");
      const held = lines.find((line) => line.msg === "waiting for the current run before stopping")?.run;
      for (const run of onSpot)
        assert.ok(
          finishedBefore.some((line) => line.run === run.id) || run.id === held,
          `the noticed instance took no run once draining (${run.id})`,
        );
      assert.deepEqual(
        final.map((r) => r.status),
        ids.map((_, i) => (i % 4 === 3 ? "failed" : "succeeded")),
      );
      const ran = readFileSync(ranFile, "utf8").trim().split("\n").sort();
      assert.deepEqual(ran, [...ids].sort(), "each run ran exactly once");

      // Back to idle: every instance is let go.
      await eventually(
        () => [...group.instances.values()].every((i) => i.state !== "InService"),
        30_000,
        "scaled in to zero",
      );
    } finally {
      stopDriver = true;
      await driver;
      for (const { aws } of instances.values()) aws.terminate();
      await Promise.all([...instances.values()].map((i) => i.exited));
      process.stdout.write = quiet;
      for (const { aws } of instances.values()) await aws.stop();
      await gateway.close();
    }
    assert.deepEqual(violations, []);
    assert.ok(scaledIn.length >= 1, "the pool scaled in");
    assert.ok(launched >= 3, `the pool scaled out and replaced the spot instance (${launched} launched)`);
    // Around each run, on its instance: protected before the run was accepted, lifted after it, also after a failing run.
    for (const { aws } of instances.values()) {
      const calls = aws.callsOf("SetInstanceProtection").map((c) => c.ProtectedFromScaleIn);
      assert.equal(calls[0], "false", "the first call lifts what a crashed runtime may have left");
      for (let i = 1; i < calls.length; i++)
        assert.notEqual(calls[i], calls[i - 1], `protection calls alternate on ${aws.identity.instanceId}: ${calls}`);
      assert.deepEqual(aws.rejected, []);
    }
  });
});
