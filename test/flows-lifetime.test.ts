// Nothing of a Flows runtime outlives its place: its uid goes to another runtime only once it is gone, a run never
// fails for want of a uid, and a runtime can do nothing once its answer is taken.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs, {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { once } from "node:events";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { flowsAgentSettings } from "../agent/config/flows-agent";
import { missingFor, unbundledRunner } from "../agent/flows-agent/agent";
import {
  cancelRun,
  dockerLauncher,
  executor as createExecutor,
  processLauncher,
  type Cancellation,
  type Outcome,
  type RuntimeLauncher,
} from "../agent/flows-agent/executor";
import { readPrivileges, uidPool, type Isolation } from "../agent/flows-agent/sandbox";
import { writeFlowsDockerStandIn } from "../devkit/docker-stand-in";
import { capturingLogger, eventually, runtimeUidRange, scratchDir } from "../devkit/helpers";
import { BUNDLE } from "./flows-hostile";

const settings = flowsAgentSettings.parse({
  poolId: "01UIDS",
  poolToken: "t",
  gatewayEndpoint: "http://127.0.0.1:9",
  backendEndpoint: "http://127.0.0.1:9",
  executor: "docker",
  runtimeMemoryMb: 64,
});

/** A range of `size` uids of this file's slot. */
/** `size` uids of this process's `slot`, from `offset` on. */
const range = (slot: number, size: number, offset = 0) => {
  const first = runtimeUidRange(slot).first + offset;
  return `${first}-${first + size - 1}`;
};

const dockerStandIn = (dir: string, uids: string, log = capturingLogger("flows-agent"), removalTimeoutMs = 100) =>
  dockerLauncher(settings, BUNDLE(), uidPool(uids), {
    docker: writeFlowsDockerStandIn(dir),
    log: log.log,
    removalTimeoutMs,
  });

/** Runtimes of the process executor (of "user" isolation unless told), their scratch where they can reach it. */
function userLauncher(
  uids: string,
  isolation: Isolation = "user",
  scratchRoot = mkdtempSync(path.join(os.tmpdir(), "agentpools-uids-")),
  walkBudgetMs?: number,
): { launcher: RuntimeLauncher; dispose(): void; scratchRoot: string } {
  const launcher = processLauncher({
    isolation,
    privileges: readPrivileges(),
    uids: uidPool(uids),
    runner: [unbundledRunner().path],
    readable: unbundledRunner().readable,
    memoryMb: 64,
    diskMb: 16,
    openFiles: 64,
    scratchRoot,
    walkBudgetMs,
  });
  return { launcher, dispose: () => rmSync(scratchRoot, { recursive: true, force: true, maxRetries: 5 }), scratchRoot };
}

describe("Flows runtimes: nothing outlives its place", function () {
  this.timeout(60_000);

  it("user: the start-up sweep takes only the pool's uids, never another uid's processes or files in the scratch root", () => {
    const scratchRoot = mkdtempSync(path.join(os.tmpdir(), "agentpools-foreign-"));
    chmodSync(scratchRoot, 0o1777);
    // A uid outside the pool (a service's, root's in production) with a process running and an entry in the root.
    const foreign = runtimeUidRange(13).first + 40;
    const service = spawn("/bin/sleep", ["60"], { uid: foreign, gid: foreign, stdio: "ignore" });
    const dropped = path.join(scratchRoot, "dropped");
    execFileSync("setpriv", [`--reuid=${foreign}`, `--regid=${foreign}`, "--clear-groups", "touch", dropped]);
    try {
      userLauncher(range(13, 4, 48), "user", scratchRoot);
      // The sweep is done when the launcher is made (spawnSync): a killed service is a zombie now, not running.
      const state = readFileSync(`/proc/${service.pid}/stat`, "utf8").split(") ")[1][0];
      assert.notEqual(state, "Z", "the foreign uid's process was killed");
      assert.ok(existsSync(dropped), "the foreign uid's entry was removed");
    } finally {
      service.kill("SIGKILL");
      rmSync(scratchRoot, { recursive: true, force: true });
    }
  });

  it("Docker: a timed-out run's container keeps its uid until the engine says it is gone; a run meanwhile waits for one", async () => {
    const dir = scratchDir("flows-uids-docker-");
    const log = capturingLogger("flows-agent");
    // Two uids, a pool of one: the spare and the run it becomes, and one more.
    const executor = createExecutor({ poolSize: 1, launcher: dockerStandIn(dir, range(12, 2), log), log: log.log });
    try {
      // The engine answers no removal until told: the hung run's container lives on after its client is killed.
      writeFileSync(path.join(dir, "hold"), "");
      const hung = await executor.run(
        { kind: "block", code: "await new Promise(() => setInterval(() => {}, 1000));" },
        300,
      );
      assert.match(hung.error?.message ?? "", /timed out after 300 ms/);
      const second = await executor.run({ kind: "expression", code: "process.getuid()" }, 5000);
      assert.equal(second.ok, true, JSON.stringify(second));
      // Both uids held by containers the engine has not removed: the third run waits, and the log says why.
      const third = executor.run({ kind: "expression", code: "1 + 1" }, 10_000);
      const silence = () => log.lines.some((l) => /runtime container not yet gone/.test(String(l.msg)));
      await Promise.race([third, eventually(silence, 5000, "the engine's silence logged")]);
      assert.ok(!existsSync(path.join(dir, "uid-reused")), "no container started under a uid a live one runs as");
      assert.ok(silence(), "the engine's silence logged");
      rmSync(path.join(dir, "hold"));
      assert.deepEqual(((await third) as Outcome).value, 2);
      assert.ok(!existsSync(path.join(dir, "uid-reused")), "no container started under a uid a live one runs as");
    } finally {
      rmSync(path.join(dir, "hold"), { force: true });
      executor.close();
    }
  });

  it("Docker: a run waits for a uid no longer than its own timeout, then times out", async () => {
    const dir = scratchDir("flows-uids-wait-");
    const log = capturingLogger("flows-agent");
    const executor = createExecutor({ poolSize: 1, launcher: dockerStandIn(dir, range(13, 2), log), log: log.log });
    try {
      writeFileSync(path.join(dir, "hold"), "");
      for (const code of ["1", "2"]) {
        const outcome = await executor.run({ kind: "expression", code }, 5000);
        assert.equal(outcome.ok, true, JSON.stringify(outcome));
      }
      const starved = await executor.run({ kind: "expression", code: "3" }, 200);
      assert.match(starved.error?.message ?? "", /^the run timed out after 200 ms$/);
      rmSync(path.join(dir, "hold"));
      assert.equal((await executor.run({ kind: "expression", code: "4" }, 5000)).value, 4);
    } finally {
      rmSync(path.join(dir, "hold"), { force: true });
      executor.close();
    }
  });

  for (const [i, kind] of (["user", "docker"] as const).entries()) {
    it(`${kind}: a churn of runs (normal, timed out, crashed, cancelled) on a range of twice the pool: every valid run answers`, async function () {
      if (kind === "user" && process.getuid?.() !== 0) this.skip();
      const poolSize = 2;
      // Uids of its own: the "user" churn's clean-up (kill -1 as each uid) may still be under way after it.
      const uids = range(14, 2 * poolSize, 2 * poolSize * i);
      const made =
        kind === "user"
          ? userLauncher(uids)
          : { launcher: dockerStandIn(scratchDir("flows-churn-"), uids), dispose() {} };
      const log = capturingLogger("flows-agent");
      const executor = createExecutor({ poolSize, launcher: made.launcher, log: log.log });
      try {
        const runs: Promise<[string, Outcome]>[] = [];
        // Enough for uids to be held by runtimes not yet gone while the next ones start (a cold Docker runtime is slower).
        for (let i = 0; i < (kind === "docker" ? 16 : 24); i++) {
          const what = ["normal", "timeout", "crash", "cancel"][i % 4];
          const cancellation: Cancellation = {};
          const code = {
            normal: `${i}`,
            timeout: "(() => { for (;;); })()",
            crash: "process.exit(3)",
            cancel: "new Promise(() => setInterval(() => {}, 1000))",
          }[what]!;
          runs.push(
            executor
              .run({ kind: "expression", code }, what === "timeout" ? 100 : 20_000, cancellation)
              .then((outcome) => [what, outcome]),
          );
          if (what === "cancel") setTimeout(() => cancelRun(cancellation), 50);
        }
        for (const [i, [what, outcome]] of (await Promise.all(runs)).entries()) {
          const message = outcome.error?.message ?? "";
          if (what !== "timeout") assert.doesNotMatch(message, /uid/, `run ${i} (${what})`);
          if (what === "normal") assert.deepEqual([outcome.ok, outcome.value], [true, i], message);
          if (what === "timeout") assert.match(message, /timed out after 100 ms/);
          if (what === "crash") assert.match(message, /exited \(code 3\)/);
          if (what === "cancel") assert.equal(outcome.error?.name, "AbortError", message);
        }
      } finally {
        executor.close();
        made.dispose();
      }
    });
  }

  it("user: the disk watchdog of an agent with the pod's capabilities only (no CAP_DAC_OVERRIDE): a run over its disk ends near it, a run beside it and the next run answer", function () {
    if (missingFor("user", readPrivileges())) this.skip();
    // The pod's agent: root with CAP_SETUID, CAP_SETGID and CAP_KILL only, which reads a runtime's scratch (another
    // uid's) by its group alone. A 16 MB disk; the filler writes 1 MB files, none over the per-file cap.
    const scratchRoot = mkdtempSync(path.join(os.tmpdir(), "agentpools-disk-"));
    chmodSync(scratchRoot, 0o755);
    const script = `
      const { executor, processLauncher } = require(${JSON.stringify(require.resolve("../agent/flows-agent/executor"))});
      const { readPrivileges, uidPool } = require(${JSON.stringify(require.resolve("../agent/flows-agent/sandbox"))});
      const { unbundledRunner } = require(${JSON.stringify(require.resolve("../agent/flows-agent/agent"))});
      const scratchRoot = ${JSON.stringify(scratchRoot)};
      const launcher = processLauncher({ isolation: "user", privileges: readPrivileges(), uids: uidPool(${JSON.stringify(range(15, 6, 6))}),
        runner: [unbundledRunner().path], readable: unbundledRunner().readable, memoryMb: 64, diskMb: 16, openFiles: 64, scratchRoot });
      const log = { info() {}, warn() {}, error() {}, debug() {} };
      const run = executor({ poolSize: 2, launcher, log });
      const fill = "const fs = await import('node:fs'); const block = Buffer.alloc(1 << 20); for (let i = 0; i < 300; i++) fs.writeFileSync('f' + i, block); return 'wrote 300 MB';";
      const beside = "await new Promise((r) => setTimeout(r, 300)); (await import('node:fs')).writeFileSync('mine', Buffer.alloc(1 << 20)); return 'beside';";
      (async () => {
        const [filler, other] = await Promise.all([fill, beside].map((code) => run.run({ kind: "block", code, inputs: {} }, 20000)));
        const next = await run.run({ kind: "block", code: "return 1 + 1", inputs: {} }, 20000);
        run.close();
        process.stdout.write(JSON.stringify({ caps: /CapEff:\\s*(\\w+)/.exec(require("fs").readFileSync("/proc/self/status", "utf8"))[1], filler, other, next }));
        setTimeout(() => process.exit(0), 500);
      })();`;
    try {
      const out = execFileSync(
        "setpriv",
        ["--bounding-set=-all,+setuid,+setgid,+kill", "--inh-caps=-all", "--", process.execPath, "-e", script],
        { encoding: "utf8", timeout: 40_000 },
      );
      const { caps, filler, other, next } = JSON.parse(out);
      assert.equal(caps, "00000000000000e0", "the pod's capabilities only");
      assert.equal(filler.ok, false, JSON.stringify(filler));
      // Ended before its 300 MB, near its 16 (some 20 here alone; later on a loaded machine): what the watchdog measured
      // last is what it held.
      const held = Number(/disk limit: (\d+) MB of 16 MB/.exec(filler.error.message)?.[1]);
      assert.ok(held >= 16 && held < 300, filler.error.message);
      assert.deepEqual([other.ok, other.value, next.value], [true, "beside", 2]);
    } finally {
      rmSync(scratchRoot, { recursive: true, force: true });
    }
  });

  it("user: a run's scratch is walked on a thread of its own, never on the agent's event loop: many entries end the run over its disk, and no lookup inside a scratch is the agent's", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const { launcher, dispose, scratchRoot } = userLauncher(range(13, 2, 8));
    const executor = createExecutor({ poolSize: 1, launcher, log: capturingLogger("flows-agent").log });
    // The agent's own lookups (this thread's fs) of paths inside a scratch: below the scratch root's own entries.
    const inside: string[] = [];
    const real = { lstatSync: fs.lstatSync, opendirSync: fs.opendirSync, statSync: fs.statSync };
    const watch = <F extends (at: fs.PathLike, ...rest: never[]) => unknown>(original: F) =>
      ((at: fs.PathLike, ...rest: never[]) => {
        if (path.relative(scratchRoot, String(at)).split(path.sep).length > 1) inside.push(String(at));
        return original(at, ...rest);
      }) as unknown as F;
    Object.assign(fs, {
      lstatSync: watch(real.lstatSync),
      opendirSync: watch(real.opendirSync),
      statSync: watch(real.statSync),
    });
    try {
      // 16 MB of disk, at least 4 KB an entry: 5000 empty files in a tree are over it.
      const outcome = await executor.run(
        {
          kind: "block",
          code: "const fs = await import('node:fs'); for (let d = 0; d < 50; d++) { fs.mkdirSync('t/' + d, { recursive: true }); for (let f = 0; f < 100; f++) fs.writeFileSync('t/' + d + '/' + f, ''); } await new Promise((r) => setTimeout(r, 15000)); return 'kept';",
          inputs: {},
        },
        20_000,
      );
      assert.match(outcome.error?.message ?? JSON.stringify(outcome), /disk limit: \d+ MB of 16 MB/);
      assert.deepEqual(inside.slice(0, 3), [], "the agent looked inside a scratch itself");
    } finally {
      Object.assign(fs, real);
      executor.close();
      dispose();
    }
  });

  it("user: a scratch made too slow to walk (a tree 1,900 deep: each lookup costs its depth) ends its run; a run beside it is still measured and ended over its disk", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    // A budget of 50 ms of CPU: the deep tree's walk takes several times that, the plain one beside it a fraction.
    const { launcher, dispose } = userLauncher(range(13, 4, 10), "user", undefined, 50);
    const executor = createExecutor({ poolSize: 2, launcher, log: capturingLogger("flows-agent").log });
    try {
      const deep = executor.run(
        {
          kind: "block",
          code: "const fs = await import('node:fs'); const at = 'a/'.repeat(1900); fs.mkdirSync(at, { recursive: true }); for (let f = 0; f < 2000; f++) fs.writeFileSync(at + f, ''); await new Promise((r) => setTimeout(r, 15000)); return 'unmeasured';",
          inputs: {},
        },
        20_000,
      );
      const filler = executor.run(
        {
          kind: "block",
          code: "const fs = await import('node:fs'); for (let f = 0; f < 5000; f++) fs.writeFileSync('f' + f, ''); await new Promise((r) => setTimeout(r, 15000)); return 'kept';",
          inputs: {},
        },
        20_000,
      );
      const [slow, full] = await Promise.all([deep, filler]);
      assert.match(
        slow.error?.message ?? JSON.stringify(slow),
        /too costly to measure \(a walk of it took over 50 ms of CPU, or read over 32 MB of names\)/,
      );
      assert.match(full.error?.message ?? JSON.stringify(full), /disk limit: \d+ MB of 16 MB/);
      const next = await executor.run({ kind: "expression", code: "1 + 1" }, 20_000);
      assert.equal(next.value, 2, JSON.stringify(next));
    } finally {
      executor.close();
      dispose();
    }
  });

  it("user: what a runtime's uid writes beside its scratch (an escape from the permission model) counts against its disk and goes with it", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const uids = range(15, 2, 12);
    const { launcher, dispose, scratchRoot } = userLauncher(uids);
    const log = capturingLogger("flows-agent");
    const executor = createExecutor({ poolSize: 1, launcher, log: log.log });
    try {
      const outcome = executor.run(
        {
          kind: "block",
          code: "(await import('node:fs')).writeFileSync('running', ''); await new Promise((r) => setTimeout(r, 15000)); return 'waited';",
          inputs: {},
        },
        20_000,
      );
      // Its scratch (where it wrote "running": a spare has one too), then 40 MB written as its uid beside it.
      const owner = () =>
        readdirSync(scratchRoot)
          .filter((name) => existsSync(path.join(scratchRoot, name, "running")))
          .map((name) => statSync(path.join(scratchRoot, name)).uid)[0];
      await eventually(() => owner() !== undefined, 10_000, "the runtime's scratch");
      const uid = owner() as number;
      execFileSync("setpriv", [
        `--reuid=${uid}`,
        `--regid=${uid}`,
        "--clear-groups",
        "sh",
        "-c",
        `head -c 40000000 /dev/zero > ${scratchRoot}/stray`,
      ]);
      const answer = await outcome;
      assert.match(answer.error?.message ?? JSON.stringify(answer), /disk limit: \d+ MB of 16 MB/);
      await eventually(
        () => !existsSync(path.join(scratchRoot, "stray")),
        10_000,
        "the stray file removed with its scratch",
      );
    } finally {
      executor.close();
      dispose();
    }
  });

  /** A pool of one uid and one runtime: a next run served proves the uid came back. */
  const oneUid = (offset: number) => {
    const made = userLauncher(range(15, 1, offset));
    const log = capturingLogger("flows-agent");
    const executor = createExecutor({ poolSize: 1, launcher: made.launcher, log: log.log });
    const left = () => readdirSync(made.scratchRoot).filter((name) => name !== ".agent");
    /** A next run served (so the uid came back), then, once closed, nothing left in the scratch root. */
    const nextServedThenEmpty = async () => {
      const next = await executor.run({ kind: "block", code: "return 1 + 1", inputs: {} }, 20_000);
      assert.deepEqual([next.ok, next.value], [true, 2], JSON.stringify(next));
      executor.close();
      await eventually(() => left().length === 0, 10_000, "the scratch root emptied");
    };
    return { ...made, executor, left, nextServedThenEmpty };
  };
  const block = (code: string, timeoutMs = 20_000) =>
    [{ kind: "block" as const, code, inputs: {} }, timeoutMs] as const;

  it("user: a run whose paths pass PATH_MAX is ended by its watchdog (whose measuring cannot throw into the agent); the next run is served on its uid; nothing left", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const { executor, dispose, nextServedThenEmpty } = oneUid(16);
    try {
      // Two 3000-character trees, one moved into the other: each call was short, the path from the scratch is not.
      const deep = await executor.run(
        ...block(`const fs = await import('node:fs'); const seg = '/' + 'd'.repeat(200);
          const a = 'A' + seg.repeat(15), b = 'B' + seg.repeat(15);
          fs.mkdirSync(a, { recursive: true }); fs.mkdirSync(b, { recursive: true }); fs.renameSync('A', b + '/A');
          await new Promise((r) => setTimeout(r, 60000));`),
      );
      assert.match(deep.error?.message ?? JSON.stringify(deep), /could not measure|unreadable/);
      await nextServedThenEmpty();
    } finally {
      executor.close();
      dispose();
    }
  });

  /** A run that marks its scratch and waits: its outcome, once its uid and scratch are seen. */
  const waiting = async (made: ReturnType<typeof oneUid>, timeoutMs = 20_000) => {
    const outcome = made.executor.run(
      ...block(
        "(await import('node:fs')).writeFileSync('running', ''); await new Promise(() => setInterval(() => {}, 1000));",
        timeoutMs,
      ),
    );
    const mine = () =>
      readdirSync(made.scratchRoot).find((name) => existsSync(path.join(made.scratchRoot, name, "running")));
    await eventually(() => mine() !== undefined, 10_000, "the runtime's scratch");
    const scratch = path.join(made.scratchRoot, mine() as string);
    return { outcome, scratch, uid: statSync(scratch).uid };
  };
  /** `command` as `uid` (what an escape from the permission model could do). */
  const asUid = (uid: number, command: string[]) =>
    execFileSync("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", ...command], { encoding: "utf8" });

  it("user: 9000 long-named entries a runtime's uid makes beside its scratch: its run ends over its disk, their removal cannot fail for its argv (the agent lives), the next run is served on its uid, nothing left", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const made = oneUid(17);
    try {
      const { outcome, uid } = await waiting(made);
      // Over 2 MB of names: more than one command line holds.
      asUid(uid, [
        process.execPath,
        "-e",
        `for (let i = 0; i < 9000; i++) require("fs").writeFileSync(${JSON.stringify(made.scratchRoot)} + "/" + "s".repeat(200) + i, "")`,
      ]);
      const answer = await outcome;
      assert.match(answer.error?.message ?? JSON.stringify(answer), /disk limit: \d+ MB of 16 MB/);
      await made.nextServedThenEmpty();
    } finally {
      made.executor.close();
      made.dispose();
    }
  });

  it("user: a runtime's scratch is named nowhere another uid reads (/proc/PID/cmdline); a scratch another uid holds at its name does not keep its uid from coming back", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const made = oneUid(18);
    try {
      const { outcome, scratch, uid } = await waiting(made, 2000);
      const name = path.basename(scratch);
      const lines = readdirSync("/proc")
        .filter(
          (pid) => /^\d+$/.test(pid) && existsSync(`/proc/${pid}/cmdline`) && statSync(`/proc/${pid}`).uid === uid,
        )
        .map((pid) => readFileSync(`/proc/${pid}/cmdline`, "utf8"));
      assert.ok(lines.length > 0, "the runtime's processes");
      assert.deepEqual(
        lines.filter((line) => line.includes(name)),
        [],
        "the scratch's name in a command line",
      );
      // Another uid's directory where its scratch was (as a squatter that made it first), its own moved beside it.
      renameSync(scratch, `${scratch}-moved`);
      mkdirSync(scratch);
      chownSync(scratch, uid + 1000, uid + 1000);
      assert.match((await outcome).error?.message ?? "", /timed out/);
      const next = await made.executor.run(...block("return 1 + 1"));
      assert.deepEqual([next.ok, next.value], [true, 2], JSON.stringify(next));
      assert.ok(!existsSync(`${scratch}-moved`), "its own entries removed");
    } finally {
      made.executor.close();
      made.dispose();
    }
  });

  it("user: SysV shared memory and /dev/shm files a runtime's uid made go with its run", async function () {
    if (missingFor("user", readPrivileges())) this.skip();
    const made = oneUid(19);
    const shm = `/dev/shm/agentpools-lifetime-${process.pid}`;
    try {
      const { outcome, uid } = await waiting(made, 2000);
      const id = /(\d+)/.exec(asUid(uid, ["ipcmk", "-M", "65536", "-p", "0666"]))?.[1] as string;
      asUid(uid, ["sh", "-c", `head -c 65536 /dev/zero > ${shm}`]);
      assert.ok(
        execFileSync("ipcs", ["-m"], { encoding: "utf8" })
          .split("\n")
          .some((line) => line.split(/\s+/)[1] === id),
      );
      assert.match((await outcome).error?.message ?? "", /timed out/);
      // Served on the same uid: its removal is through.
      const next = await made.executor.run(...block("return 1 + 1"));
      assert.deepEqual([next.ok, next.value], [true, 2], JSON.stringify(next));
      const segments = execFileSync("ipcs", ["-m"], { encoding: "utf8" }).split("\n");
      assert.ok(!segments.some((line) => line.split(/\s+/)[1] === id), `segment ${id} left`);
      assert.ok(!existsSync(shm), `${shm} left`);
    } finally {
      made.executor.close();
      made.dispose();
      rmSync(shm, { force: true });
    }
  });

  for (const [i, isolation] of (["none", "user", "namespaces"] as const).entries()) {
    it(`${isolation}: a run that answers by itself and acts on is stopped before its answer is taken`, async function () {
      const missing = missingFor(isolation, readPrivileges());
      if (missing) this.skip();
      // Uids of its own: the last test's "user" clean-up (kill -1 as each uid) may still be under way.
      const { launcher, dispose } = userLauncher(range(15, 2, 2 * i), isolation);
      const log = capturingLogger("flows-agent");
      const executor = createExecutor({ poolSize: 1, launcher, log: log.log });
      // A recorder the run connects to before answering; told "go" once the run's answer is taken, it hears
      // "acted" if the run can still act.
      const recorder = net.createServer();
      await new Promise<void>((resolve) => recorder.listen(0, "127.0.0.1", resolve));
      const heard: Buffer[] = [];
      const connected = once(recorder, "connection") as Promise<[net.Socket]>;
      try {
        const outcome = executor.run(
          {
            kind: "block",
            code: `const fs = await import('node:fs'); const net = await import('node:net');
            const socket = net.connect(inputs.port, '127.0.0.1'); await new Promise((r) => socket.once('connect', r));
            socket.on('data', () => socket.write('acted'));
            const body = Buffer.from(JSON.stringify({ ok: true, value: 'answered', console: [] }));
            const head = Buffer.alloc(4); head.writeUInt32BE(body.length);
            fs.writeSync(3, Buffer.concat([head, body]));
            await new Promise(() => setInterval(() => {}, 1000));`,
            inputs: { port: (recorder.address() as net.AddressInfo).port },
          },
          20_000,
        );
        // A run that failed (before it connected) fails the test with its own answer, not a wait that never ends. One
        // that answered may do so before this process accepted its connection: the connection comes all the same.
        const [socket] = await Promise.race([
          connected,
          outcome.then((answer) =>
            answer.ok ? new Promise<never>(() => undefined) : Promise.reject(new Error(JSON.stringify(answer))),
          ),
        ]);
        socket.on("data", (chunk: Buffer) => heard.push(chunk)).on("error", () => undefined);
        const closed = new Promise((resolve) => (socket.closed ? resolve(null) : socket.once("close", resolve)));
        const answer = await outcome;
        socket.write("go");
        assert.deepEqual([answer.ok, answer.value], [true, "answered"], JSON.stringify(answer));
        // Its connection ends with it (reset: the kernel closes what a killed process held).
        await closed;
        assert.equal(Buffer.concat(heard).toString(), "", "the run acted after its answer was taken");
      } finally {
        recorder.close();
        executor.close();
        dispose();
      }
    });
  }
});
