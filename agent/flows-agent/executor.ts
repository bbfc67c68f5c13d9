import { BUILT_FOR } from "../config/built-for";
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { randomUUID } from "node:crypto";
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdtempSync,
  opendirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import type { Readable, Writable } from "node:stream";
import type { FlowsAgentSettings } from "../config/flows-agent";
import type { Logger } from "../../lib/log";
import { FLOWS_CANCELLED, FLOWS_MAX_RESULT_BYTES, type Answer, type Job } from "../../protocol/flows";
import { checkAnswer, encodeFrame, frameReader, type CheckedAnswer } from "./channel";
import { ENTRY_BYTES, WALK_BUDGET_MS, WALK_NAMES_BYTES, walkDisk } from "./disk-walker";
import { containerGone } from "../runtime/docker";
import {
  bwrapArgs,
  libraryDirectories,
  orphanedUids,
  seccompFilter,
  type Isolation,
  type Privileges,
  type UidPool,
} from "./sandbox";

/**
 * Flows runtimes. Every run gets a fresh runtime (a process or a container, under a uid of
 * its own) and a fresh scratch space, both thrown away after it. Spares are started ahead so
 * a run rarely waits for a cold start. Whatever a runtime does (exit, hang, flood or break its
 * channel, answer nonsense) ends that runtime and fails its run: never the agent.
 */

export interface Outcome extends Answer {
  durationMs: number;
  /** The runtime's checked answer as it came (see checkAnswer), passed on as it is. */
  text?: string;
}

/** Resident memory a runtime may use beyond its heap cap (Node itself, buffers). */
const MEMORY_MARGIN_MB = 96;

/** A started runtime process: its channel, how to end it, and what to release once it is gone. */
export interface Spawned {
  child: ChildProcess;
  jobs: Writable;
  answers: Readable;
  /** The process whose resident memory counts. */
  memoryPid(): number | undefined;
  /** Where its writes may land when no size-capped file system holds them (see walkDisk). */
  scratch?(): string[];
  kill(): void;
  /** Stops it where it is (SIGSTOP), at once and cheaply, until kill; where it cannot be stopped, as kill. */
  stop?(): void;
  /** After its exit: release its uid and scratch. Never throws. */
  cleanup(): void;
}

/** One started runtime, waiting for its single job. */
export interface Runtime {
  ready: Promise<void>;
  /** Why it ended, once it has. */
  exited: Promise<string>;
  /** Hands the job over; resolves with its checked answer, or rejects saying why there is none. */
  run(job: Job, timeoutMs: number): Promise<CheckedAnswer>;
  /** Ends the runtime (a run it holds fails with `why`); idempotent, never throws. */
  kill(why?: string): void;
}

/**
 * A runtime around a started process. Its watchdogs belong to it, not to its caller: a start
 * deadline from the first moment, the run's deadline and a memory watchdog armed in the same
 * turn as the job leaves (after it: no callback runs in between), all cleared only when the
 * process is gone.
 */
export function runtime(spawned: Spawned, memoryMb: number, diskMb = 0, walkBudgetMs = WALK_BUDGET_MS): Runtime {
  const { child, answers, jobs } = spawned;
  const timers: NodeJS.Timeout[] = [];
  let ending: string | undefined;
  let answered: { resolve(answer: CheckedAnswer): void; reject(error: Error): void } | undefined;
  let stderr = "";
  const kill = () => {
    try {
      spawned.kill();
    } catch {
      // Gone already.
    }
  };
  const end = (why: string) => {
    ending ??= why;
    kill();
    answered?.reject(new Error(ending));
  };
  child.stderr?.on("data", (chunk: Buffer) => void (stderr.length < 16384 && (stderr += chunk)));
  // What a job writes to stdout itself is not wanted, but drained: never held, never read for more.
  child.stdout?.resume();
  let ready!: [() => void, (error: Error) => void];
  const started = new Promise<void>((resolve, reject) => (ready = [resolve, reject]));
  const exited = new Promise<string>((resolve) => {
    const gone = (why: string) => {
      for (const timer of timers) clearTimeout(timer);
      spawned.cleanup();
      const reason = ending ?? (/heap out of memory/.test(stderr) ? "the run exceeded its memory limit" : why);
      ready[1](new Error(reason));
      answered?.reject(new Error(reason));
      resolve(reason);
    };
    // A process that never started has no pid; any later error is a failed signal, of no interest.
    child.on("error", (error) => child.pid === undefined && gone(`the runtime could not start: ${error.message}`));
    child.once("exit", (code, signal) =>
      gone(
        `the runtime exited (${signal ?? `code ${code}`})${stderr ? `: ${stderr.trim().split("\n").slice(-3).join(" ").slice(0, 500)}` : ""}`,
      ),
    );
  });
  // Its first frame says it is ready, the second is its answer; anything else ends it, and the reading.
  let frames = 0;
  const read = frameReader(FLOWS_MAX_RESULT_BYTES, (text) => {
    frames++;
    if (frames === 1 && text === '{"ready":true}') return ready[0]();
    if (frames !== 2 || !answered) throw new Error("a message out of turn");
    // Nothing it does after its answer counts: it is stopped before the answer is taken (its end comes a moment later).
    spawned.stop?.();
    try {
      answered.resolve(checkAnswer(text));
    } catch (error) {
      end(`the runtime's answer was refused: ${(error as Error).message}`);
      throw error;
    }
  });
  answers.on("data", (chunk: Buffer) => {
    try {
      read(chunk);
    } catch (error) {
      end(`the runtime broke its channel: ${(error as Error).message}`);
    }
  });
  for (const pipe of [answers, jobs]) pipe.on("error", () => end("the runtime's channel failed"));
  timers.push(setTimeout(() => end("the runtime did not start within 30 s"), 30_000));
  void started.then(
    () => clearTimeout(timers[0]),
    () => undefined,
  );
  return {
    ready: started,
    exited,
    kill: (why) => (why ? end(why) : kill()),
    run: (job, timeoutMs) =>
      new Promise((resolve, reject) => {
        if (ending) return reject(new Error(ending));
        answered = { resolve, reject };
        // The job first, so the runtime works while its watchdogs are armed.
        jobs.write(encodeFrame(job));
        timers.push(setTimeout(() => end(`the run timed out after ${timeoutMs} ms`), timeoutMs));
        const diskBytes = diskMb * 1048576;
        // Its disk is measured on the walker thread (see walkDisk), one walk in flight at a time.
        let measuring = false;
        let took = 0;
        timers.push(
          setInterval(() => {
            if ((residentMb(spawned.memoryPid()) ?? 0) > memoryMb + MEMORY_MARGIN_MB)
              return end("the run exceeded its memory limit");
            // (Never on EC2, whose runtimes' scratch is a size-capped tmpfs: the block leaves its bundles.)
            if (BUILT_FOR.platform === "ec2" || !spawned.scratch || measuring) return;
            measuring = true;
            // Whatever a run made that cannot be measured ends that run, never the agent (a throw here is uncaught).
            let paths: string[] = [];
            try {
              paths = spawned.scratch();
            } catch {
              // Unlisted: measured as nothing beside its scratch.
            }
            void walkDisk(paths, diskBytes, took, walkBudgetMs).then((walk) => {
              const { used } = walk;
              measuring = false;
              took = walk.took;
              if (used < 0)
                end(
                  `the run made its scratch space too costly to measure (a walk of it took over ${walkBudgetMs} ms of CPU, or read over ${WALK_NAMES_BYTES >> 20} MB of names)`,
                );
              else if (used > diskBytes)
                end(
                  used === Infinity
                    ? "the run made its scratch space unreadable to the agent, which measures it"
                    : `the run exceeded its disk limit: ${Math.ceil(used / 1048576)} MB of ${diskMb} MB`,
                );
            });
          }, 20),
        );
      }),
  };
}

/** SIGKILL (or `signal`), to a process that may be gone already. */
function killQuietly(pid: number, signal = "SIGKILL"): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Gone already.
  }
}

/** Resident memory of a process, from /proc (Linux); undefined elsewhere or once it is gone. */
function residentMb(pid: number | undefined): number | undefined {
  try {
    return pid ? (Number(readFileSync(`/proc/${pid}/statm`, "utf8").split(" ")[1]) * 4096) / 1048576 : undefined;
  } catch {
    return undefined;
  }
}

export interface RuntimeLauncher {
  describe: string;
  /** A runtime, or none while every uid is held (by runtimes alive or not yet cleaned up). */
  start(): Runtime | undefined;
  /** Its uids, when it has: the executor hears when one comes back. */
  uids?: UidPool;
}

/**
 * Node's flags for a runtime: the permission model (read the runner and the scratch, write the
 * scratch, which a runtime may make after Node starts, hence its contents spelled out; no child
 * processes, workers, addons, WASI or inspector), no inspector on SIGUSR1, and the built-ins
 * that do their own file I/O outside the permission model off.
 */
export const runtimeNodeFlags = (readable: string[], scratch: string, memoryMb: number) => [
  "--permission",
  ...[...readable, scratch, `${scratch}/*`].map((p) => `--allow-fs-read=${p}`),
  ...[scratch, `${scratch}/*`].map((p) => `--allow-fs-write=${p}`),
  `--max-old-space-size=${memoryMb}`,
  "--disable-sigusr1",
  "--no-experimental-sqlite",
  "--no-addons",
];

/** A process's pid and start time (a pid alone is reused), from /proc; undefined once it is gone. */
function identity(pid: number): string | undefined {
  try {
    return `${pid} ${readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[19]}`;
  } catch {
    return undefined;
  }
}

/** The file in a scratch root naming the agent that uses it. */
export const CLAIM = ".agent";

/**
 * Claims a scratch root for one agent, which cleans it at start as its own: an agent alive (its process, with the
 * same start time) that claimed it first stops this one with an error naming the setting; a dead one's is taken over.
 */
export function claim(dir: string): void {
  const file = `${dir}/${CLAIM}`;
  const me = `${identity(process.pid) ?? process.pid} ${randomUUID()}`;
  for (;;) {
    try {
      return writeFileSync(file, me, { flag: "wx", mode: 0o600 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    let held: string;
    try {
      held = readFileSync(file, "utf8");
    } catch {
      continue; // taken over meanwhile: try again
    }
    const pid = Number(held.split(" ")[0]);
    if (held.startsWith(`${identity(pid)} `))
      throw new Error(`FLOWS_MOUNTS_DIR=${dir} is another Flows agent's (pid ${pid}): each needs its own`);
    rmSync(file, { force: true });
  }
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
  openFiles: number;
  /** Where scratch directories go when not on a runtime's own tmpfs. */
  scratchRoot: string;
  /** The CPU a walk of one scratch may take (WALK_BUDGET_MS): tests make it small, to show the bound, not its size. */
  walkBudgetMs?: number;
}

/** A process per runtime, isolated as `isolation` says (see sandbox.ts). */
export function processLauncher(o: ProcessLauncherOptions): RuntimeLauncher {
  const { privileges, uids } = o;
  // On EC2 namespaces only (the component allows no other level there): the other levels' paths leave the bundle.
  const isolation = BUILT_FOR.platform === "ec2" ? "namespaces" : o.isolation;
  // A boolean the minifier folds (an object it would not): an EC2 bundle keeps only the namespaces paths below.
  const namespaced = isolation === "namespaces";
  const namespaces = namespaced ? { libraries: libraryDirectories(), filter: seccompFilter() } : undefined;
  /** `command` as `uid`: through setpriv where there is one (which also ties the child's life to ours), else by Node's own switch (root). */
  const asUser = (uid: number | undefined, command: string[]): [string, string[], SpawnOptions] => {
    const user =
      uid === undefined
        ? []
        : [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"];
    // On EC2 the agent is not root: it starts only with setpriv (missingFor).
    return BUILT_FOR.platform === "ec2" || privileges.setpriv
      ? [privileges.setpriv!, [...user, "--pdeathsig=KILL", "--", ...command], {}]
      : [command[0], command.slice(1), uid === undefined ? {} : { uid, gid: uid }];
  };
  /** Removes a scratch directory as its user (none: ours), after giving back what it locked (chmod 0500). */
  const rmTree = `chmod -R u+rwx "$@"; rm -rf "$@"`;
  /**
   * Removes, as `uid`, all that uid holds: its processes (kill -1 as that uid: whatever an escape from the permission
   * model left running), its SysV IPC objects (ipcrm --all removes only what the uid may) and /dev/shm files (a channel
   * to a later run of the uid, memory without a cap), then the paths given on its stdin (NUL-separated: no list in argv,
   * whatever its length). The exit status is that last removal's. Ours (uid undefined) is only that removal.
   */
  const sweep = (uid: number | undefined) => {
    const given = `xargs -0 -r sh -c '${rmTree}' sh`;
    const shm = `find /dev/shm -mindepth 1 -maxdepth 1 -user "$0" -exec rm -rf {} + 2>/dev/null`;
    const all = `kill -KILL -1; ipcrm --all 2>/dev/null; ${shm}; ${given}`;
    return asUser(uid, ["/bin/sh", "-c", uid === undefined ? given : all, String(uid)]);
  };
  /** The scratch root's entries by owner (the claim left out), which the agent lists (no runtime can). */
  const byOwner = (): Map<number, string[]> => {
    const owners = new Map<number, string[]>();
    try {
      for (const name of readdirSync(o.scratchRoot)) {
        const owner = lstatSync(`${o.scratchRoot}/${name}`, { throwIfNoEntry: false })?.uid;
        if (name === CLAIM || owner === undefined) continue;
        (owners.get(owner) ?? owners.set(owner, []).get(owner)!).push(`${o.scratchRoot}/${name}`);
      }
    } catch {
      // The root gone (the agent's own end).
    }
    return owners;
  };
  const paths = (list: string[]) => list.map((entry) => `${entry}\0`).join("");
  /**
   * What runtimes of "user" isolation made in the scratch root (their scratch; beside it only an escape from the
   * permission model writes), by owner: counted with its scratch. One listing serves every runtime's watchdog, made
   * again only after four times what the last one took (a root of many entries costs the agent a bounded share), and
   * holds no more of one owner's than its disk allows entries.
   */
  let owned = new Map<number, string[]>();
  let listAt = 0;
  const strays = (uid: number, scratch: string): string[] => {
    if (performance.now() >= listAt) {
      const began = performance.now();
      owned = new Map();
      try {
        const dir = opendirSync(o.scratchRoot);
        try {
          for (let entry; (entry = dir.readSync());) {
            const at = `${o.scratchRoot}/${entry.name}`;
            const owner = lstatSync(at, { throwIfNoEntry: false })?.uid;
            const list = owner === undefined ? [] : (owned.get(owner) ?? owned.set(owner, []).get(owner)!);
            if (list.length <= (o.diskMb * 1048576) / ENTRY_BYTES) list.push(at);
          }
        } finally {
          dir.closeSync();
        }
      } catch {
        // The root gone (the agent's own end), or an entry gone meanwhile: what was listed.
      }
      listAt = performance.now() + 4 * (performance.now() - began);
    }
    return (owned.get(uid) ?? []).filter((entry) => entry !== scratch);
  };

  // A runtime of "user" isolation makes its own scratch here: anyone may add, none may list or remove another's. Each
  // scratch takes the agent's group (setgid) and is made 0750: the agent, without CAP_DAC_OVERRIDE in a pod, reads it to
  // measure its disk; no other runtime (its own gid, no other groups) may.
  if (isolation === "user") {
    chownSync(o.scratchRoot, -1, process.getgid?.() ?? 0);
    chmodSync(o.scratchRoot, 0o3733);
  }
  // The walker thread started now, not at a run's first measurement: a run that writes fast is measured from its start.
  if (BUILT_FOR.platform !== "ec2" && !namespaced) void walkDisk([], 0, 0);
  // What runtimes left behind an agent that died before their cleanup (a crash, SIGKILL) goes before any uid is given
  // out: their processes, then their scratch. Not on EC2 (the block leaves its bundle whole): systemd restarts the
  // agent only once its unit's cgroup, runtimes included, is empty, and namespaced runtimes' scratch is their tmpfs.
  if (BUILT_FOR.platform !== "ec2") {
    // One sweep per uid, not per entry or process: of the pool's uids that own an entry or an orphan (a sweep kills
    // all a uid runs, an orphan's own children too), and ours for our entries. An entry of another's (root's, an
    // operator's copy) is not a runtime's.
    const left = byOwner();
    for (const uid of isolation === "none" ? [] : orphanedUids(uids)) if (!left.has(uid)) left.set(uid, []);
    for (const [owner, list] of left) {
      const ours = owner === process.getuid?.();
      if (!ours && (owner < uids.first || owner > uids.last)) continue;
      const [sh, args, options] = sweep(ours ? undefined : owner);
      spawnSync(sh, args, { ...options, env: {}, input: paths(list), stdio: ["pipe", "ignore", "ignore"] });
    }
  }

  return {
    uids: isolation === "none" ? undefined : uids,
    describe: `process, ${isolation === "none" ? "NOT ISOLATED (the agent's own user)" : `${namespaced ? "namespaces and " : ""}a user of its own`}`,
    start() {
      const uid = isolation === "none" ? undefined : uids.take();
      if (uid === undefined && isolation !== "none") return;
      const scratch = namespaced
        ? "/tmp"
        : uid
          ? `${o.scratchRoot}/${randomUUID()}`
          : mkdtempSync(`${o.scratchRoot}/run-`);
      // A runtime's command line is anyone's to read (/proc/PID/cmdline): the name of a scratch its runtime makes goes
      // in its environment (its owner's only), the flags naming it too (NODE_OPTIONS), or another runtime could make
      // it first. The runner takes both out of its environment before any job.
      const flags = runtimeNodeFlags(o.readable, scratch, o.memoryMb);
      const named = isolation === "user" ? flags.filter((flag) => flag.includes(scratch)) : [];
      const env = named.length
        ? {
            AGENTPOOLS_SCRATCH: scratch,
            NODE_OPTIONS: named.map((flag) => flag.replace(/=(.*)/s, (_, p) => `=${JSON.stringify(p)}`)).join(" "),
          }
        : {};
      const node = [process.execPath, ...flags.filter((flag) => !named.includes(flag)), ...o.runner];
      // Its open files capped (util-linux's prlimit, beside setpriv): the kernel memory its sockets hold with them.
      const sandbox = namespaced
        ? [
            privileges.bwrap as string,
            ...bwrapArgs({ node: process.execPath, ...namespaces!, readable: o.readable, diskMb: o.diskMb }),
          ]
        : [];
      // Without a size-capped tmpfs, no file of its own may pass its disk (the kernel answers EFBIG), and the watchdog
      // measures its scratch (walkDisk).
      const fileSize = namespaced ? [] : [`--fsize=${o.diskMb * 1048576}:${o.diskMb * 1048576}`];
      const [file, args, options] = asUser(uid, [
        "/usr/bin/prlimit",
        `--nofile=${o.openFiles}:${o.openFiles}`,
        ...fileSize,
        "--",
        ...sandbox,
        ...node,
      ]);
      // Node's stdio "pipes" are Unix socketpairs: read with read(2), so a descriptor a runtime passes (SCM_RIGHTS) is dropped.
      const launch = () =>
        spawn(file, args, {
          ...options,
          cwd: uid ? "/" : scratch,
          env,
          stdio: ["pipe", "pipe", "pipe", "pipe", ...(namespaced ? ["pipe", "pipe"] : [])] as SpawnOptions["stdio"],
        });
      const child = launch();
      let memoryPid = namespaced ? 0 : child.pid;
      if (namespaced) {
        // bubblewrap tells the runtime's pid (in our pid namespace) on fd 4, read to its end (closing it early would
        // kill bubblewrap with SIGPIPE) but only its first pid counts; the seccomp filter goes in on fd 5.
        let info = "";
        (child.stdio[4] as Readable)
          .on("error", () => undefined)
          .on("data", (chunk) => void (memoryPid ||= Number(/"child-pid": *(\d+)/.exec((info += chunk))?.[1] ?? 0)));
        (child.stdio[5 as number] as unknown as Writable).on("error", () => undefined).end(namespaces!.filter);
      }
      let released = false;
      return runtime(
        {
          child,
          jobs: child.stdin as Writable,
          answers: child.stdio[3] as Readable,
          memoryPid: () => memoryPid,
          scratch: namespaced ? undefined : () => (uid === undefined ? [scratch] : [scratch, ...strays(uid, scratch)]),
          stop() {
            // The runtime itself (not bubblewrap, which would only wait for it); not yet told its pid, ended now.
            const pid = namespaced ? memoryPid : child.pid;
            if (child.exitCode !== null || child.signalCode !== null) return;
            if (pid) killQuietly(pid, "SIGSTOP");
            else this.kill();
          },
          kill() {
            if (child.exitCode !== null || child.signalCode !== null) return;
            // The runtime itself first, while bubblewrap (its parent, which reaps it) still holds its pid: bubblewrap's
            // end would take it along, unless bubblewrap ended mid-setup.
            for (const pid of [...(namespaced && memoryPid ? [memoryPid] : []), child.pid as number]) killQuietly(pid);
          },
          cleanup() {
            if (released) return;
            released = true;
            if (namespaced) return uids.give(uid as number);
            // Not isolated, its scratch is ours: removed. Of "user" isolation (no pid namespace to end with it), all its
            // uid holds is swept (see sweep); then its uid is free again.
            // Only its own entries: a scratch another uid made first is that uid's, not this one's to remove.
            const [sh, shArgs, shOptions] = sweep(uid);
            const list = uid === undefined ? [scratch] : (byOwner().get(uid) ?? []);
            // Only once that worked: a uid whose processes or files may remain is never given to another run. A spawn
            // that cannot start (out of processes or memory) keeps the uid, and never throws into the agent.
            try {
              const child = spawn(sh, shArgs, { ...shOptions, env: {}, stdio: ["pipe", "ignore", "ignore"] })
                .on("close", (code) => code === 0 && uid !== undefined && uids.give(uid))
                .on("error", () => undefined);
              child.stdin?.on("error", () => undefined).end(paths(list));
            } catch {
              // The uid stays held.
            }
          },
        },
        o.memoryMb,
        o.diskMb,
        o.walkBudgetMs,
      );
    },
  };
}

/**
 * The `docker run` of one runtime container: gVisor when on, no capabilities, no new
 * privileges, a read-only root, a uid of its own, memory and pid limits, the scratch a
 * size-capped tmpfs (nothing of the host's file system), the runtime bundle read-only, and
 * options ending before the image.
 */
export function dockerRunArgs(
  settings: Pick<
    FlowsAgentSettings,
    | "runtimeImage"
    | "gvisor"
    | "runtimeMemoryMb"
    | "runtimeDiskMb"
    | "runtimeOpenFiles"
    | "runtimeNetwork"
    | "extraDockerParams"
  >,
  runtimeFile: string,
  name: string,
  uid: number,
): string[] {
  const memory = `${settings.runtimeMemoryMb + MEMORY_MARGIN_MB}m`;
  return [
    ...[
      "run",
      "--rm",
      "-i",
      `--name=${name}`,
      ...(settings.gvisor ? ["--runtime=runsc"] : []),
      "--cap-drop=ALL",
      "--security-opt=no-new-privileges",
      "--read-only",
    ],
    ...[
      "--tmpfs=/tmp:rw,noexec,nosuid,nodev,size=16m",
      `--tmpfs=/work:rw,noexec,nosuid,nodev,size=${settings.runtimeDiskMb}m,mode=1777`,
      "--workdir=/work",
    ],
    ...[
      `--user=${uid}:${uid}`,
      `--memory=${memory}`,
      `--memory-swap=${memory}`,
      "--pids-limit=64",
      `--ulimit=nofile=${settings.runtimeOpenFiles}`,
      `--network=${settings.runtimeNetwork}`,
      "--env=NODE_OPTIONS=",
    ],
    `--volume=${runtimeFile}:/agentpools/runtime.js:ro`,
    ...settings.extraDockerParams,
    ...[
      "--",
      settings.runtimeImage,
      "node",
      ...runtimeNodeFlags(["/agentpools/runtime.js"], "/work", settings.runtimeMemoryMb),
    ],
    ...["/agentpools/runtime.js", "--flows-runner", "--channel-stdout"],
  ];
}

/**
 * Sibling containers on the host's Docker engine, one per run; jobs and answers as frames on stdin and stdout. A
 * container's uid is given back only once the engine says the container is gone (`docker rm -f` succeeded, or
 * found none): killing the client leaves its container running. An engine that has not said so within
 * `removalTimeoutMs` is logged as an error and asked again; meanwhile the uid stays held and starts wait for another.
 */
export function dockerLauncher(
  settings: FlowsAgentSettings,
  runtimeFile: string,
  uids: UidPool,
  {
    docker = "docker",
    log,
    removalTimeoutMs = 30_000,
  }: { docker?: string; log?: Logger; removalTimeoutMs?: number } = {},
): RuntimeLauncher {
  // The Docker client gets a fixed environment: the agent's own client variables, nothing else.
  const { PATH, HOME, DOCKER_HOST, DOCKER_CONFIG } = process.env;
  const env = { PATH, HOME, DOCKER_HOST, DOCKER_CONFIG };
  const removal = (name: string, uid: number) =>
    containerGone([docker], name, env, removalTimeoutMs, () =>
      log?.error("a runtime container not yet gone: its uid held", { name, uid }),
    );
  return {
    uids,
    describe: `docker (${settings.gvisor ? "gVisor" : "runc"}), a user of its own`,
    start() {
      const uid = uids.take();
      if (uid === undefined) return;
      const name = `agentpools-runtime-${randomUUID()}`;
      const child = spawn(docker, dockerRunArgs(settings, runtimeFile, name, uid), { stdio: "pipe", env });
      let removed: Promise<void> | undefined;
      const remove = () => (removed ??= removal(name, uid));
      let released = false;
      return runtime(
        {
          child,
          jobs: child.stdin,
          answers: child.stdout,
          memoryPid: () => undefined,
          kill() {
            void remove();
            child.kill("SIGKILL");
          },
          // Also after the client ended by itself (it waits for the container's removal, unless something killed it).
          cleanup: () => void (released || ((released = true), remove().then(() => uids.give(uid)))),
        },
        settings.runtimeMemoryMb,
      );
    },
  };
}

/**
 * A job's cancellation, a plain object (an AbortController's events cost the warm path tens of microseconds): the
 * caller calls `cancelRun`, the executor keeps in `onCancel` what ending the job takes at its current stage.
 */
export interface Cancellation {
  cancelled?: boolean;
  onCancel?: () => void;
}

export function cancelRun(cancellation: Cancellation): void {
  cancellation.cancelled = true;
  cancellation.onCancel?.();
}

export interface Executor {
  /** A job's outcome; once cancelled, a job still waiting never starts and a job running is ended. */
  run(job: Job, timeoutMs: number, cancellation?: Cancellation): Promise<Outcome>;
  close(): void;
}

/** Waits in `queue` for a turn: true once given one, false if cancelled or out of time first (and the place is left). */
function turn(queue: (() => void)[], cancellation: Cancellation = {}, timeoutMs?: number): Promise<boolean> {
  return new Promise((resolve) => {
    const leave = (given: boolean) => {
      const at = queue.indexOf(go);
      if (at < 0 && !given) return;
      if (at >= 0) queue.splice(at, 1);
      clearTimeout(timer);
      resolve(given);
    };
    const go = () => leave(true);
    const timer = setTimeout(leave, timeoutMs ?? 2 ** 31 - 1, false);
    queue.push(go);
    cancellation.onCancel = () => leave(false);
  });
}

/** Runs jobs on fresh runtimes: at most poolSize at once, the rest wait their turn. */
export function executor({
  poolSize,
  launcher,
  log,
}: {
  poolSize: number;
  launcher: RuntimeLauncher;
  log: Logger;
}): Executor {
  const spares: Runtime[] = [];
  const waiting: (() => void)[] = [];
  // Runs with a turn but no runtime: every uid was held (runtimes still being cleaned up). A uid given back or a
  // spare ready wakes them all to try again, ahead of new spares.
  const waitingForUid: (() => void)[] = [];
  const wake = () => waitingForUid.splice(0).forEach((go) => go());
  if (launcher.uids) launcher.uids.onGive = () => (waitingForUid.length ? wake() : refill());
  let starting = 0;
  let active = 0;
  let closed = false;
  const failed = (error: Error) => {
    starting--;
    log.warn("a runtime failed to start", { executor: launcher.describe, error: error.message });
    // Try again later rather than spin on a broken setup.
    if (!closed) setTimeout(refill, 2000).unref();
  };
  const refill = (): void => {
    while (!closed && spares.length + starting + active < poolSize) {
      try {
        const spare = launcher.start();
        // No uid free: one given back calls this again.
        if (!spare) return;
        starting++;
        spare.ready.then(() => {
          starting--;
          if (closed) return spare.kill();
          spares.push(spare);
          wake();
          // A spare that dies while it waits is no spare.
          void spare.exited.then(() => spares.includes(spare) && (spares.splice(spares.indexOf(spare), 1), refill()));
        }, failed);
      } catch (error) {
        starting++;
        return failed(error as Error);
      }
    }
  };
  refill();
  return {
    close() {
      closed = true;
      for (const spare of spares.splice(0)) spare.kill();
    },
    async run(job, timeoutMs, cancellation) {
      const began = performance.now();
      const failed = (name: string, message: string): Outcome => ({
        ok: false,
        error: { name, message },
        console: [],
        durationMs: performance.now() - began,
      });
      if (active >= poolSize && !(await turn(waiting, cancellation))) return failed("AbortError", FLOWS_CANCELLED);
      active++;
      // The spare readied last: its memory is the likeliest still in the CPU's caches (one idle longer is no fresher,
      // and a first run after idling costs several times its warm cost here).
      let spare = spares.pop();
      let used = spare;
      const onCancel = () => used?.kill(FLOWS_CANCELLED);
      if (cancellation) cancellation.onCancel = onCancel;
      try {
        // Cancelled while its turn came: not started.
        if (cancellation?.cancelled) throw new Error(FLOWS_CANCELLED);
        used ??= launcher.start();
        // Every uid held (runtimes not yet cleaned up): wait for one, or a spare, within the run's own timeout.
        while (!used) {
          if (!(await turn(waitingForUid, cancellation, timeoutMs)))
            throw new Error(cancellation?.cancelled ? FLOWS_CANCELLED : `the run timed out after ${timeoutMs} ms`);
          if (cancellation) cancellation.onCancel = onCancel;
          used = spare = spares.pop();
          used ??= launcher.start();
        }
        // A spare is ready already (it joined the spares once it was): no wait, not even a turn.
        if (!spare) await used.ready;
        const { ok, value, error, console, text } = await used.run(job, timeoutMs);
        return { ok, value, error, console, durationMs: performance.now() - began, text };
      } catch (error) {
        used?.kill();
        const { message } = error as Error;
        return failed(message === FLOWS_CANCELLED ? "AbortError" : "RuntimeError", message);
      } finally {
        if (cancellation) cancellation.onCancel = undefined;
        active--;
        waiting.shift()?.();
        // A runtime that answered has parked itself (see runRunner). Killing it, tearing it
        // down and starting the next one (a fork) each cost the event loop and the CPUs
        // milliseconds: done a moment later, once the answer and the traffic it sets off are through.
        // (Even the timer is set after this turn's promise reactions, which send the answer.)
        process.nextTick(() => setTimeout(() => (used?.kill(), refill()), 5));
      }
    },
  };
}
