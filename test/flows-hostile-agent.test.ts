// Flows runtimes without the agent's Node in between: the kernel's walls alone (no permission model), and the
// shipped bundle as its own process (as root, as on EC2, without privileges) whose runs go after the agent itself.
// The targets and the gateway are flows-hostile.ts's.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chownSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { unbundledRunner } from "../agent/flows-agent/agent";
import { processLauncher, runtime } from "../agent/flows-agent/executor";
import { bwrapArgs, libraryDirectories, readPrivileges, seccompFilter, uidPool } from "../agent/flows-agent/sandbox";
import { RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { eventually, scratchDir } from "../devkit/helpers";
import { BUNDLE, hostileRuns, POOL } from "./flows-hostile";

hostileRuns(3, (h) => {
  const { dir, targets, run, pool } = h;
  const FIRST_UID = h.uids.first;
  const LAST_UID = h.uids.last;
  const UIDS = h.uids.range;

  describe("the kernel alone: the same runtimes without Node's permission model", () => {
    const cases: [string, string, (value: unknown) => boolean][] = [
      [
        "no process can be started",
        "return (await import('node:child_process')).spawnSync('/bin/sh', ['-c', 'id']).error?.code ?? 'spawned';",
        (v) => v === "EPERM",
      ],
      [
        "no Unix socket can be opened",
        "return await new Promise((resolve) => (process.getBuiltinModule('node:net')).connect('\\0' + inputs.abstractName).on('error', (e) => resolve(e.code)).on('connect', () => resolve('connected')));",
        (v) => v === "EACCES",
      ],
      [
        "only its own files are there",
        "return (await import('node:fs')).readdirSync('/').sort();",
        (v) => Array.isArray(v) && !v.includes("root") && !v.includes("home") && !v.includes("var"),
      ],
      [
        "only its own process is there",
        "return (await import('node:fs')).readdirSync('/proc').filter((e) => /^\\d+$/.test(e));",
        (v) => JSON.stringify(v) === '["1"]',
      ],
      [
        "the agent's environment is not there",
        "try { return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/environ`, 'utf8'); } catch (e) { return e.code; }",
        (v) => v === "ENOENT",
      ],
      [
        "node:sqlite is off",
        "try { await import('node:sqlite'); return 'loaded'; } catch (e) { return e.code; }",
        (v) => v === "ERR_UNKNOWN_BUILTIN_MODULE",
      ],
      [
        "nothing is written outside its scratch: the root, /dev (and /dev/shm) are read-only, /dev/null still takes writes",
        "const fs = await import('node:fs'); const tried = ['/x', '/etc/x', '/dev/x', '/dev/shm/x'].map((file) => { try { fs.writeFileSync(file, 'x'); return 'written'; } catch (e) { return e.code; } }); fs.writeFileSync('/dev/null', 'x'); return tried;",
        (v) => Array.isArray(v) && v.every((code) => code === "EROFS" || code === "ENOENT"),
      ],
      [
        "its disk is capped",
        "try { const fs = await import('node:fs'); for (let i = 0; i < 64; i++) fs.appendFileSync('/tmp/fill', Buffer.alloc(1 << 20)); return 'filled'; } catch (e) { return e.code; }",
        (v) => v === "ENOSPC",
      ],
    ];
    /** A runtime as the process launcher starts it in namespaces, as root, but without Node's permission model. */
    const start = () => {
      const { path: runner, readable } = unbundledRunner();
      const node = [process.execPath, "--disable-sigusr1", "--no-experimental-sqlite", runner];
      const sandbox = bwrapArgs({ node: process.execPath, libraries: libraryDirectories(), readable, diskMb: 16 });
      const child = spawn(readPrivileges().bwrap as string, [...sandbox, ...node], {
        uid: 1900001100,
        gid: 1900001100,
        env: {},
        stdio: ["pipe", "pipe", "pipe", "pipe", "pipe", "pipe"],
      });
      (child.stdio[5 as number] as unknown as Writable).end(seccompFilter());
      (child.stdio[4] as Readable).resume();
      const kill = () => void child.kill("SIGKILL");
      return runtime(
        {
          child,
          jobs: child.stdin as Writable,
          answers: child.stdio[3] as Readable,
          memoryPid: () => undefined,
          kill,
          cleanup: () => undefined,
        },
        128,
      );
    };
    for (const [what, code, holds] of cases) {
      it(what, async function () {
        if (!readPrivileges().bwrap || process.getuid?.() !== 0) this.skip();
        const runtime = start();
        try {
          await runtime.ready;
          const answer = await runtime.run({ kind: "block", code, inputs: targets }, 5000);
          assert.ok(answer.ok && holds(answer.value), JSON.stringify(answer).slice(0, 300));
        } finally {
          runtime.kill();
        }
      });
    }
  });

  describe("the agent process itself: survives, keeps its parallelism, its token unread", () => {
    const AGENT_UID = 1990;
    const probes: [string, string][] = [
      ["environ", "return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/environ`, 'utf8');"],
      ["cmdline", "return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/cmdline`, 'utf8');"],
      ["signal", "process.kill(inputs.agentPid, 'SIGKILL'); return 'killed';"],
      ["debugger", "process._debugProcess(inputs.agentPid); return 'sent';"],
      ["inspector", "return await (await fetch('http://127.0.0.1:9229/json/list')).text();"],
      [
        "sqlite",
        "const { DatabaseSync } = process.getBuiltinModule('node:sqlite'); return new DatabaseSync(`/proc/${inputs.agentPid}/cwd/stolen.db`) && 'opened';",
      ],
    ];

    /** Starts the shipped bundle as a separate process, as an instance would (maybe as another user, in a cgroup). */
    function startAgent(mounts: string, wrap: string[] = []): { child: ChildProcess; output: () => string } {
      const env = {
        PATH: process.env.PATH,
        FLOWS_AGENT_POOL_ID: POOL,
        FLOWS_AGENT_POOL_TOKEN: h.token,
        FLOWS_GATEWAY_ENDPOINT: h.url,
        FLOWS_ENDPOINT: h.url,
        FLOWS_EXECUTOR: "process",
        FLOWS_DOCKER_MOUNTS_TEMPDIR: mounts,
        FLOWS_RUNTIME_POOL_SIZE: "3",
        FLOWS_RUNTIME_UIDS: UIDS,
      };
      const command = [...wrap, process.execPath, ...RUNTIME_NODE_FLAGS, BUNDLE()];
      const child = spawn(command[0], command.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout?.on("data", (chunk) => (output += chunk));
      child.stderr?.on("data", (chunk) => (output += chunk));
      return { child, output: () => output };
    }

    /** Processes of the runtime uid range still alive. */
    const runtimesAlive = () =>
      readdirSync("/proc").filter((pid) => {
        try {
          const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
          return (
            uid >= FIRST_UID && uid <= LAST_UID && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"))
          );
        } catch {
          return false;
        }
      });

    async function attack(agent: { child: ChildProcess; output: () => string }): Promise<void> {
      try {
        await attacks(agent);
      } catch (error) {
        throw new Error(`${(error as Error).message}\nagent output: ${agent.output().slice(-3000)}`);
      }
    }

    async function attacks(agent: { child: ChildProcess; output: () => string }): Promise<void> {
      await eventually(
        () => pool().connections === 1 && pool().agents[0].parallelism === 3,
        20_000,
        `the agent to connect: ${agent.output().slice(-800)}`,
      );
      const inputs = { ...targets, agentPid: agent.child.pid };
      const answers: string[] = [];
      for (const [what, code] of probes) {
        const { result } = await run({ kind: "block", code, inputs, timeoutMs: 2000 });
        answers.push(JSON.stringify(result));
        if (what !== "cmdline") assert.equal(result.ok, false, `${what}: ${JSON.stringify(result).slice(0, 300)}`);
        const next = await run({ code: "1 + 1" });
        assert.equal(next.result.value, 2, `the agent answers after ${what}`);
      }
      assert.ok(
        answers.every((answer) => !answer.includes(h.token)),
        "the token reached a run",
      );
      // The debugger signal opened nothing: no inspector listens.
      await new Promise<void>((resolve, reject) =>
        net
          .connect(9229, "127.0.0.1")
          .on("connect", () => reject(new Error("an inspector listens on 9229")))
          .on("error", () => resolve()),
      );
      assert.equal(agent.child.exitCode, null, "the agent still runs");
      assert.equal(pool().agents[0].parallelism, 3, "its parallelism is its own");
      // A runtime spinning when the agent dies dies with it: nothing watches it any more, so nothing may outlive it.
      const spinning = run({ kind: "block", code: "for (;;) {}", timeoutMs: 60_000 });
      await eventually(() => runtimesAlive().length > 0 && pool().activeRequests === 1, 5000, "a spinning run");
      agent.child.kill("SIGKILL");
      await spinning;
      // Where the agent died while bubblewrap was setting up a spare, that set-up may be left (its parent-death signal
      // came too late), holding no run code and never given a job: the next launcher's start ends it.
      // (A process gone between the listing and the read of its name is not running.)
      const running = () =>
        runtimesAlive().filter((pid) => {
          try {
            return readFileSync(`/proc/${pid}/comm`, "utf8").trim() !== "bwrap";
          } catch {
            return false;
          }
        });
      await eventually(() => running().length === 0, 5000, `runtimes to die with the agent: ${running().join(" ")}`);
      processLauncher({
        isolation: "user",
        privileges: readPrivileges(),
        uids: uidPool(UIDS),
        runner: [BUNDLE()],
        readable: [BUNDLE()],
        memoryMb: 64,
        diskMb: 16,
        openFiles: 64,
        scratchRoot: scratchDir("next-agent-"),
      });
      await eventually(() => runtimesAlive().length === 0, 5000, `nothing left: ${runtimesAlive().join(" ")}`);
      await eventually(
        () => pool().connections === 0,
        5000,
        `the gateway to see the agent gone: ${JSON.stringify(pool())} exit ${agent.child.exitCode} ${agent.child.signalCode}`,
      );
    }

    it("as root: namespaces and a uid per runtime", async function () {
      if (process.getuid?.() !== 0) this.skip();
      const agent = startAgent(path.join(dir, "agent-root"));
      try {
        await attack(agent);
        assert.match(agent.output(), /"isolation":"namespaces"/);
      } finally {
        agent.child.kill("SIGKILL");
      }
    });

    it("as on EC2: a non-root agent with only CAP_SETUID, CAP_SETGID and CAP_KILL", async function () {
      if (process.getuid?.() !== 0) this.skip();
      // What systemd's AmbientCapabilities= gives a service of its own user.
      const mounts = path.join(dir, "agent-ec2");
      mkdirSync(mounts);
      chownSync(mounts, AGENT_UID, AGENT_UID);
      const caps = "+setuid,+setgid,+kill";
      const agent = startAgent(mounts, [
        "setpriv",
        `--reuid=${AGENT_UID}`,
        `--regid=${AGENT_UID}`,
        "--clear-groups",
        `--inh-caps=${caps}`,
        `--ambient-caps=${caps}`,
        "--",
      ]);
      try {
        await attack(agent);
        assert.match(agent.output(), /"isolation":"namespaces"/);
      } finally {
        agent.child.kill("SIGKILL");
      }
    });

    it("as a user without privileges: runs still work, and the log says loudly that they are not isolated", async function () {
      if (process.getuid?.() !== 0) this.skip();
      const mounts = path.join(dir, "agent-plain");
      mkdirSync(mounts);
      chownSync(mounts, AGENT_UID, AGENT_UID);
      const agent = startAgent(mounts, [
        "setpriv",
        `--reuid=${AGENT_UID}`,
        `--regid=${AGENT_UID}`,
        "--clear-groups",
        "--",
      ]);
      try {
        await eventually(() => pool().connections === 1, 20_000, `the agent to connect: ${agent.output().slice(-800)}`);
        assert.match(agent.output(), /"level":"error".*FLOWS RUNTIMES ARE NOT ISOLATED/);
        await eventually(
          () => /NOT ISOLATED/.test(pool().agents[0]?.executor ?? ""),
          5000,
          "the status page to say runtimes are not isolated",
        );
        assert.equal((await run({ code: "1 + 1" })).result.value, 2);
        const { result } = await run({
          kind: "block",
          code: "return (await import('node:fs')).readFileSync(`/proc/${inputs.agentPid}/environ`, 'utf8');",
          inputs: { agentPid: agent.child.pid },
        });
        assert.equal(result.ok, false, "the permission model still refuses it (the only layer left)");
      } finally {
        agent.child.kill("SIGKILL");
        await eventually(() => pool().connections === 0);
      }
    });
  });
});
