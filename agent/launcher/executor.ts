import { spawn, type ChildProcess } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { LauncherSettings } from "../config/launcher";
import type { Logger } from "../../lib/log";
import { containerGone } from "../runtime/docker";
import { BUILT_FOR } from "../config/built-for";

/** Where a run's workspace is inside its container; its state file sits in it. */
export const CONTAINER_WORKSPACE = "/workspace";
export const STATE_FILE = ".agentpools/state";

/** A run ready to start: the launcher has checked, decrypted and prepared everything. */
export interface PreparedRun {
  id: string;
  image: string;
  /** The commands as one shell script, stopping at the first that fails. */
  script: string;
  /** The run's whole environment: nothing else of the launcher's reaches it. */
  env: Record<string, string>;
  /** The run's workspace on this host. */
  workspace: string;
}

export interface StartedRun {
  /** stdout and stderr, interleaved as they come. */
  onOutput(listener: (chunk: Buffer, stream: "stdout" | "stderr") => void): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(): void;
}

export interface RunExecutor {
  describe: string;
  /** Settles once no run can start before it should (what an earlier launcher left is gone). */
  ready?: Promise<unknown>;
  /** The path the run sees its workspace (on this host at `workspace`) at. */
  workspaceInRun(workspace: string): string;
  start(run: PreparedRun): StartedRun;
}

/** A started run: `kill` may return what its end waits for beyond the process's own (a container's removal). */
function started(child: ChildProcess, kill: () => unknown): StartedRun {
  let killing: unknown;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("error", () => resolve({ code: 127, signal: null }));
    child.once("close", (code, signal) => resolve({ code, signal }));
  }).then(async (exit) => (await killing, exit));
  return {
    onOutput: (listener) => {
      child.stdout?.on("data", (chunk: Buffer) => listener(chunk, "stdout"));
      child.stderr?.on("data", (chunk: Buffer) => listener(chunk, "stderr"));
    },
    exited,
    kill: () => void (killing = kill()),
  };
}

/**
 * Runs each run's script with /bin/sh on this host, in its own process group so a kill takes
 * every process it started. For development and tests: there is no container between runs
 * and the host, so the components only deploy the Docker executor.
 */
export function processExecutor(launcherPath = process.env.PATH ?? "/usr/bin:/bin"): RunExecutor {
  return {
    describe: "process",
    workspaceInRun: (workspace) => workspace,
    start(run) {
      const env = { PATH: launcherPath, HOME: run.workspace, ...run.env };
      const child = spawn("/bin/sh", ["-ec", run.script], {
        cwd: run.workspace,
        env,
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
      });
      return started(child, () => {
        try {
          process.kill(-(child.pid as number), "SIGKILL");
        } catch {
          // Already gone.
        }
      });
    },
  };
}

/** "/host:/container[:ro|:rw]" as a `--mount` value. */
export function mountArgument(mount: string): string {
  const [source, target, mode] = mount.split(":");
  return `type=bind,source=${source},target=${target}${mode === "ro" ? ",readonly" : ""}`;
}

export const containerName = (runId: string) => `agentpools-run-${runId}`;

/** The run's variables for `docker run --env-file`: the launcher's own file (0600), beside the workspace, not in it. */
const envFile = (run: PreparedRun) => path.join(path.dirname(run.workspace), "env");

/**
 * The `docker run` of one run (pure). Variables come from a file (`--env-file`), so none shows in
 * the process list and none is in the client's own environment, where the client, its Go
 * runtime or libc would read it (OTEL_EXPORTER_OTLP_*, ZONEINFO, RES_OPTIONS...).
 */
export function dockerRunArgs(
  settings: Pick<LauncherSettings, "dockerConfigDir" | "workerNetwork" | "workerRuntime" | "extraMounts">,
  run: PreparedRun,
): string[] {
  return [
    ...(settings.dockerConfigDir ? ["--config", settings.dockerConfigDir] : []),
    "run",
    "--rm",
    "--name",
    containerName(run.id),
    "--label",
    `agentpools.run=${run.id}`,
    "--network",
    settings.workerNetwork,
    ...(settings.workerRuntime ? ["--runtime", settings.workerRuntime] : []),
    "--security-opt",
    "no-new-privileges",
    "--init",
    "--mount",
    mountArgument(`${run.workspace}:${CONTAINER_WORKSPACE}`),
    "--workdir",
    CONTAINER_WORKSPACE,
    ...settings.extraMounts.flatMap((mount) => ["--mount", mountArgument(mount)]),
    "--env-file",
    envFile(run),
    "--entrypoint",
    "/bin/sh",
    // Options end here: whatever the image is, docker reads it as the image.
    "--",
    run.image,
    "-ec",
    run.script,
  ];
}

/**
 * What the Docker client itself needs from the launcher's environment. On EC2 the engine is the instance's own, and the
 * unit the component writes sets none of the DOCKER_ variables: PATH and HOME alone.
 */
const DOCKER_CLIENT_ENV = [
  "PATH",
  "HOME",
  ...(BUILT_FOR.platform === "ec2" ? [] : ["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"]),
];

/** Each run a sibling container started through the Docker CLI (`docker` may name another binary, for tests). */
export function dockerExecutor(
  settings: LauncherSettings,
  launcherEnv: Record<string, string | undefined>,
  docker = "docker",
  log?: Logger,
): RunExecutor {
  const cli = [docker, ...(settings.dockerConfigDir ? ["--config", settings.dockerConfigDir] : [])];
  const clientEnv = Object.fromEntries(
    DOCKER_CLIENT_ENV.flatMap((name) => (launcherEnv[name] ? [[name, launcherEnv[name] as string]] : [])),
  );
  const gone = (name: string, what: string) =>
    containerGone(cli, name, clientEnv, 30_000, () => log?.error(`${what} not yet gone`, { container: name }));
  // The containers of a launcher that died mid-run (the engine keeps them running, with their runs' secrets) are gone
  // before this one's first run starts. One launcher per engine: an instance's, a pod's.
  const ready = new Promise<unknown>((done) => {
    let ids = "";
    const ps = spawn(cli[0], [...cli.slice(1), "ps", "-aq", "--filter", "label=agentpools.run"], {
      env: clientEnv,
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 30_000,
    });
    ps.stdout.on("data", (chunk) => void (ids += chunk));
    ps.on("error", done).on("close", () =>
      Promise.all(
        ids
          .split(/\s+/)
          .filter(Boolean)
          .map((id) => gone(id, "an earlier launcher's container")),
      ).then(done),
    );
  });
  return {
    ready,
    describe: `docker (network ${settings.workerNetwork}${settings.workerRuntime ? `, runtime ${settings.workerRuntime}` : ""})`,
    workspaceInRun: () => CONTAINER_WORKSPACE,
    start(run) {
      // The file has a line per variable and no quoting: a value of several lines (a key) goes by name (a line of its
      // name alone), its value through the client's environment, which runRefusal keeps to names the client ignores.
      const byName: Record<string, string> = {};
      const lines = Object.entries(run.env).map(([name, value]) =>
        /[\r\n]/.test(value) || value.length > 16384 ? ((byName[name] = value), name) : `${name}=${value}`,
      );
      writeFileSync(envFile(run), lines.join("\n"), { mode: 0o600, flag: "wx" });
      const child = spawn(docker, dockerRunArgs(settings, run), {
        env: { ...byName, ...clientEnv },
        stdio: ["ignore", "pipe", "pipe"],
      });
      // Read by the client as it starts; removed once it is done.
      child.once("close", () => rmSync(envFile(run), { force: true }));
      const ended = new Promise((done) => child.once("exit", done).once("error", done));
      // A killed client leaves its container running, with the run's secrets, free to write the workspace: a killed run
      // ends (and the next may start) only once the engine says its container is gone. Asked once the client is: a
      // container the engine creates after that never starts (starting it is the client's next call).
      return started(child, () => {
        child.kill("SIGKILL");
        return ended.then(() => gone(containerName(run.id), "a killed run's container"));
      });
    },
  };
}
