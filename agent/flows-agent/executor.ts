import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import type { FlowsAgentSettings } from "../config/flows-agent";
import type { Logger } from "../../lib/log";
import type { Answer, Job } from "../../protocol/flows";
import { RESULT_PREFIX } from "./runner";

/**
 * Flows runtimes. The security boundary is the process (or container): every run gets a
 * fresh one and a fresh scratch directory, and both are thrown away after it, so no run
 * sees anything an earlier run left. Spares are started ahead so a run rarely waits for a
 * cold start.
 */

export interface Outcome extends Answer {
  durationMs: number;
}

/** One started runtime, waiting for its single job. */
interface Runtime {
  ready: Promise<void>;
  pid(): number | undefined;
  run(job: Job): Promise<Answer>;
  exited: Promise<string>;
  kill(): void;
  scratch: string;
}

export interface RuntimeLauncher {
  describe: string;
  start(scratch: string): Runtime;
}

const OUTPUT_LIMIT = 64 * 1024;

function watchExit(child: ChildProcess, stderr: () => string): Promise<string> {
  return new Promise((resolve) => {
    child.once("error", (error) => resolve(`the runtime could not start: ${error.message}`));
    child.once("exit", (code, signal) => {
      const text = stderr();
      if (/heap out of memory|Allocation failed/i.test(text)) resolve("the run exceeded its memory limit");
      else resolve(`the runtime exited (${signal ?? `code ${code}`})${text ? `: ${text.trim().split("\n").slice(-3).join(" ").slice(0, 500)}` : ""}`);
    });
  });
}

function collect(child: ChildProcess): { stdout: () => string; stderr: () => string } {
  const take = (stream: NodeJS.ReadableStream | null) => {
    let text = "";
    stream?.on("data", (chunk: Buffer) => {
      if (text.length < OUTPUT_LIMIT) text += chunk.toString("utf8");
    });
    return () => text;
  };
  return { stdout: take(child.stdout), stderr: take(child.stderr) };
}

/**
 * A Node.js process per runtime, with no inherited environment (so no pool token), its
 * scratch directory as working directory, and Node's permission model: it may read the
 * runner and its scratch directory and write only there; child processes, worker threads
 * and native addons are refused. The V8 heap is capped and a watchdog kills a process
 * whose resident memory runs past the cap (buffers live outside the heap).
 */
export function processLauncher(options: { runner: string[]; readable: string[]; memoryMb: number }): RuntimeLauncher {
  return {
    describe: "process",
    start(scratch) {
      const child = spawn(
        process.execPath,
        [
          "--permission",
          ...options.readable.map((p) => `--allow-fs-read=${p}`),
          `--allow-fs-read=${scratch}`,
          `--allow-fs-write=${scratch}`,
          `--max-old-space-size=${options.memoryMb}`,
          ...options.runner,
        ],
        { cwd: scratch, env: {}, stdio: ["ignore", "pipe", "pipe", "ipc"] },
      );
      const output = collect(child);
      const exited = watchExit(child, output.stderr);
      const ready = new Promise<void>((resolve, reject) => {
        // started -> a warm-up message -> ready (see runRunner).
        child.once("message", () => {
          child.send({ warm: true });
          child.once("message", () => resolve());
        });
        void exited.then((why) => reject(new Error(why)));
      });
      return {
        ready,
        scratch,
        pid: () => child.pid,
        exited,
        kill: () => child.kill("SIGKILL"),
        run(job) {
          return new Promise((resolve, reject) => {
            child.once("message", (answer: Answer) => resolve(withOutput(answer, output.stdout())));
            child.send(job, (error) => error && reject(error));
          });
        },
      };
    },
  };
}

/** What a runtime printed outside console.* (process.stdout.write) joins its console lines. */
function withOutput(answer: Answer, stdout: string): Answer {
  const extra = stdout.split("\n").filter((line) => line && !line.startsWith(RESULT_PREFIX));
  return { ...answer, console: [...(answer.console ?? []), ...extra] };
}

/**
 * The `docker run` of one runtime container: no capabilities, no new privileges, read-only,
 * gVisor when on. `user` is the agent's own uid:gid, which owns the run's scratch directory
 * (created 0700), so the container can write there and nowhere else.
 */
export function dockerRunArgs(settings: Pick<FlowsAgentSettings, "runtimeImage" | "gvisor" | "runtimeMemoryMb" | "runtimeNetwork" | "extraDockerParams">, scratch: string, runtimeFile: string, name: string, user: string): string[] {
  return [
    "run",
    "--rm",
    "-i",
    `--name=${name}`,
    ...(settings.gvisor ? ["--runtime=runsc"] : []),
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--read-only",
    "--tmpfs=/tmp:rw,noexec,nosuid,size=64m",
    `--user=${user}`,
    `--memory=${settings.runtimeMemoryMb}m`,
    `--memory-swap=${settings.runtimeMemoryMb}m`,
    "--pids-limit=64",
    `--network=${settings.runtimeNetwork}`,
    "--env=NODE_OPTIONS=",
    `--volume=${scratch}:/work:rw`,
    "--workdir=/work",
    `--volume=${runtimeFile}:/agentpools/runtime.js:ro`,
    ...settings.extraDockerParams,
    settings.runtimeImage,
    "node",
    `--max-old-space-size=${settings.runtimeMemoryMb}`,
    "/agentpools/runtime.js",
    "--flows-runner",
  ];
}

/** Sibling containers on the host's Docker engine, one per run; jobs and answers as lines on stdin/stdout. */
export function dockerLauncher(settings: FlowsAgentSettings, runtimeFile: string, docker = "docker"): RuntimeLauncher {
  return {
    describe: `docker (${settings.gvisor ? "gVisor" : "runc"})`,
    start(scratch) {
      const user = `${process.getuid?.() ?? 1000}:${process.getgid?.() ?? 1000}`;
      const child = spawn(docker, dockerRunArgs(settings, scratch, runtimeFile, `agentpools-runtime-${randomUUID().slice(0, 12)}`, user), { stdio: ["pipe", "pipe", "pipe"], env: { PATH: process.env.PATH, DOCKER_HOST: process.env.DOCKER_HOST } });
      const output = collect(child);
      const exited = watchExit(child, output.stderr);
      const answers: ((line: string) => void)[] = [];
      let pending = "";
      child.stdout?.on("data", (chunk: Buffer) => {
        pending += chunk.toString("utf8");
        for (let at = pending.indexOf("\n"); at !== -1; at = pending.indexOf("\n")) {
          const line = pending.slice(0, at);
          pending = pending.slice(at + 1);
          if (line.startsWith(RESULT_PREFIX)) answers.shift()?.(line.slice(RESULT_PREFIX.length));
        }
      });
      const next = () => new Promise<string>((resolve) => answers.push(resolve));
      const ready = Promise.race([next().then(() => undefined), exited.then((why) => Promise.reject(new Error(why)))]);
      return {
        ready,
        scratch,
        pid: () => undefined,
        exited,
        kill: () => child.kill("SIGKILL"),
        async run(job) {
          const answer = next();
          child.stdin?.write(`${JSON.stringify(job)}\n`);
          return withOutput(JSON.parse(await answer), output.stdout());
        },
      };
    },
  };
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

export interface ExecutorOptions {
  poolSize: number;
  memoryMb: number;
  /** Where scratch directories are made (each run's is removed after it). */
  scratchRoot: string;
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
    return this.options.launcher.start(mkdtempSync(path.join(this.options.scratchRoot, "run-")));
  }

  private discard(runtime: Runtime): void {
    runtime.kill();
    rmSync(runtime.scratch, { recursive: true, force: true });
  }

  private refill(): void {
    while (!this.closed && this.spares.length + this.starting + this.active < this.options.poolSize) {
      this.starting++;
      const runtime = this.launch();
      runtime.ready.then(
        () => {
          this.starting--;
          if (this.closed) this.discard(runtime);
          else this.spares.push(runtime);
        },
        (error: Error) => {
          this.starting--;
          this.discard(runtime);
          this.options.log.warn("a runtime failed to start", { executor: this.options.launcher.describe, error: error.message });
          // Try again later rather than spin on a broken setup.
          if (!this.closed) setTimeout(() => this.refill(), 2000).unref();
        },
      );
    }
  }

  async run(job: Job, timeoutMs: number): Promise<Outcome> {
    if (this.active >= this.options.poolSize) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    const started = performance.now();
    let runtime: Runtime | undefined;
    let watchdog: NodeJS.Timeout | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      runtime = this.spares.shift() ?? this.launch();
      await runtime.ready;
      const current = runtime;
      const limit = new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve(`the run timed out after ${timeoutMs} ms`), timeoutMs);
        // Past the heap cap, buffers can still grow: watch the whole process.
        watchdog = setInterval(() => {
          const mb = residentMb(current.pid());
          if (mb !== undefined && mb > this.options.memoryMb + 96) resolve("the run exceeded its memory limit");
        }, 20);
      });
      const answer = await Promise.race([
        current.run(job),
        limit.then((why) => Promise.reject(new Error(why))),
        current.exited.then((why) => Promise.reject(new Error(why))),
      ]);
      return { ...answer, durationMs: performance.now() - started };
    } catch (error) {
      // Timed out, over its memory, or gone: stop it now.
      runtime?.kill();
      return { ok: false, error: { name: "RuntimeError", message: (error as Error).message }, console: [], durationMs: performance.now() - started };
    } finally {
      clearTimeout(timer);
      clearInterval(watchdog);
      const used = runtime;
      this.active--;
      this.waiting.shift()?.();
      // A runtime that answered has parked itself (see runRunner). Killing it, tearing it
      // down and starting the next one (a fork) each cost the event loop and the CPUs
      // milliseconds: done a moment later, once the answer and the traffic it sets off are through.
      setTimeout(() => {
        if (used) this.discard(used);
        this.refill();
      }, 5);
    }
  }

  close(): void {
    this.closed = true;
    for (const runtime of this.spares.splice(0)) this.discard(runtime);
  }
}
