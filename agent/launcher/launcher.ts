import { randomUUID, sign, type KeyObject } from "node:crypto";
import { chmodSync, createReadStream, createWriteStream, existsSync, lstatSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { durationMs } from "../config/duration";
import type { LauncherSettings } from "../config/launcher";
import type { RunPolicy } from "../config/run-policy";
import { runPolicyJsonSchema } from "../config/settings-schema";
import { interruptibleSleep } from "../runtime/http";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { gatewayRequest } from "../tunnel/dial";
import { decodeToken, type PoolToken } from "../../protocol/token";
import { parseMessage, type WebSocket } from "../../protocol/websocket";
import { WebSocketLink } from "../tunnel/websocket-link";
import { dockerExecutor, processExecutor, STATE_FILE, type RunExecutor, type StartedRun } from "./executor";
import { runOutput } from "./output";
import { loadPolicy, policyRefusal, runRefusal } from "./policy";
import { removeTree } from "../../lib/remove-tree";
import { PROOF_HEADER, proofPayload, statePath, WORKER_CONNECT_PATH, type FromWorker, type RunOutcome, type RunSpec, type ToWorker } from "../../protocol/worker";
import { certificateKey, keyMatchesCertificate, openBuffer, openStream, privateKeyFromBase64, sealStream } from "../../protocol/seal";

/** Log lines kept per run for resending after a reconnect; beyond it the log says it was cut. */
const MAX_LOG_LINES = 200_000;
/** How long stopping waits for the gateway to take the last result, even past the drain deadline. */
const DELIVERY_GRACE_MS = 5_000;

/** A run the gateway has not acknowledged the end of: its log, and its outcome once known. */
interface Unfinished {
  id: string;
  dir: string;
  lines: string[];
  outcome?: RunOutcome;
  stateFile?: string;
  delivering?: boolean;
  retry?: NodeJS.Timeout;
}

/** A result that could not be delivered is tried again this often while connected (and on every reconnect). */
const DELIVERY_RETRY_MS = 5_000;

/** What the launcher checked at start-up. */
interface LauncherContext {
  settings: LauncherSettings;
  token: PoolToken & { certificate: string };
  privateKey: KeyObject;
  publicKey: KeyObject;
  policy?: RunPolicy;
  executor: RunExecutor;
  /** Variables passed from the launcher's environment (whitelisted and masked). */
  passed: Record<string, string>;
  log: Logger;
}

/** Check everything the launcher can check before it connects; each problem is a clear error. */
export function prepareLauncher(settings: LauncherSettings, env: Record<string, string | undefined>, log: Logger, docker?: string): LauncherContext {
  const token = decodeToken(settings.token);
  if (!token.certificate) throw new Error("SPACELIFT_TOKEN carries no certificate: it is not a worker pool's token");
  const privateKey = privateKeyFromBase64(settings.poolPrivateKey);
  if (!keyMatchesCertificate(privateKey, token.certificate)) {
    throw new Error("SPACELIFT_POOL_PRIVATE_KEY does not belong to the certificate in SPACELIFT_TOKEN: give the key the pool's CSR was made with");
  }
  const policy = settings.runInitializationPolicyFile ? loadPolicy(settings.runInitializationPolicyFile, runPolicyJsonSchema()) : undefined;
  for (const mount of settings.extraMounts) {
    if (!existsSync(mount.split(":")[0])) throw new Error(`SPACELIFT_WORKER_EXTRA_MOUNTS: ${mount.split(":")[0]} does not exist on this host (in "${mount}")`);
  }
  if (settings.executor === "process" && settings.extraMounts.length > 0) log.warn("extra mounts are for containers: the process executor ignores them");
  mkdirSync(settings.workDirectory, { recursive: true, mode: 0o700 });

  const passed: Record<string, string> = {};
  for (const name of [...settings.whitelistedEnvVars, ...settings.maskedEnvVars]) {
    if (env[name] === undefined) log.warn("a variable to pass to runs is not set", { variable: name });
    else passed[name] = env[name] as string;
  }
  for (const [name, value] of Object.entries(env)) if (name.startsWith("SPACELIFT_PRIVATEVCS_MAPPING_") && value) passed[name] = value;
  for (const name of settings.maskedEnvVars) if (env[name]) log.redact(env[name] as string);

  const executor = settings.executor === "docker" ? dockerExecutor(settings, env, docker) : processExecutor(env.PATH);
  return { settings, token: token as PoolToken & { certificate: string }, privateKey, publicKey: certificateKey(token.certificate), policy, executor, passed, log };
}

/**
 * The state file a run left, if it is a regular file of the workspace's own: not a symbolic
 * link (nor its directory one), a FIFO, or a hard link to a file elsewhere. The run has ended:
 * nothing of it can swap the file once checked. false when there is one, but not such a file.
 */
function stateFileOf(workspace: string): string | false | undefined {
  const file = path.join(workspace, STATE_FILE);
  if (!existsSync(file)) return undefined;
  return lstatSync(path.dirname(file)).isDirectory() && lstatSync(file).isFile() && lstatSync(file).nlink === 1 && file;
}

/** The headers that authenticate the launcher: the pool's secret, and a fresh signature by the pool's key. */
function credentials(context: LauncherContext, worker: string): Record<string, string> {
  const { token, privateKey } = context;
  const timestamp = String(Date.now());
  const signature = sign("sha256", proofPayload(token.pool, timestamp), privateKey).toString("base64url");
  return { authorization: `Bearer ${token.secret}`, "x-agentpools-pool": token.pool, "x-agentpools-worker": worker, [PROOF_HEADER]: `${timestamp}.${signature}` };
}

/**
 * The launcher: takes one run at a time from the gateway, runs it with the executor, streams
 * its masked log back, seals the state it leaves, and keeps every result until the gateway
 * has acknowledged it, so a gateway restart loses nothing.
 */
export class Launcher extends WebSocketLink {
  readonly worker = randomUUID();
  private current?: { id: string; process?: StartedRun; stop(reason: string): void; done: Promise<void> };
  private readonly unfinished = new Map<string, Unfinished>();
  private stopping = false;

  constructor(private readonly context: LauncherContext) {
    const { settings, token, log } = context;
    super({
      gateway: new URL(token.gateway),
      path: WORKER_CONNECT_PATH,
      role: "launcher",
      credentials: () => credentials(context, this.worker),
      settings,
      log,
    });
  }

  private send(message: FromWorker): void {
    if (this.socket?.open) this.socket.send(JSON.stringify(message));
  }

  protected opened(socket: WebSocket): void {
    this.send({ type: "hello", worker: this.worker, runs: [...this.unfinished.keys()] });
    if (this.stopping) this.send({ type: "draining" });
    this.context.log.info("Connected to the server", { gateway: this.link.gateway.origin, pool: this.context.token.pool, executor: this.context.executor.describe });
    socket.on("message", (text: string) => {
      const message = parseMessage<ToWorker>(text);
      if (!message) return;
      if (message.type === "run") void this.take(message.run ?? {});
      else if (message.type === "resume") this.resume(message.id, message.lines, message.known);
      else if (message.type === "ack") this.acknowledged(message.id);
    });
  }

  /** After a reconnect: resend the log lines the gateway lacks, and the outcome if there is one. */
  private resume(id: string, lines: number, known: boolean): void {
    const run = this.unfinished.get(id);
    if (!run) return;
    if (!known) {
      this.context.log.warn("the gateway no longer knows a run; its result is dropped", { run: id });
      return this.acknowledged(id);
    }
    if (lines < run.lines.length) this.send({ type: "log", id, from: lines, lines: run.lines.slice(lines) });
    if (run.outcome) void this.deliver(run);
  }

  private acknowledged(id: string): void {
    const run = this.unfinished.get(id);
    if (!run?.outcome) return;
    this.unfinished.delete(id);
    clearTimeout(run.retry);
    // Removed whatever the run did to its permissions; what cannot be is reported, never thrown.
    const failure = removeTree(run.dir);
    if (failure) this.context.log.warn("could not remove what a run left", { dir: run.dir, error: failure });
  }

  private authHeaders(): Record<string, string> {
    return credentials(this.context, this.worker);
  }

  private async take(spec: RunSpec): Promise<void> {
    const { settings, log } = this.context;
    if (typeof spec.id !== "string") return;
    if (this.current || this.stopping) return this.send({ type: "refused", id: spec.id, reason: this.stopping ? "the worker is draining" : "the worker is busy", retry: true });
    // Where a run's files go is the launcher's choice, never a name the gateway could predict.
    const run: Unfinished = { id: spec.id, dir: "", lines: [] };
    let stopReason: string | undefined;
    let resolveDone!: () => void;
    const current = { id: spec.id, process: undefined as StartedRun | undefined, done: new Promise<void>((r) => (resolveDone = r)), stop: (reason: string) => ((stopReason ??= reason), current.process?.kill()) };
    this.current = current;
    try {
      const environment = spec.sealedEnvironment ? await this.openEnvironment(spec.sealedEnvironment) : {};
      const unsafe = runRefusal(spec, environment);
      const refusal = unsafe ?? (this.context.policy && policyRefusal(this.context.policy, { image: spec.image, commands: spec.commands, environment, timeoutSeconds: spec.timeoutSeconds }));
      if (refusal) {
        const reason = unsafe ? `refused: ${unsafe}` : `refused by the run initialization policy: ${refusal}`;
        log.info("run refused", { run: spec.id, reason });
        this.current = undefined;
        resolveDone();
        return this.send({ type: "refused", id: spec.id, reason });
      }
      this.send({ type: "accepted", id: spec.id });
      run.dir = mkdtempSync(path.join(settings.workDirectory, "run-"));
      this.unfinished.set(spec.id, run);
      const outcome = await this.execute(spec, environment, run, current, () => stopReason);
      run.outcome = outcome;
    } catch (error) {
      run.outcome = { status: "failed", reason: (error as Error).message, state: false };
      run.dir ||= mkdtempSync(path.join(settings.workDirectory, "run-"));
      this.unfinished.set(spec.id, run);
    }
    log.info("run finished", { run: spec.id, status: run.outcome.status, exitCode: run.outcome.exitCode, reason: run.outcome.reason });
    this.current = undefined;
    resolveDone();
    await this.deliver(run);
  }

  private async openEnvironment(sealed: string): Promise<Record<string, string>> {
    try {
      return JSON.parse((await openBuffer(this.context.privateKey, Buffer.from(sealed, "base64"))).toString("utf8"));
    } catch (error) {
      throw new Error(`the run's environment cannot be opened: ${(error as Error).message}`);
    }
  }

  private async execute(spec: RunSpec, environment: Record<string, string>, run: Unfinished, current: { process?: StartedRun; stop(reason: string): void }, stopReason: () => string | undefined): Promise<RunOutcome> {
    const { settings, executor, passed } = this.context;
    const workspace = path.join(run.dir, "workspace");
    mkdirSync(path.join(workspace, path.dirname(STATE_FILE)), { recursive: true, mode: 0o700 });
    // The container's user may not be ours: the workspace is open, its parent (ours, 0700) is not.
    if (settings.executor === "docker") for (const dir of [workspace, path.join(workspace, path.dirname(STATE_FILE))]) chmodSync(dir, 0o777);
    const stateFile = path.join(workspace, STATE_FILE);
    if (spec.stateFrom) await this.downloadState(spec.stateFrom, stateFile);

    const masked = new Set(settings.maskedEnvVars);
    const secrets = [...settings.maskedEnvVars.map((name) => passed[name] ?? ""), ...Object.entries(environment).filter(([name]) => masked.has(name)).map(([, value]) => value)];
    const append = (lines: string[]) => {
      const from = run.lines.length;
      if (from >= MAX_LOG_LINES) return;
      const kept = lines.slice(0, MAX_LOG_LINES - from);
      if (from + lines.length > MAX_LOG_LINES) kept.push(`[agentpools: the log is cut at ${MAX_LOG_LINES} lines]`);
      run.lines.push(...kept);
      this.send({ type: "log", id: run.id, from, lines: kept });
    };
    // Each stream on its own: a value split between two reads of one stream is still whole to it.
    const outputs = { stdout: runOutput(secrets, append), stderr: runOutput(secrets, append) };

    const env = { ...passed, ...environment, AGENTPOOLS_RUN_ID: spec.id, AGENTPOOLS_STATE_FILE: `${executor.workspaceInRun(workspace)}/${STATE_FILE}` };
    const started = executor.start({ id: spec.id, image: spec.image, script: spec.commands.join("\n"), env, workspace });
    current.process = started;
    // Stopped while its state was still downloading: it does not get to run.
    if (stopReason()) started.kill();

    const logsTimeout = durationMs(settings.logsTimeout);
    const runTimeoutMs = Math.min(durationMs(settings.runTimeout), (spec.timeoutSeconds ?? Infinity) * 1000);
    let timedOut: string | undefined;
    const kill = (reason: string) => {
      timedOut ??= reason;
      started.kill();
    };
    let quiet = setTimeout(() => kill(`no log output for ${settings.logsTimeout}`), logsTimeout);
    const overall = setTimeout(() => kill(`the run took longer than ${Math.round(runTimeoutMs / 1000)}s`), runTimeoutMs);
    started.onOutput((chunk, stream) => {
      clearTimeout(quiet);
      quiet = setTimeout(() => kill(`no log output for ${settings.logsTimeout}`), logsTimeout);
      outputs[stream].write(chunk);
    });
    const exit = await started.exited;
    clearTimeout(quiet);
    clearTimeout(overall);
    outputs.stdout.end();
    outputs.stderr.end();

    // The state file is the run's to write, not to point elsewhere: only a regular file of the
    // workspace's own is kept.
    const kept = stateFileOf(workspace);
    if (kept === false) append(["[agentpools: state not kept: not a regular file]"]);
    run.stateFile = kept || undefined;
    const state = Boolean(kept);
    if (timedOut) {
      append([`[agentpools: killed: ${timedOut}]`]);
      return { status: "timed_out", reason: timedOut, exitCode: exit.code ?? undefined, state };
    }
    const stopped = stopReason();
    if (stopped) {
      append([`[agentpools: killed: ${stopped}]`]);
      return { status: "failed", reason: stopped, state };
    }
    if (exit.code === 0) return { status: "succeeded", exitCode: 0, state };
    return { status: "failed", exitCode: exit.code ?? undefined, reason: exit.code === null ? `killed by ${exit.signal}` : `exited with code ${exit.code}`, state };
  }

  private async downloadState(from: string, file: string): Promise<void> {
    const response = await gatewayRequest(new URL(this.context.token.gateway), { method: "GET", path: statePath(this.context.token.pool, from), headers: this.authHeaders() }, this.context.settings);
    if (response.statusCode !== 200) {
      response.resume();
      throw new Error(`the state of run ${from} is not available: the gateway answered ${response.statusCode}`);
    }
    try {
      await pipeline(response, openStream(this.context.privateKey), createWriteStream(file, { mode: 0o600, flags: "wx" }));
    } catch (error) {
      rmSync(file, { force: true });
      throw new Error(`the state of run ${from} cannot be opened: ${(error as Error).message}`);
    }
  }

  /** Seal and upload the run's state if it left one, then report the outcome; retried on every reconnect. */
  private async deliver(run: Unfinished): Promise<void> {
    if (run.delivering || !run.outcome || !this.socket?.open) return;
    run.delivering = true;
    try {
      if (run.stateFile && existsSync(run.stateFile)) {
        const response = await gatewayRequest(
          new URL(this.context.token.gateway),
          { method: "PUT", path: statePath(this.context.token.pool, run.id), headers: { ...this.authHeaders(), "content-type": "application/octet-stream", "transfer-encoding": "chunked" }, body: createReadStream(run.stateFile).pipe(sealStream(this.context.publicKey)) },
          this.context.settings,
        );
        response.resume();
        if (response.statusCode === 413) {
          // Too large for this gateway, for good: report the run without it rather than never.
          run.outcome = { ...run.outcome, state: false, reason: [run.outcome.reason, "its state was too large for the gateway to store"].filter(Boolean).join("; ") };
        } else if (response.statusCode !== 204) throw new Error(`the gateway refused the run's state with ${response.statusCode}`);
        rmSync(run.stateFile, { force: true });
        run.stateFile = undefined;
      }
      this.send({ type: "finished", id: run.id, ...run.outcome });
    } catch (error) {
      this.context.log.warn("could not deliver a run's result; trying again", { run: run.id, error: (error as Error).message });
      clearTimeout(run.retry);
      run.retry = setTimeout(() => void this.deliver(run), DELIVERY_RETRY_MS).unref();
    } finally {
      run.delivering = false;
    }
  }

  /** The gateway has taken every result, or the deadline has passed. */
  private async settle(deadline: number): Promise<void> {
    while (this.unfinished.size > 0 && Date.now() < deadline) await interruptibleSleep(50).done;
  }

  /** Take no new runs; let the current one finish until the deadline, then stop it; deliver; close. */
  async stop(deadline: number): Promise<void> {
    this.stopping = true;
    this.send({ type: "draining" });
    const current = this.current;
    if (current) {
      this.context.log.info("waiting for the current run before stopping", { run: current.id, secondsLeft: Math.round((deadline - Date.now()) / 1000) });
      const timer = setTimeout(() => current.stop("the launcher was stopped before the run finished"), Math.max(0, deadline - Date.now()));
      await current.done;
      clearTimeout(timer);
    }
    await this.settle(Math.max(deadline, Date.now() + DELIVERY_GRACE_MS));
    if (this.unfinished.size > 0) this.context.log.warn("stopping with run results the gateway has not taken", { runs: [...this.unfinished.keys()] });
    await this.drain(Date.now() + 1000);
  }

  /** The WebSocket closes at once: a launcher's drain is about its run, handled in stop(). */
  protected async closeGracefully(): Promise<void> {
    this.socket?.close(1001);
  }
}

/** The `launcher` role; `docker` names the Docker CLI (tests give a stand-in). */
export function launcherRole(options: { docker?: string } = {}): Role<LauncherSettings> {
  return {
    name: "launcher",
    start(settings, { log, env }): RunningAgent {
      const launcher = new Launcher(prepareLauncher(settings, env ?? process.env, log, options.docker));
      return { ready: launcher.ready, stopped: launcher.stopped, connected: () => launcher.connected, drain: (deadline) => launcher.stop(deadline) };
    },
  };
}
