import { mkdirSync } from "node:fs";
import path from "node:path";
import type { FlowsAgentSettings } from "../config/flows-agent";
import { durationMs } from "../config/duration";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { interruptibleSleep } from "../runtime/http";
import { parseMessage, type WebSocket } from "../../protocol/websocket";
import { WebSocketLink } from "../tunnel/websocket-link";
import { dockerLauncher, Executor, processLauncher, type Outcome, type RuntimeLauncher } from "./executor";
import { Cgroups, ISOLATIONS, readPrivileges, seccompFilter, UidPool, uidRange, type Isolation, type Privileges } from "./sandbox";
import { FLOWS_CONNECT_PATH, FLOWS_MAX_RESULT_BYTES, FLOWS_RUN_TIMEOUT_MAX_MS, type AgentMessage, type GatewayMessage, type Job } from "../../protocol/flows";

/** A run as the gateway must send it; anything else is answered with an error or ignored. */
function checkRun(message: Record<string, unknown>): { id: string; job: Job; timeoutMs?: number } | string {
  const { id, job, timeoutMs } = message as { id: unknown; job: Record<string, unknown> | null; timeoutMs: unknown };
  if (typeof id !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(id)) return "";
  if (!job || typeof job.code !== "string" || (job.kind !== "expression" && job.kind !== "block")) return 'job must be {kind: "expression" | "block", code, inputs?}';
  if (timeoutMs !== undefined && !(Number.isInteger(timeoutMs) && (timeoutMs as number) >= 1)) return "timeoutMs must be a positive integer";
  return { id, job: { kind: job.kind, code: job.code, inputs: job.inputs }, timeoutMs: timeoutMs as number | undefined };
}

/**
 * The result message of a run: type and id are the agent's, every other field is taken one by
 * one from the checked outcome, and a message the gateway could not carry becomes an error
 * that names the cap.
 */
export function resultMessage(id: string, outcome: Outcome): string {
  const { ok, value, error, console, durationMs } = outcome;
  const text = JSON.stringify({ type: "result", id, ok, value, error, console, durationMs } satisfies AgentMessage);
  if (Buffer.byteLength(text) <= FLOWS_MAX_RESULT_BYTES) return text;
  const message = `the answer is ${Buffer.byteLength(text)} bytes, over the cap of ${FLOWS_MAX_RESULT_BYTES} bytes`;
  return JSON.stringify({ type: "result", id, ok: false, error: { name: "RangeError", message }, console: [], durationMs } satisfies AgentMessage);
}

/**
 * The Flows agent's connection: a WebSocket to the gateway carrying run requests and their
 * results. Runs are handed to the executor; the link never waits on user code itself.
 */
class FlowsLink extends WebSocketLink {
  private inFlight = 0;

  constructor(
    private readonly settings: FlowsAgentSettings,
    private readonly executor: Executor,
    private readonly executorName: string,
    private readonly log: Logger,
  ) {
    super({
      gateway: new URL(settings.gatewayEndpoint),
      path: FLOWS_CONNECT_PATH,
      role: "flows-agent",
      credentials: () => ({ authorization: `Bearer ${settings.poolToken}`, "x-agentpools-pool": settings.poolId }),
      settings,
      log,
    });
  }

  protected opened(socket: WebSocket): void {
    const send = (message: AgentMessage) => socket.send(JSON.stringify(message));
    send({ type: "hello", poolSize: this.settings.runtimePoolSize, executor: this.executorName });
    this.log.info("Connected to the server", { gateway: this.link.gateway.origin, poolSize: this.settings.runtimePoolSize, executor: this.executorName });

    socket.on("message", (text: string) => {
      const message = parseMessage<GatewayMessage>(text);
      if (message?.type !== "run") return;
      const run = checkRun(message);
      if (typeof run === "string") {
        if (run && typeof message.id === "string") send({ type: "result", id: message.id, ok: false, error: { name: "TypeError", message: run }, console: [], durationMs: 0 });
        return;
      }
      const timeoutMs = Math.min(run.timeoutMs ?? durationMs(this.settings.defaultRunTimeout), FLOWS_RUN_TIMEOUT_MAX_MS);
      this.inFlight++;
      void this.executor.run(run.job, timeoutMs).then((outcome) => {
        this.inFlight--;
        // The answer first: the log line is not what the caller waits for.
        if (socket.open) socket.send(resultMessage(run.id, outcome));
        this.log.info("run finished", { id: run.id, ok: outcome.ok, durationMs: Math.round(outcome.durationMs * 100) / 100, ...(outcome.ok ? {} : { error: outcome.error?.message }) });
      });
    });
  }

  /** Say so, let the runs in flight finish (by the deadline), then close. */
  protected async closeGracefully(deadline: number): Promise<void> {
    const socket = this.socket;
    if (!socket?.open) return;
    socket.send(JSON.stringify({ type: "draining" } satisfies AgentMessage));
    while (this.inFlight > 0 && Date.now() < deadline) await interruptibleSleep(20).done;
    socket.close(1001);
  }
}

/** What `isolation` needs that this process lacks; undefined when it has it all. */
export function missingFor(isolation: Isolation, p: Privileges): string | undefined {
  if (isolation === "none") return undefined;
  if (!p.switchUser) return "the agent may not start processes as another user (run it as root, or with CAP_SETUID and CAP_SETGID)";
  if (!p.root && !p.setpriv) return "setpriv (util-linux) is not installed, and a non-root agent needs it to drop its capabilities in runtimes";
  if (!p.kill && !p.cgroup) return "the agent may not end another user's processes (give it CAP_KILL, or a delegated cgroup: systemd Delegate=yes)";
  if (isolation === "namespaces" && !p.bwrap) return "bubblewrap (bwrap) is not installed";
  if (isolation === "namespaces" && !seccompFilter()) return `no seccomp filter for the ${process.arch} architecture`;
  return undefined;
}

export interface Runner {
  path: string;
  args: string[];
  readable: string[];
}

/**
 * The process executor's launcher at the strongest isolation the settings allow and this host
 * gives, proven by a runtime that starts. "auto" steps down loudly; a named level refuses to
 * start without it.
 */
async function isolatedLauncher(settings: FlowsAgentSettings, runner: Runner, log: Logger): Promise<RuntimeLauncher> {
  const privileges = readPrivileges();
  const [first, last] = uidRange(settings.runtimeUids);
  const ownUid = process.getuid?.() ?? -1;
  if (ownUid >= first && ownUid <= last) throw new Error(`FLOWS_RUNTIME_UIDS (${settings.runtimeUids}) holds the agent's own uid ${ownUid}: runtimes must never share it`);
  if (last - first + 1 < 2 * settings.runtimePoolSize) throw new Error(`FLOWS_RUNTIME_UIDS (${settings.runtimeUids}) must hold at least twice FLOWS_RUNTIME_POOL_SIZE (${settings.runtimePoolSize}) uids`);
  const uids = new UidPool(first, last);
  const wanted = settings.runtimeIsolation;
  let cgroups: Cgroups | undefined;
  for (const isolation of wanted === "auto" ? ISOLATIONS : [wanted]) {
    let missing = missingFor(isolation, privileges);
    if (!missing) {
      if (privileges.cgroup && isolation !== "none") cgroups ??= new Cgroups(privileges.cgroup);
      const launcher = processLauncher({ isolation, privileges, uids, runner: [runner.path, ...runner.args], readable: runner.readable, memoryMb: settings.runtimeMemoryMb, diskMb: settings.runtimeDiskMb, scratchRoot: settings.mountsDir, cgroups: isolation === "none" ? undefined : cgroups });
      const trial = launcher.start();
      missing = await trial.ready.then(
        () => undefined,
        (error: Error) => `a trial runtime did not start: ${error.message}`,
      );
      trial.kill();
      if (!missing) {
        if (isolation === "none") log.error("FLOWS RUNTIMES ARE NOT ISOLATED: they run as the agent's own user, with only Node's permission model between a run and the agent's pool token. For development only: run the agent as root or with CAP_SETUID, CAP_SETGID and CAP_KILL (or a delegated cgroup) to give each runtime a user of its own.", { isolation });
        else log.info("runtimes isolated", { isolation, executor: launcher.describe, uids: settings.runtimeUids });
        return launcher;
      }
    }
    if (wanted !== "auto") throw new Error(`FLOWS_RUNTIME_ISOLATION=${wanted} is not possible here: ${missing}`);
    log.error(`runtime isolation "${isolation}" is not possible here, trying a weaker one`, { reason: missing });
  }
  throw new Error("no runtime could start");
}

/** The executor the settings ask for; `docker` names the Docker CLI (tests give a stand-in). */
export async function createExecutor(settings: FlowsAgentSettings, log: Logger, runner: Runner, docker?: string): Promise<{ executor: Executor; name: string }> {
  mkdirSync(settings.mountsDir, { recursive: true, mode: 0o700 });
  const launcher =
    settings.executor === "docker" ? dockerLauncher(settings, runner.path, new UidPool(...uidRange(settings.runtimeUids)), docker) : await isolatedLauncher(settings, runner, log);
  return { executor: new Executor({ poolSize: settings.runtimePoolSize, launcher, log }), name: launcher.describe };
}

/** The `flows-agent` role; `runner` is how a runtime starts (the bundle itself with --flows-runner). */
export function flowsAgentRole(runner: Runner, options: { docker?: string } = {}): Role<FlowsAgentSettings> {
  return {
    name: "flows-agent",
    async start(settings, { log }): Promise<RunningAgent> {
      const { executor, name } = await createExecutor(settings, log, runner, options.docker);
      const link = new FlowsLink(settings, executor, name, log);
      return {
        ready: link.ready,
        stopped: link.stopped,
        connected: () => link.connected,
        drain: async (deadline) => {
          await link.drain(deadline);
          executor.close();
        },
      };
    },
  };
}

/** The runner of the unbundled build (tests): its compiled module and the directories it reads. */
export const unbundledRunner = (): Runner => {
  const file = path.join(__dirname, "runner-main.js");
  return { path: file, args: [], readable: [__dirname, path.join(__dirname, "../../protocol")] };
};
