import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { launcherSettings } from "../agent/config/launcher";
import { launcherRole } from "../agent/launcher/launcher";
import type { RunningAgent } from "../agent/runtime/runtime";
import { loadOrCreateAuthority, makePoolKeyAndRequest, signPoolRequest } from "../gateway/certificates";
import { Gateway, type GatewayOptions } from "../gateway/gateway";
import { createPool, type PoolDefinition } from "../gateway/pools";
import { SqliteStore } from "../gateway/sqlite-store";
import { StoreError, type GatewayStore } from "../gateway/store";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";
import { flowsAgentStandIn } from "./flows-stand-in";

const service = serviceKey();

const POOL = "workers";

/** A tmpfs of `sizeKb` mounted in a scratch directory: a real file system that can be filled or made read-only. Root only. */
function tinyFileSystem(sizeKb: number): { dir: string; readOnly(on: boolean): void; unmount(): void } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const dir = scratchDir("mnt-");
  if (spawnSync("mount", ["-t", "tmpfs", "-o", `size=${sizeKb}k,mode=0700`, "tmpfs", dir]).status !== 0)
    return undefined;
  const mount = (...args: string[]) => assert.equal(spawnSync("mount", args).status, 0, `mount ${args.join(" ")}`);
  return {
    dir,
    readOnly: (on) => mount("-o", `remount,${on ? "ro" : "rw"}`, dir),
    unmount: () => void spawnSync("umount", ["-l", dir]),
  };
}

/** Fills the file system holding `dir` to its last byte: the filler file, to delete to free the space. */
function fill(dir: string): string {
  const filler = path.join(dir, "filler");
  const fd = openSync(filler, "w");
  const block = Buffer.alloc(4096, 1);
  try {
    for (;;) writeSync(fd, block);
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, "ENOSPC");
  }
  // The last partial block, byte by byte.
  try {
    for (;;) writeSync(fd, block, 0, 1);
  } catch {
    // full
  }
  closeSync(fd);
  return filler;
}

describe("the gateway's storage fails: requests are answered, the gateway goes on", function () {
  this.timeout(30_000);
  let pools: PoolDefinition[];
  let token: string;
  let flowsToken: string;
  let keyBase64: string;

  before(async () => {
    const made = await makePoolKeyAndRequest(POOL);
    keyBase64 = made.keyBase64;
    const certificate = await signPoolRequest(await loadOrCreateAuthority(scratchDir("ca-")), made.csr, POOL);
    const workers = createPool(POOL, "worker", "http://127.0.0.1:1", certificate);
    const flows = createPool("01FLOWS", "flows", "http://127.0.0.1:1");
    pools = [workers.pool, flows.pool];
    token = workers.token;
    flowsToken = flows.token;
  });

  /** A gateway with a worker pool served by a real launcher, and a Flows pool with a stand-in agent. */
  async function setUp(options: Partial<GatewayOptions>) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const log = capturingLogger("gateway");
    const gateway = new Gateway({ keys: [service.definition], pools, port, log: log.log, leaseMs: 900, ...options });
    await gateway.listen();
    const { decodeToken, encodeToken } = await import("../protocol/token");
    const workDir = scratchDir("storage-runs-");
    const launcher: RunningAgent = await launcherRole().start(
      launcherSettings.parse({
        token: encodeToken({ ...decodeToken(token), gateway: url }),
        poolPrivateKey: keyBase64,
        executor: "process",
        workDirectory: workDir,
      }),
      { log: capturingLogger("launcher").log, env: { PATH: process.env.PATH } },
    );
    await launcher.ready;
    await eventually(() => gateway.workers.summary(POOL).connections === 1);
    const flows = await flowsAgentStandIn(url, "01FLOWS", flowsToken);
    await eventually(() => gateway.summary().find((p) => p.name === "01FLOWS")?.connections === 1);
    const api = `${url}/_agentpools/api/workers/${POOL}/runs`;
    return {
      gateway,
      log,
      api,
      submit: (commands: string[]) =>
        fetch(api, { method: "POST", headers: service.headers, body: JSON.stringify({ image: "alpine:3", commands }) }),
      listed: async () =>
        ((await (await fetch(api, { headers: service.headers })).json()) as { runs: { id: string }[] }).runs.map(
          (r) => r.id,
        ),
      flowsRun: async () =>
        (
          await fetch(`${url}/_agentpools/api/flows/01FLOWS/run`, {
            method: "POST",
            headers: service.headers,
            body: JSON.stringify({ code: "1" }),
          })
        ).status,
      status: async (id: string) =>
        (await (await fetch(`${api}/${id}`, { headers: service.headers })).json()) as {
          status: string;
          logLines: number;
        },
      logs: async (id: string) =>
        (await (await fetch(`${api}/${id}/logs`, { headers: service.headers })).text()).split("\n").slice(0, -1),
      async close() {
        flows.close();
        await launcher.drain(Date.now() + 1000);
        await gateway.close();
      },
    };
  }

  it("a full data directory: submits get 507 and are not listed; the run in flight and other pools go on; freed, all is stored", async function () {
    const fs = tinyFileSystem(2048);
    if (!fs) return this.skip(); // needs root to mount a file system
    const go = path.join(scratchDir("storage-"), "go");
    const t = await setUp({ dataDir: fs.dir });
    try {
      const inFlight = (await (
        await t.submit(["echo before", `while [ ! -f ${go} ]; do sleep 0.02; done`, "echo after"])
      ).json()) as { id: string };
      await eventually(async () => (await t.status(inFlight.id)).logLines === 1, 5000, "the run started");
      const filler = fill(fs.dir);
      // Submit until SQLite needs a page the file system no longer has.
      let refused: Response | undefined;
      for (let i = 0; i < 200 && !refused; i++) {
        const response = await t.submit([`echo ${"x".repeat(2000)} ${i}`]);
        if (response.status !== 201) refused = response;
      }
      assert.ok(refused, "a full disk refuses submissions");
      assert.equal(refused.status, 507);
      assert.match(((await refused.json()) as { error: string }).error, /storage is full/);
      assert.ok(
        t.log.lines.some(
          (l) =>
            l.level === "error" &&
            l.msg === "the store refused a write" &&
            l.what === "store a submitted run" &&
            l.status === 507,
        ),
      );
      assert.equal(await t.flowsRun(), 200, "the Flows pool is not affected");
      for (const id of await t.listed()) {
        assert.ok(
          ["queued", "running", "succeeded"].includes((await t.status(id)).status),
          "every listed run is a stored one",
        );
      }
      // The run in flight ends while the disk is full; once there is room its whole log and outcome are stored.
      writeFileSync(go, "");
      rmSync(filler);
      await eventually(async () => (await t.status(inFlight.id)).status === "succeeded", 10_000, "the outcome stored");
      assert.deepEqual(await t.logs(inFlight.id), ["before", "after"]);
      assert.equal((await t.submit(["echo room again"])).status, 201);
    } finally {
      await t.close();
      fs.unmount();
    }
  });

  it("a read-only file system under the sealed state: the upload gets 503, the gateway goes on; writable again, the run ends with its state", async function () {
    const dataDir = scratchDir("storage-data-");
    const t = await setUp({ dataDir });
    const stateDir = path.join(dataDir, "state");
    // A read-only file system mounted over the state directory while the gateway runs.
    if (
      process.getuid?.() !== 0 ||
      spawnSync("mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", stateDir]).status !== 0
    ) {
      await t.close();
      return this.skip(); // needs root to mount a file system
    }
    let mounted = true;
    try {
      const response = await t.submit([
        'mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")"',
        'echo serial=1 > "$AGENTPOOLS_STATE_FILE"',
        "echo done",
      ]);
      const { id } = (await response.json()) as { id: string };
      await eventually(
        () =>
          t.log.lines.some(
            (l) => l.msg === "the store refused a write" && l.what === "store a run's state" && l.status === 503,
          ),
        5000,
        "the state refused",
      );
      assert.equal((await t.status(id)).status, "running", "its outcome waits for its state");
      assert.equal((await t.submit(["echo other"])).status, 201, "the database is not affected");
      assert.equal(await t.flowsRun(), 200);
      spawnSync("umount", [stateDir]);
      mounted = false;
      await eventually(async () => (await t.status(id)).status === "succeeded", 5000, "delivered once writable");
      assert.equal(
        ((await (await fetch(`${t.api}/${id}`, { headers: service.headers })).json()) as { state: boolean }).state,
        true,
      );
    } finally {
      if (mounted) spawnSync("umount", ["-l", stateDir]);
      await t.close();
    }
  });

  it("a gateway cannot start on storage it cannot open: a clear error naming the directory", async function () {
    const fs = tinyFileSystem(1024);
    if (!fs) return this.skip(); // needs root to mount a file system
    try {
      fs.readOnly(true);
      assert.throws(
        () =>
          new Gateway({
            keys: [service.definition],
            pools,
            port: 0,
            dataDir: fs.dir,
            log: capturingLogger("gateway").log,
          }),
        new RegExp(`cannot open the gateway's store in ${fs.dir}: the gateway's storage is not writable`),
      );
    } finally {
      fs.unmount();
    }
  });

  it("a store that refuses writes (injected): each affected request or message fails and is retried; nothing else stops", async () => {
    const failing = new Set<keyof GatewayStore>();
    const real = new SqliteStore();
    const store = new Proxy(real, {
      get(target, name: keyof GatewayStore) {
        const value = target[name];
        if (typeof value !== "function") return value;
        return (...args: unknown[]) =>
          failing.has(name)
            ? Promise.reject(new StoreError("unavailable", "injected"))
            : (value as (...a: unknown[]) => unknown).apply(target, args);
      },
    }) as GatewayStore;
    const t = await setUp({ store });
    const go = path.join(scratchDir("storage-"), "go");
    try {
      // A submission the store refuses: 503, nothing listed, nothing queued.
      failing.add("createRun");
      const refused = await t.submit(["echo never"]);
      assert.equal(refused.status, 503);
      assert.deepEqual(await t.listed(), []);
      assert.equal(t.gateway.workers.summary(POOL).queued, 0);
      failing.delete("createRun");

      // A lease the store refuses: the run stays queued (stored, listed) and is handed out once it recovers.
      failing.add("grantLease");
      const { id } = (await (
        await t.submit(["echo before", `while [ ! -f ${go} ]; do sleep 0.02; done`, "echo after"])
      ).json()) as { id: string };
      await eventually(
        () => t.log.lines.some((l) => l.what === "lease a run" && l.run === id),
        5000,
        "the lease refused",
      );
      assert.equal((await t.status(id)).status, "queued");
      assert.deepEqual(await t.listed(), [id]);
      failing.delete("grantLease");
      await eventually(async () => (await t.status(id)).logLines === 1, 5000, "handed out after recovery");

      // Log lines, renewals and the outcome refused while it runs: it goes on, and all of it is stored later.
      for (const name of ["appendLog", "renewLease", "finishRun"] as const) failing.add(name);
      writeFileSync(go, "");
      await eventually(
        () => t.log.lines.some((l) => l.what === "store log lines" && l.run === id),
        5000,
        "a log line refused",
      );
      await eventually(
        () => t.log.lines.some((l) => l.what === "renew a lease" && l.run === id),
        5000,
        "a renewal refused",
      );
      assert.equal((await t.status(id)).status, "running", "not lost: the lease lives on in memory");
      assert.equal(await t.flowsRun(), 200);
      // The log stored, the outcome still refused: the launcher keeps sending it.
      failing.delete("appendLog");
      await eventually(
        () => t.log.lines.some((l) => l.what === "store the outcome (succeeded)" && l.run === id),
        5000,
        "the outcome refused",
      );
      assert.equal((await t.status(id)).status, "running");
      failing.clear();
      await eventually(async () => (await t.status(id)).status === "succeeded", 5000, "the outcome stored");
      assert.deepEqual(await t.logs(id), ["before", "after"]);
    } finally {
      await t.close();
    }
  });
});
