import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync } from "node:fs";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import type { FlowsAgentSettings } from "../config/flows-agent";
import type { Logger } from "../../lib/log";
import { removeTree } from "../../lib/remove-tree";
import { FLOWS_MAX_RESULT_BYTES, type Answer, type Job } from "../../protocol/flows";
import { checkAnswer, encodeFrame, FrameReader } from "./channel";
import { bwrapArgs, Cgroups, elfInterpreter, libraryDirectories, seccompFilter, type Isolation, type Privileges, type UidPool } from "./sandbox";

/**
 * Flows runtimes. Every run gets a fresh runtime (a process or a container, under its own
 * uid) and a fresh scratch space, both thrown away after it. Spares are started ahead so a
 * run rarely waits for a cold start. Whatever a runtime does (exit, hang, flood its channel,
 * answer nonsense) ends that runtime and fails its run: never the agent.
 */

export interface Outcome extends Answer {
  durationMs: number;
}

/** How long a runtime may take to start. */
const START_LIMIT_MS = 30_000;
/** Resident memory a runtime may use beyond its heap cap (Node itself, buffers). */
const MEMORY_MARGIN_MB = 96;
const DIAGNOSTICS_LIMIT = 16 * 1024;

/** How a runtime was started: its pipes, how to end it, and what to do once it is gone. */
export interface Spawned {
  child: ChildProcess;
  jobs: Writable;
  answers: Readable;
  /** The process whose resident memory counts, when no cgroup limits it. */
  memoryPid(): number | undefined;
  kill(): void;
  /** After exit: release what the runtime held (its uid, scratch, cgroup); must not throw. */
  cleanup(): void;
  /** Why the kernel ended it, if it can tell (a cgroup's OOM kill). */
  killedFor?(): string | undefined;
}

/** One started runtime, waiting for its single job. Its watchdogs belong to it, not to the caller. */
export class Runtime {
  readonly ready: Promise<void>;
  readonly exited: Promise<string>;
  private ending?: string;
  private onAnswer?: { resolve(answer: Answer): void; reject(error: Error): void };
  private readonly timers: NodeJS.Timeout[] = [];
  private frames = 0;

  constructor(
    private readonly spawned: Spawned,
    private readonly memoryMb: number,
  ) {
    const { child, answers } = spawned;
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      if (stderr.length < DIAGNOSTICS_LIMIT) stderr += chunk.toString("utf8");
    });
    // Output a job printed outside console.* is not wanted; still drained, never held.
    child.stdout?.resume();
    let resolveReady!: () => void;
    let rejectReady!: (error: Error) => void;
    this.ready = new Promise((resolve, reject) => ((resolveReady = resolve), (rejectReady = reject)));
    this.ready.catch(() => undefined);
    this.exited = new Promise((resolve) => {
      let gone = false;
      const done = (why: string) => {
        if (gone) return;
        gone = true;
        for (const timer of this.timers) clearTimeout(timer);
        const reason = this.ending ?? spawned.killedFor?.() ?? why;
        rejectReady(new Error(reason));
        this.onAnswer?.reject(new Error(reason));
        try {
          spawned.cleanup();
        } finally {
          resolve(reason);
        }
      };
      // A process that never started has no pid (an error after the start is a failed signal: ignored).
      child.on("error", (error) => child.pid === undefined && done(`the runtime could not start: ${error.message}`));
      child.once("exit", (code, signal) => {
        if (/heap out of memory|Allocation failed/i.test(stderr)) return done("the run exceeded its memory limit");
        const tail = stderr.trim().split("\n").slice(-3).join(" ").slice(0, 500);
        done(`the runtime exited (${signal ?? `code ${code}`})${tail ? `: ${tail}` : ""}`);
      });
    });
    const reader = new FrameReader(FLOWS_MAX_RESULT_BYTES, (text) => {
      // The first frame says it is ready, the second is its answer; anything else ends it.
      if (++this.frames === 1) {
        if (text !== '{"ready":true}') return this.end("the runtime broke its channel: it did not start as a runtime does");
        return resolveReady();
      }
      if (this.frames > 2 || !this.onAnswer) return this.end("the runtime broke its channel: it sent more than one answer");
      let answer: Answer;
      try {
        answer = checkAnswer(text);
      } catch (error) {
        return this.end(`the runtime's answer was refused: ${(error as Error).message}`);
      }
      this.onAnswer.resolve(answer);
    });
    answers.on("data", (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (error) {
        this.end(`the runtime broke its channel: ${(error as Error).message}`);
      }
    });
    answers.on("error", () => this.end("the runtime's channel failed"));
    spawned.jobs.on("error", () => this.end("the runtime's channel failed"));
    this.timers.push(setTimeout(() => this.end(`the runtime did not start within ${START_LIMIT_MS} ms`), START_LIMIT_MS));
    void this.ready.then(() => clearTimeout(this.timers[0]), () => undefined);
  }

  /**
   * Hands the job over and resolves with the checked answer. The deadline and the memory
   * watchdog are armed before the job leaves, and cleared only when the runtime is gone.
   */
  run(job: Job, timeoutMs: number): Promise<Answer> {
    return new Promise((resolve, reject) => {
      if (this.ending) return reject(new Error(this.ending));
      this.onAnswer = { resolve, reject };
      this.timers.push(setTimeout(() => this.end(`the run timed out after ${timeoutMs} ms`), timeoutMs));
      this.timers.push(
        setInterval(() => {
          const mb = residentMb(this.spawned.memoryPid());
          if (mb !== undefined && mb > this.memoryMb + MEMORY_MARGIN_MB) this.end("the run exceeded its memory limit");
        }, 20),
      );
      this.spawned.jobs.write(encodeFrame(job));
    });
  }

  /** Ends the runtime, saying why; idempotent, never throws. */
  end(why: string): void {
    this.ending ??= why;
    this.kill();
    this.onAnswer?.reject(new Error(this.ending));
  }

  kill(): void {
    try {
      this.spawned.kill();
    } catch {
      // Already gone.
    }
  }
}

/** Resident memory of a process, from /proc (Linux); undefined elsewhere or once it is gone. */
function residentMb(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    return (Number(readFileSync(`/proc/${pid}/statm`, "utf8").split(" ")[1]) * 4096) / 1048576;
  } catch {
    return undefined;
  }
}

export interface RuntimeLauncher {
  describe: string;
  start(): Runtime;
}

/**
 * Node's flags for a runtime: the permission model (read the runner and the scratch, write
 * the scratch; no child processes, workers, addons, WASI or inspector), no inspector on
 * SIGUSR1, and the built-ins that do their own file I/O outside the permission model off.
 */
export function runtimeNodeFlags(readable: string[], scratch: string, memoryMb: number): string[] {
  return [
    "--permission",
    ...readable.map((p) => `--allow-fs-read=${p}`),
    // The scratch and what is below it, spelled out: a runtime may make its scratch after Node starts.
    `--allow-fs-read=${scratch}`,
    `--allow-fs-read=${scratch}/*`,
    `--allow-fs-write=${scratch}`,
    `--allow-fs-write=${scratch}/*`,
    `--max-old-space-size=${memoryMb}`,
    "--disable-sigusr1",
    "--no-experimental-sqlite",
    "--no-addons",
  ];
}

export interface ProcessLauncherOptions {
  isolation: Isolation;
  privileges: Privileges;
  uids: UidPool;
  /** The runner: its entry (and arguments) and the files it reads. */
  runner: string[];
  readable: string[];
  memoryMb: number;
  diskMb: number;
  /** Where scratch directories go when not on a runtime's own tmpfs. */
  scratchRoot: string;
  cgroups?: Cgroups;
  /** Tests only: leave Node's permission model out, to show what the kernel holds by itself. */
  kernelOnly?: boolean;
}

/** A process per runtime, isolated as `options.isolation` says (see sandbox.ts). */
export function processLauncher(o: ProcessLauncherOptions): RuntimeLauncher {
  const { isolation, privileges } = o;
  const filter = isolation === "namespaces" ? seccompFilter() : undefined;
  const namespaces = isolation === "namespaces" ? { interpreter: elfInterpreter(process.execPath), libraries: libraryDirectories() } : undefined;
  if (isolation === "user") chmodSync(o.scratchRoot, 0o1733);
  const describe = `process, ${isolation === "none" ? "NOT ISOLATED: the agent's own user" : `${isolation === "namespaces" ? "namespaces and " : ""}a user of its own`}${o.cgroups ? `, ${o.cgroups.describe()}` : ""}`;

  /** The command that runs `command` as `uid`: setpriv where there is one (it also ties the child's life to ours), else Node's own switch (root). */
  const asUser = (uid: number | undefined, command: string[]): { file: string; args: string[]; options: SpawnOptions } => {
    const pdeathsig = ["--pdeathsig=KILL"];
    const user = uid === undefined ? [] : [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"];
    if (privileges.setpriv) return { file: privileges.setpriv, args: [...user, ...pdeathsig, "--", ...command], options: {} };
    return { file: command[0], args: command.slice(1), options: uid === undefined ? {} : { uid, gid: uid } };
  };

  return {
    describe,
    start() {
      const uid = isolation === "none" ? undefined : o.uids.take();
      const scratch = isolation === "namespaces" ? "/tmp" : isolation === "user" ? path.join(o.scratchRoot, randomUUID()) : mkdtempSync(path.join(o.scratchRoot, "run-"));
      const flags = runtimeNodeFlags(o.readable, scratch, o.memoryMb).filter((flag) => !(o.kernelOnly && /^--(permission|allow-)/.test(flag)));
      const node = [process.execPath, ...flags, ...o.runner, ...(isolation === "user" ? [`--scratch=${scratch}`] : [])];
      const command = namespaces ? [privileges.bwrap as string, ...bwrapArgs({ node: process.execPath, ...namespaces, readable: o.readable, diskMb: o.diskMb, seccompFd: 5, infoFd: 4 }), ...node] : node;
      const { file, args, options } = asUser(uid, command);
      const stdio: SpawnOptions["stdio"] = ["pipe", "pipe", "pipe", "pipe", ...(namespaces ? (["pipe", "pipe"] as const) : [])];
      const launch = () => spawn(file, args, { ...options, cwd: isolation === "none" ? scratch : "/", env: {}, stdio });
      const placed = o.cgroups?.create(`runtime-${uid}-${randomUUID().slice(0, 8)}`, { memoryBytes: (o.memoryMb + MEMORY_MARGIN_MB + o.diskMb) * 1048576, pids: 64 }, launch);
      const child = placed?.child ?? launch();
      let memoryPid = namespaces ? undefined : child.pid;
      if (namespaces) {
        // bubblewrap says which process is the runtime (in the host's pid namespace); the filter goes in on its own pipe.
        let info = "";
        const infoPipe = child.stdio[4] as Readable;
        // Read to its end (closing it early would kill bubblewrap with SIGPIPE); only its first pid counts.
        infoPipe.on("data", (chunk: Buffer) => {
          if (memoryPid) return;
          info += chunk.toString();
          const pid = /"child-pid"\s*:\s*(\d+)/.exec(info)?.[1];
          if (pid) memoryPid = Number(pid);
        });
        infoPipe.on("error", () => undefined);
        (child.stdio[5 as number] as unknown as Writable).on("error", () => undefined).end(filter);
      }
      let cleaned = false;
      return new Runtime(
        {
          child,
          jobs: child.stdin as Writable,
          answers: child.stdio[3] as Readable,
          memoryPid: () => memoryPid,
          kill() {
            if (placed) Cgroups.kill(placed.dir);
            // Another user's process takes CAP_KILL to signal; without it, its cgroup is how.
            if ((uid === undefined || privileges.kill) && child.exitCode === null && child.signalCode === null) {
              // The runtime itself first, while bubblewrap (its parent, which reaps it) still holds its pid:
              // bubblewrap's end would take it along, unless bubblewrap ended mid-setup.
              try {
                if (memoryPid) process.kill(memoryPid, "SIGKILL");
              } finally {
                child.kill("SIGKILL");
              }
            }
          },
          killedFor: () => (placed && Cgroups.oomKilled(placed.dir) ? "the run exceeded its memory limit" : undefined),
          cleanup() {
            if (cleaned) return;
            cleaned = true;
            if (placed) Cgroups.remove(placed.dir);
            if (isolation === "none") removeTree(scratch);
            if (uid === undefined) return;
            if (isolation === "namespaces") return o.uids.give(uid);
            // Its scratch is its user's: removed as that user (after giving back what it locked), then the uid is free again.
            const remover = asUser(uid, ["/bin/sh", "-c", 'chmod -R u+rwx -- "$0" 2>/dev/null; rm -rf -- "$0"', scratch]);
            spawn(remover.file, remover.args, { ...remover.options, env: {}, stdio: "ignore" })
              .once("error", () => o.uids.give(uid))
              .once("exit", () => o.uids.give(uid));
          },
        },
        o.memoryMb,
      );
    },
  };
}

/**
 * The `docker run` of one runtime container: gVisor when on, no capabilities, no new
 * privileges, a read-only root, a uid of its own, memory and pid limits, the scratch a
 * size-capped tmpfs (nothing of the host's file system), and the runtime bundle read-only.
 * Options end before the image.
 */
export function dockerRunArgs(settings: Pick<FlowsAgentSettings, "runtimeImage" | "gvisor" | "runtimeMemoryMb" | "runtimeDiskMb" | "runtimeNetwork" | "extraDockerParams">, runtimeFile: string, name: string, uid: number): string[] {
  return [
    "run",
    "--rm",
    "-i",
    `--name=${name}`,
    ...(settings.gvisor ? ["--runtime=runsc"] : []),
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--read-only",
    "--tmpfs=/tmp:rw,noexec,nosuid,nodev,size=16m",
    `--tmpfs=/work:rw,noexec,nosuid,nodev,size=${settings.runtimeDiskMb}m,mode=1777`,
    `--user=${uid}:${uid}`,
    `--memory=${settings.runtimeMemoryMb + MEMORY_MARGIN_MB}m`,
    `--memory-swap=${settings.runtimeMemoryMb + MEMORY_MARGIN_MB}m`,
    "--pids-limit=64",
    `--network=${settings.runtimeNetwork}`,
    "--env=NODE_OPTIONS=",
    "--workdir=/work",
    `--volume=${runtimeFile}:/agentpools/runtime.js:ro`,
    ...settings.extraDockerParams,
    "--",
    settings.runtimeImage,
    "node",
    ...runtimeNodeFlags(["/agentpools/runtime.js"], "/work", settings.runtimeMemoryMb),
    "/agentpools/runtime.js",
    "--flows-runner",
    "--channel-stdout",
  ];
}

/** Sibling containers on the host's Docker engine, one per run; jobs and answers as frames on stdin and stdout. */
export function dockerLauncher(settings: FlowsAgentSettings, runtimeFile: string, uids: UidPool, docker = "docker"): RuntimeLauncher {
  // The Docker client gets a fixed environment: the agent's own client variables, nothing else.
  const env = Object.fromEntries(["PATH", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_CONFIG", "HOME"].flatMap((name) => (process.env[name] ? [[name, process.env[name]]] : [])));
  return {
    describe: `docker (${settings.gvisor ? "gVisor" : "runc"}), a user of its own`,
    start() {
      const uid = uids.take();
      const name = `agentpools-runtime-${randomUUID().slice(0, 12)}`;
      const child = spawn(docker, dockerRunArgs(settings, runtimeFile, name, uid), { stdio: ["pipe", "pipe", "pipe"], env });
      let released = false;
      return new Runtime(
        {
          child,
          jobs: child.stdin as Writable,
          answers: child.stdout as Readable,
          memoryPid: () => undefined,
          kill() {
            // Killing the client leaves the container running: the engine stops it.
            spawn(docker, ["kill", name], { stdio: "ignore", env }).once("error", () => undefined);
            child.kill("SIGKILL");
          },
          cleanup() {
            if (!released) (released = true), uids.give(uid);
          },
        },
        settings.runtimeMemoryMb,
      );
    },
  };
}

export interface ExecutorOptions {
  poolSize: number;
  launcher: RuntimeLauncher;
  log: Logger;
}

/** Runs jobs on fresh runtimes: at most poolSize at once, the rest wait their turn. */
export class Executor {
  private spares: Runtime[] = [];
  private starting = 0;
  private active = 0;
  private waiting: (() => void)[] = [];
  private closed = false;

  constructor(private readonly options: ExecutorOptions) {
    this.refill();
  }

  /** Runtimes warm and waiting, for tests and the benchmark. */
  get warm(): number {
    return this.spares.length;
  }

  private launch(): Runtime {
    return this.options.launcher.start();
  }

  private refill(): void {
    while (!this.closed && this.spares.length + this.starting + this.active < this.options.poolSize) {
      this.starting++;
      let runtime: Runtime;
      try {
        runtime = this.launch();
      } catch (error) {
        this.starting--;
        this.failedStart(error as Error);
        return;
      }
      runtime.ready.then(
        () => {
          this.starting--;
          if (this.closed) runtime.kill();
          else this.spares.push(runtime);
          // A spare that dies while waiting is no spare.
          void runtime.exited.then(() => {
            const at = this.spares.indexOf(runtime);
            if (at !== -1) (this.spares.splice(at, 1), this.refill());
          });
        },
        (error: Error) => {
          this.starting--;
          this.failedStart(error);
        },
      );
    }
  }

  private failedStart(error: Error): void {
    this.options.log.warn("a runtime failed to start", { executor: this.options.launcher.describe, error: error.message });
    // Try again later rather than spin on a broken setup.
    if (!this.closed) setTimeout(() => this.refill(), 2000).unref();
  }

  async run(job: Job, timeoutMs: number): Promise<Outcome> {
    if (this.active >= this.options.poolSize) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    const started = performance.now();
    let runtime: Runtime | undefined;
    try {
      runtime = this.spares.shift() ?? this.launch();
      await runtime.ready;
      const { ok, value, error, console } = await runtime.run(job, timeoutMs);
      return { ok, value, error, console, durationMs: performance.now() - started };
    } catch (error) {
      runtime?.kill();
      return { ok: false, error: { name: "RuntimeError", message: (error as Error).message }, console: [], durationMs: performance.now() - started };
    } finally {
      const used = runtime;
      this.active--;
      this.waiting.shift()?.();
      // A runtime that answered has parked itself (see runRunner). Killing it, tearing it
      // down and starting the next one (a fork) each cost the event loop and the CPUs
      // milliseconds: done a moment later, once the answer and the traffic it sets off are through.
      setTimeout(() => {
        used?.kill();
        this.refill();
      }, 5);
    }
  }

  close(): void {
    this.closed = true;
    for (const runtime of this.spares.splice(0)) runtime.kill();
  }
}
