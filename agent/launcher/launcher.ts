import { spawnSync } from "node:child_process";
import { randomUUID, sign, type KeyObject } from "node:crypto";
import {
  chmodSync,
  closeSync,
  constants,
  createReadStream,
  createWriteStream,
  existsSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  rmSync,
} from "node:fs";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { durationMs } from "../config/duration";
import { BUILT_FOR } from "../config/built-for";
import type { LauncherSettings } from "../config/launcher";
import type { RunPolicy } from "../config/run-policy";
import { runPolicyJsonSchema } from "../config/settings-schema";
import { sleep } from "../runtime/http";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { fetchGateway, gatewayRequest, type GatewayRequest } from "../tunnel/dial";
import { decodeToken, type PoolToken } from "../../protocol/token";
import { parseMessage, WEBSOCKET_MAX_MESSAGE } from "../../protocol/link";
import type { LinkSocket } from "../tunnel/builtin-websocket";
import { WebSocketLink } from "../tunnel/websocket-link";
import { dockerExecutor, processExecutor, STATE_FILE, type RunExecutor, type StartedRun } from "./executor";
import { MAX_LINE, runOutput } from "./output";
import { loadPolicy, policyRefusal, runRefusal } from "./policy";
import {
  FENCE_HEADER,
  LEASE_TERM_MS,
  MAX_LOG_BYTES,
  MAX_LOG_LINES,
  PROOF_HEADER,
  proofPayload,
  statePath,
  WORKER_CONNECT_PATH,
  WORKER_HEADER,
} from "../../protocol/worker";
import type { FromWorker, HeldLease, Lease, RunOutcome, RunSpec, ToWorker } from "../../protocol/worker";
import { POOL_HEADER } from "../../protocol/link";
import { open, openBuffer, privateKeyFromBase64, publicKeyPairedWith, seal } from "../../protocol/seal";

/** Results a launcher holds for the gateway to take, at most: past them it takes no run (a gateway that never takes one). */
const MAX_HELD = 4;

/** How long stopping waits for the gateway to take the last result, even past the drain deadline. */
const DELIVERY_GRACE_MS = 5_000;

/**
 * Lines of a log sent again in one message: at half the WebSocket cap whatever they hold (a longer message would close
 * the connection, and the gateway would ask again), each line at most MAX_LINE characters (and a short mark), each
 * character at most six bytes of JSON (a control character's escape).
 */
const RESEND_LINES = Math.floor(WEBSOCKET_MAX_MESSAGE / 2 / ((MAX_LINE + 64) * 6));

/**
 * A run whose lease the launcher holds, until the gateway acknowledges its end: accepted
 * (waiting for the gateway's start, `go`), running, or finished (`outcome`). Its log is kept
 * for resending.
 */
interface Held extends HeldLease {
  dir: string;
  lines: string[];
  outcome?: RunOutcome;
  stateFile?: string;
  delivering?: boolean;
  /** Settles its wait for "start": true to run, false when revoked or stopped first. */
  go?: (start: boolean) => void;
  revoked?: boolean;
  /** While it is the current run: its process, why it was stopped, and when it is over. */
  process?: StartedRun;
  stopped?: string;
  done?: Promise<void>;
}

/**
 * Removes a run's directory, whatever the run left in it; the error if something stays. rmSync follows no link. What a
 * root container left (a 0700 directory of root's, a sticky one) takes CAP_DAC_OVERRIDE and CAP_FOWNER: EC2's unit and
 * the pod give them. Elsewhere, a run of the process executor that took the permissions off its directories (chmod
 * 0500) gets them back from their owner, the launcher (chmod -R follows no link either).
 */
function removeRun(dir: string): string | undefined {
  const remove = () => rmSync(dir, { recursive: true, force: true });
  try {
    remove();
  } catch {
    if (BUILT_FOR.platform !== "ec2") spawnSync("chmod", ["-R", "u+rwx", dir]);
    // rmSync holds a descriptor per level: a tree deeper than the open-file limit defeats it, not GNU rm (no link
    // followed either).
    spawnSync("rm", ["-rf", "--", dir]);
    try {
      remove();
    } catch (error) {
      return String(error);
    }
  }
  return undefined;
}

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
  /** Settles once the instance is protected from scale-in as busy() says (the runtime's, on AWS). */
  busyChanged?: () => Promise<void>;
}

/** Check everything the launcher can check before it connects; each problem is a clear error. */
export function prepareLauncher(
  settings: LauncherSettings,
  env: Record<string, string | undefined>,
  log: Logger,
  docker?: string,
): LauncherContext {
  const token = decodeToken(settings.token);
  if (!token.certificate) throw new Error("SPACELIFT_TOKEN carries no certificate: it is not a worker pool's token");
  const privateKey = privateKeyFromBase64(settings.poolPrivateKey);
  const publicKey = publicKeyPairedWith(privateKey, token.certificate);
  if (!publicKey) {
    throw new Error(
      "SPACELIFT_POOL_PRIVATE_KEY does not belong to the certificate in SPACELIFT_TOKEN: give the key the pool's CSR was made with",
    );
  }
  const policy = settings.runInitializationPolicyFile
    ? loadPolicy(settings.runInitializationPolicyFile, runPolicyJsonSchema())
    : undefined;
  for (const mount of settings.extraMounts) {
    if (!existsSync(mount.split(":")[0]))
      throw new Error(
        `SPACELIFT_WORKER_EXTRA_MOUNTS: ${mount.split(":")[0]} does not exist on this host (in "${mount}")`,
      );
  }
  if (BUILT_FOR.executor !== "docker" && settings.executor === "process" && settings.extraMounts.length > 0)
    log.warn("extra mounts apply to containers; the process executor runs on this host's file system");
  mkdirSync(settings.workDirectory, { recursive: true, mode: 0o700 });
  // What an earlier launcher left (killed mid-run, or a run's files it could not remove) goes first, or no run comes.
  for (const name of readdirSync(settings.workDirectory)) {
    const error = name.startsWith("run-") && removeRun(path.join(settings.workDirectory, name));
    if (error) throw new Error(`${settings.workDirectory}: a run's files cannot be removed: ${error}`);
  }

  const passed: Record<string, string> = {};
  for (const name of [...settings.whitelistedEnvVars, ...settings.maskedEnvVars]) {
    if (env[name] === undefined) log.warn("a variable to pass to runs is not set", { variable: name });
    else passed[name] = env[name] as string;
  }
  // The VCS agent mapping from the settings, wherever they came from (the variables, or an EC2 instance's file).
  settings.vcsAgents.forEach(({ name, baseEndpoint }, index) => {
    passed[`SPACELIFT_PRIVATEVCS_MAPPING_NAME_${index}`] = name;
    passed[`SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_${index}`] = baseEndpoint;
  });
  for (const name of settings.maskedEnvVars) if (env[name]) log.redact(env[name] as string);

  const executor =
    (BUILT_FOR.executor ?? settings.executor) === "docker"
      ? dockerExecutor(settings, env, docker, log)
      : processExecutor(env.PATH);
  return {
    settings,
    token: token as PoolToken & { certificate: string },
    privateKey,
    publicKey,
    policy,
    executor,
    passed,
    log,
  };
}

/**
 * Keeps the state file a run left, if it is a regular file of the workspace's own (not a symbolic link, nor reached
 * through one; not a FIFO, nor a hard link to a file elsewhere), as a copy at `into`, which no run sees. Taken once,
 * through the descriptor it was checked on: a container the engine has not yet stopped may still change the
 * workspace, never what is uploaded. At most `limit` bytes are copied: a larger file (or one that grows meanwhile) is
 * not kept. false when there is a state file, but not such a file; undefined when none.
 */
export async function keepState(workspace: string, into: string, limit: number): Promise<boolean | undefined> {
  const file = path.join(realpathSync(workspace), STATE_FILE);
  let fd: number;
  try {
    // Read-only, no link followed at the last step (nor opened: a device, say), a FIFO without waiting for a writer.
    fd = openSync(file, constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ENOENT" ? undefined : false;
  }
  const stat = fstatSync(fd);
  try {
    // Where the descriptor really is (/proc): reached through a link, file or folder, it is somewhere else.
    if (!stat.isFile() || stat.nlink !== 1 || readlinkSync(`/proc/self/fd/${fd}`) !== file || stat.size > limit)
      return false;
    const copy = createWriteStream(into, { flags: "wx", mode: 0o600 });
    // One byte past the limit at most, to know it was passed.
    await pipeline(createReadStream("", { fd, autoClose: false, end: limit }), copy);
    if (copy.bytesWritten <= limit) return true;
  } catch {
    // Not copied: not kept.
  } finally {
    closeSync(fd);
  }
  // A copy that failed, or that passed the limit, goes.
  rmSync(into, { force: true });
  return false;
}

/** The headers that authenticate the launcher: the pool's secret, and a fresh signature by the pool's key. */
function credentials(context: LauncherContext, worker: string): Record<string, string> {
  const { token, privateKey } = context;
  const timestamp = String(Date.now());
  const signature = sign("sha256", proofPayload(token.pool, timestamp), privateKey).toString("base64url");
  return {
    authorization: `Bearer ${token.secret}`,
    [POOL_HEADER]: token.pool,
    [WORKER_HEADER]: worker,
    [PROOF_HEADER]: `${timestamp}.${signature}`,
  };
}

/**
 * The launcher: takes one run at a time from the gateway, under a lease it renews, starts it
 * only on the gateway's word, runs it with the executor, streams its masked log back, seals
 * the state it leaves, and keeps every result until the gateway has acknowledged it, so a
 * gateway restart loses nothing and runs nothing twice.
 */
export class Launcher extends WebSocketLink {
  readonly worker = randomUUID();
  private current?: Held;
  private readonly held = new Map<string, Held>();
  private stopping = false;
  private tick?: NodeJS.Timeout;
  /** Until when what a gateway can make happen at will (a refusal, a failed delivery) is not logged. */
  private quietUntil = 0;

  /**
   * True once a second at most: a gateway that sends runs to refuse, or fails every delivery under a lease term of
   * 100 ms, would otherwise fill the instance's disk and the pool's log group with the lines it makes.
   */
  private unhushed(): boolean {
    const now = Date.now();
    return now >= this.quietUntil && !!(this.quietUntil = now + 1000);
  }
  /** The gateway's lease term, from its latest start (an offer waits a round trip for it). */
  private leaseTermMs = 60_000;

  /** A run is in progress, or its result not yet taken by the gateway (the pool's busy metric, and scale-in protection). */
  get busy(): boolean {
    return !!this.current || this.held.size > 0;
  }

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

  /**
   * A request for a run's state (GET, or PUT with a body), signed and under the run's fence. Off EC2 through the
   * settings' proxy, as the link (on EC2, Node's).
   */
  private stateRequest(run: string, fence: number, request: Omit<GatewayRequest, "path" | "headers">, type?: string) {
    const { settings, token } = this.context;
    const { gateway } = this.link;
    const signed = {
      ...request,
      path: statePath(token.pool, run),
      // (An upload is sent chunked: no length is given.)
      headers: {
        ...credentials(this.context, this.worker),
        [FENCE_HEADER]: String(fence),
        ...(type && { "content-type": type }),
      },
    };
    return BUILT_FOR.platform === "ec2"
      ? fetchGateway(gateway, signed)
      : gatewayRequest(gateway, signed, { proxy: settings.httpsProxy, noProxy: settings.noProxy });
  }

  private send(message: FromWorker): void {
    // A refusal, while a message's worth waits to leave, is dropped: a gateway that sends runs to refuse and reads
    // nothing fills no memory (the run's lease lapses; the gateway offers it again).
    if (this.socket?.open && (message.type !== "refused" || this.socket.buffered() < WEBSOCKET_MAX_MESSAGE))
      this.socket.send(JSON.stringify(message));
  }

  protected opened(socket: LinkSocket): void {
    this.send({ type: "hello", leases: this.leases() });
    if (this.stopping) this.send({ type: "draining" });
    this.context.log.info("Connected to the server", {
      gateway: this.link.gateway.origin,
      pool: this.context.token.pool,
      executor: this.context.executor.describe,
    });
    socket.on("message", (text: string) => {
      const message = parseMessage<ToWorker>(text);
      if (message?.type === "run") return void this.take(message.run ?? {}, message.lease ?? {});
      const run = message && this.held.get(message.id);
      if (!run) return;
      if (message.type === "start") {
        if (message.fence !== run.fence) return;
        // The gateway just extended the lease, by its own term (a restarted gateway's may differ), if it is one.
        const term = message.termMs;
        if (typeof term === "number" && term >= LEASE_TERM_MS.min && term <= LEASE_TERM_MS.max) this.leaseTermMs = term;
        clearTimeout(this.tick);
        this.tick = undefined;
        this.renew();
        run.go?.(true);
        // It lacks lines from this index (a reconnect, or lines it could not store): resend them, and the outcome.
        // (An index, or nothing: a gateway's -1e15 would be a loop without end, a string a concatenation. Nothing while
        // a message's worth waits to leave: a gateway that asks again and again but reads nothing fills no memory.)
        const { lines } = message;
        for (
          let from =
            Number.isSafeInteger(lines) && lines >= 0 && socket.buffered() < WEBSOCKET_MAX_MESSAGE ? lines : Infinity;
          from < run.lines.length;
          from += RESEND_LINES
        )
          this.send({
            type: "log",
            id: run.id,
            fence: run.fence,
            from,
            lines: run.lines.slice(from, from + RESEND_LINES),
          });
        if (run.outcome) void this.deliver(run);
      } else if (message.type === "revoked") this.revoked(run, message.reason);
      else if (run.outcome) this.forget(run);
    });
  }

  /** The lease is not ours any more: a run waiting to start never starts, a running one stops; no result is sent. */
  private revoked(run: Held, reason: string): void {
    this.context.log.warn("lease revoked", { run: run.id, reason });
    run.revoked = true;
    this.halt(run, reason);
    if (run.outcome) this.forget(run);
  }

  /** Stop a run, or keep it from starting: its outcome says why. */
  private halt(run: Held, reason: string): void {
    run.stopped ??= reason;
    run.go?.(false);
    run.process?.kill();
  }

  private leases(): HeldLease[] {
    return [...this.held.values()].map(({ id, fence }) => ({ id, fence }));
  }

  private forget(run: Held): void {
    this.held.delete(run.id);
    void this.context.busyChanged?.();
    const error = removeRun(run.dir);
    if (!error) return;
    // Never thrown into the launcher; but no run shares a disk another run filled: this launcher ends once its current
    // run has, and a new one (a restarted unit, a restarted container) starts only on a disk it could clear.
    this.context.log.error("a run's files cannot be removed: no more runs on this disk", { error });
    if (!this.stopping) void this.stop(Date.now() + durationMs(this.context.settings.runTimeout));
  }

  /** While it holds leases: renew them every third of their term, and send results not yet acknowledged again. */
  private renew(): void {
    if (this.tick || this.held.size === 0) return;
    this.tick = setTimeout(() => {
      this.tick = undefined;
      this.send({ type: "renew", leases: this.leases() });
      for (const run of this.held.values()) void this.deliver(run);
      this.renew();
    }, this.leaseTermMs / 3).unref();
  }

  private async take(spec: RunSpec, { fence }: Lease): Promise<void> {
    const { settings, log } = this.context;
    const { id } = spec;
    // (A fence is echoed in every message about the run: a gateway's nested one would throw out of a renewal.)
    if (typeof id !== "string" || !Number.isSafeInteger(fence)) return;
    if (this.current || this.stopping || this.held.size >= MAX_HELD) {
      return this.send({
        type: "refused",
        id,
        fence,
        reason: this.stopping ? "the worker is draining" : "the worker is busy",
        retry: true,
      });
    }
    // Sent again under an ID it holds, that run is the gateway's no more: its files go (a gateway doing so on purpose
    // would fill the disk with them).
    const earlier = this.held.get(id);
    if (earlier) this.forget(earlier);
    const run: Held = {
      id,
      fence,
      // The launcher's choice, never a name the gateway could predict.
      dir: mkdtempSync(path.join(settings.workDirectory, "run-")),
      lines: [],
    };
    let end!: () => void;
    run.done = new Promise(
      (resolve) => (end = () => ((this.current = undefined), resolve(), void this.context.busyChanged?.())),
    );
    this.current = run;
    try {
      let environment: Record<string, string> = {};
      try {
        if (spec.sealedEnvironment) environment = await this.openEnvironment(spec.sealedEnvironment);
        const unsafe = runRefusal(spec, environment);
        if (unsafe) throw new Error(`refused: ${unsafe}`);
        const refusal =
          this.context.policy &&
          policyRefusal(this.context.policy, {
            image: spec.image,
            commands: spec.commands,
            environment,
            timeoutSeconds: spec.timeoutSeconds,
          });
        if (refusal) throw new Error(`refused by the run initialization policy: ${refusal}`);
      } catch (error) {
        // Refused by the policy, or sealed for another key (or damaged): this pool cannot run it, anywhere.
        const reason = (error as Error).message;
        // (Each goes back to the gateway, which has them all.)
        if (this.unhushed()) log.info("run refused", { run: id, reason });
        removeRun(run.dir);
        end();
        return this.send({ type: "refused", id, fence, reason });
      }
      // Protected from scale-in before the run is taken: a busy instance is never chosen.
      await this.context.busyChanged?.();
      this.held.set(id, run);
      this.renew();
      this.send({ type: "accepted", id, fence });
      // Nothing runs before the gateway has stored the start under this lease.
      if (!(await new Promise<boolean>((go) => (run.go = go)))) {
        this.held.delete(id);
        return end();
      }
      run.outcome = await this.execute(spec, environment, run);
    } catch (error) {
      run.outcome = { status: "failed", reason: (error as Error).message, state: false };
    }
    end();
    if (run.revoked) return this.forget(run);
    log.info("run finished", {
      run: id,
      status: run.outcome.status,
      exitCode: run.outcome.exitCode,
      reason: run.outcome.reason,
    });
    await this.deliver(run);
  }

  private async openEnvironment(sealed: string): Promise<Record<string, string>> {
    try {
      return JSON.parse((await openBuffer(this.context.privateKey, Buffer.from(sealed, "base64"))).toString());
    } catch {
      // Never what the parse met: JSON.parse quotes the text it could not read, a secret's start.
      throw new Error("the run's environment cannot be opened (another pool's, altered, or not JSON)");
    }
  }

  private async execute(spec: RunSpec, environment: Record<string, string>, run: Held): Promise<RunOutcome> {
    const { settings, executor, passed } = this.context;
    await executor.ready;
    const workspace = path.join(run.dir, "workspace");
    mkdirSync(path.join(workspace, path.dirname(STATE_FILE)), { recursive: true, mode: 0o700 });
    // The container's user may not be ours: the workspace is open, its parent (ours, 0700) is not.
    if ((BUILT_FOR.executor ?? settings.executor) === "docker")
      for (const dir of [workspace, path.join(workspace, path.dirname(STATE_FILE))]) chmodSync(dir, 0o777);
    const stateFile = path.join(workspace, STATE_FILE);
    const runTimeoutMs = Math.min(durationMs(settings.runTimeout), (spec.timeoutSeconds ?? Infinity) * 1000);
    // The run's time counts from here: a state that trickles in takes it too.
    const deadline = Date.now() + runTimeoutMs;
    if (spec.stateFrom) await this.downloadState(spec.stateFrom, stateFile, run.fence, deadline);

    const masked = new Set(settings.maskedEnvVars);
    const secrets = [
      ...settings.maskedEnvVars.map((name) => passed[name] ?? ""),
      ...Object.entries(environment)
        .filter(([name]) => masked.has(name))
        .map(([, value]) => value),
    ];
    let bytes = 0;
    let cut = false;
    const append = (lines: string[]) => {
      const from = run.lines.length;
      const kept: string[] = [];
      // The last line kept says the log was cut, at whichever cap came first (the gateway keeps as many lines).
      for (let i = 0; i < lines.length && !cut; i++) {
        bytes += Buffer.byteLength(lines[i]);
        cut = from + i === MAX_LOG_LINES - 1 || bytes > MAX_LOG_BYTES;
        kept.push(
          cut ? `[agentpools: the log is cut at ${MAX_LOG_LINES} lines or ${MAX_LOG_BYTES >> 20} MiB]` : lines[i],
        );
      }
      if (kept.length === 0) return;
      run.lines.push(...kept);
      this.send({ type: "log", id: run.id, fence: run.fence, from, lines: kept });
    };
    // Each stream on its own: a value split between two reads of one stream is still whole to it.
    const outputs = { stdout: runOutput(secrets, append), stderr: runOutput(secrets, append) };

    const env = {
      ...passed,
      ...environment,
      AGENTPOOLS_RUN_ID: spec.id,
      AGENTPOOLS_STATE_FILE: `${executor.workspaceInRun(workspace)}/${STATE_FILE}`,
    };
    const started = executor.start({
      id: spec.id,
      image: spec.image,
      script: spec.commands.join("\n"),
      env,
      workspace,
    });
    run.process = started;
    // Stopped while its state was still downloading: it does not get to run.
    if (run.stopped) started.kill();

    const logsTimeout = durationMs(settings.logsTimeout);
    let timedOut: string | undefined;
    const kill = (reason: string) => {
      timedOut ??= reason;
      started.kill();
    };
    const silence = () => setTimeout(() => kill(`no log output for ${settings.logsTimeout}`), logsTimeout);
    let quiet = silence();
    const overall = setTimeout(
      () => kill(`the run took longer than ${Math.round(runTimeoutMs / 1000)}s`),
      deadline - Date.now(),
    );
    started.onOutput((chunk, stream) => {
      clearTimeout(quiet);
      quiet = silence();
      outputs[stream].write(chunk);
    });
    const exit = await started.exited;
    clearTimeout(quiet);
    clearTimeout(overall);
    outputs.stdout.end();
    outputs.stderr.end();

    // The state file is the run's to write, not to point elsewhere: only a regular file of the workspace's own is kept.
    const kept = await keepState(workspace, path.join(run.dir, "state"), settings.maxStateBytes);
    if (kept === false)
      append([`[agentpools: state not kept: not a regular file, or over ${settings.maxStateBytes} bytes]`]);
    run.stateFile = kept ? path.join(run.dir, "state") : undefined;
    const state = Boolean(kept);
    const { stopped } = run;
    if (timedOut || stopped) append([`[agentpools: killed: ${timedOut ?? stopped}]`]);
    // Stopped by the launcher or the gateway, the run's exit code says nothing of it.
    const exitCode = stopped && !timedOut ? undefined : (exit.code ?? undefined);
    const reason =
      timedOut ??
      stopped ??
      (exit.code === 0 ? undefined : exit.code === null ? `killed by ${exit.signal}` : `exited with code ${exit.code}`);
    return { status: timedOut ? "timed_out" : reason ? "failed" : "succeeded", exitCode, reason, state };
  }

  /**
   * The state a run starts from, opened into its workspace: at most maxStateBytes as sealed, ended when nothing comes
   * for the logs timeout or at the run's deadline. What fails leaves no file.
   */
  private async downloadState(from: string, file: string, fence: number, deadline: number): Promise<void> {
    const { settings, privateKey } = this.context;
    const stop = new AbortController();
    const end = (why: string) => stop.abort(new Error(`the state of run ${from} ${why}`));
    const logsTimeout = settings.logsTimeout;
    const idle = setTimeout(() => end(`stopped coming for ${logsTimeout} (the logs timeout)`), durationMs(logsTimeout));
    const late = setTimeout(() => end("was not in by the run's deadline"), deadline - Date.now());
    let size = 0;
    try {
      const response = await this.stateRequest(from, fence, { method: "GET", signal: stop.signal });
      if (response.statusCode !== 200) end(`is not available: the gateway answered ${response.statusCode}`);
      await pipeline(
        response,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            idle.refresh();
            if ((size += chunk.length) > settings.maxStateBytes)
              return end(`is over AGENTPOOLS_MAX_STATE_BYTES (${settings.maxStateBytes} bytes as sealed)`);
            yield chunk;
          }
        },
        (sealed) => open(privateKey, sealed as AsyncIterable<Buffer>),
        createWriteStream(file, { mode: 0o600, flags: "wx" }),
        { signal: stop.signal },
      );
    } catch (error) {
      rmSync(file, { force: true });
      throw stop.signal.aborted
        ? stop.signal.reason
        : new Error(`the state of run ${from} cannot be opened: ${(error as Error).message}`);
    } finally {
      clearTimeout(idle);
      clearTimeout(late);
    }
  }

  /** Seal and upload the run's state if it left one, then report the outcome; retried on every reconnect. */
  private async deliver(run: Held): Promise<void> {
    if (run.delivering || !run.outcome || !this.socket?.open) return;
    run.delivering = true;
    try {
      if (run.stateFile && existsSync(run.stateFile)) {
        const response = await this.stateRequest(
          run.id,
          run.fence,
          { method: "PUT", body: seal(this.context.publicKey, createReadStream(run.stateFile)) },
          "application/octet-stream",
        );
        response.resume();
        if (response.statusCode === 413) {
          // Too large for this gateway, for good: report the run without it rather than never.
          run.outcome = {
            ...run.outcome,
            state: false,
            reason: [run.outcome.reason, "its state was too large for the gateway to store"].filter(Boolean).join("; "),
          };
        } else if (response.statusCode !== 204)
          throw new Error(`the gateway refused the run's state with ${response.statusCode}`);
        rmSync(run.stateFile, { force: true });
        run.stateFile = undefined;
      }
      this.send({ type: "finished", id: run.id, fence: run.fence, ...run.outcome });
    } catch (error) {
      // Tried again with the next renewal, and on every reconnect.
      if (this.unhushed())
        this.context.log.warn("could not deliver a run's result; trying again", {
          run: run.id,
          error: (error as Error).message,
        });
    } finally {
      run.delivering = false;
    }
  }

  /** The gateway has taken every result, or the deadline has passed. */
  private async settle(deadline: number): Promise<void> {
    while (this.held.size > 0 && Date.now() < deadline) await sleep(50);
  }

  /** Take no new runs; let the current one finish until the deadline, then stop it; deliver; close. */
  async stop(deadline: number): Promise<void> {
    this.stopping = true;
    this.send({ type: "draining" });
    // The current run (waiting for its start, or running) finishes by the deadline, or is stopped.
    const current = this.current;
    if (current) {
      this.context.log.info("waiting for the current run before stopping", {
        run: current.id,
        secondsLeft: Math.round((deadline - Date.now()) / 1000),
      });
      const timer = setTimeout(
        () => this.halt(current, "the launcher was stopped before the run finished"),
        Math.max(0, deadline - Date.now()),
      );
      await current.done;
      clearTimeout(timer);
    }
    await this.settle(Math.max(deadline, Date.now() + DELIVERY_GRACE_MS));
    if (this.held.size > 0) {
      this.context.log.warn("stopping with run results the gateway has not taken", { runs: [...this.held.keys()] });
    }
    await this.drain(Date.now() + 1000);
  }

  /** The WebSocket closes at once: a launcher's drain is about its run, handled in stop(). */
  protected async closeGracefully(): Promise<void> {
    this.socket?.close(1001);
  }
}

/** The `launcher` role; `docker` names the Docker CLI (tests give a stand-in). */
export function launcherRole(options?: { docker?: string }): Role<LauncherSettings> {
  return {
    name: "launcher",
    start(settings, { log, env, busyChanged }): RunningAgent {
      const launcher = new Launcher({
        ...prepareLauncher(settings, env ?? process.env, log, options?.docker),
        busyChanged,
      });
      return {
        ready: launcher.ready,
        stopped: launcher.stopped,
        connected: () => launcher.connected,
        busy: () => launcher.busy,
        drain: (deadline) => launcher.stop(deadline),
      };
    },
  };
}
