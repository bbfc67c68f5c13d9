import { mkdirSync } from "node:fs";
import path from "node:path";
import type { FlowsAgentSettings } from "../config/flows-agent";
import { durationMs } from "../config/duration";
import { BUILT_FOR } from "../config/built-for";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { interruptibleSleep } from "../runtime/http";
import { gatewayUrlProblem, parseMessage } from "../../protocol/link";
import type { LinkSocket } from "../tunnel/builtin-websocket";
import { roundTrip, WebSocketLink } from "../tunnel/websocket-link";
import {
  cancelRun,
  claim,
  dockerLauncher,
  executor,
  type Cancellation,
  processLauncher,
  type ProcessLauncherOptions,
  type Executor,
  type Outcome,
  type RuntimeLauncher,
} from "./executor";
import {
  ISOLATIONS,
  readPrivileges,
  seccompFilter,
  uidOwner,
  uidPool,
  type Isolation,
  type Privileges,
  type UidPool,
} from "./sandbox";
import {
  FLOWS_AGENT_RUNS_PER_RUNTIME,
  FLOWS_MAX_RUN_ID_CHARS,
  FLOWS_CONNECT_PATH,
  FLOWS_MAX_RESULT_BYTES,
  FLOWS_MAX_RUN_TIMEOUT_MS,
  overCaps,
  type AgentMessage,
  type GatewayMessage,
} from "../../protocol/flows";

/**
 * The result message of a run: type, id and duration are the agent's; the rest is the runtime's checked answer, as
 * the text it came in (an object of an answer's fields only, so it holds none of the agent's: no value is encoded
 * twice) or else field by field. A message the gateway could not carry becomes an error that names the cap.
 */
export function resultMessage(id: string, outcome: Outcome): string {
  const { ok, value, error, console, durationMs, text: answer } = outcome;
  const text =
    answer?.[0] === "{"
      ? `{"type":"result","id":${JSON.stringify(id)},"durationMs":${JSON.stringify(durationMs)},${answer.slice(1)}`
      : JSON.stringify({ type: "result", id, ok, value, error, console, durationMs } satisfies AgentMessage);
  // The gateway's checks, on the very text sent: a message over a cap would cost the whole link, not this run.
  const bytes = Buffer.byteLength(text);
  const over =
    bytes > FLOWS_MAX_RESULT_BYTES
      ? `the answer is ${bytes} bytes, over the cap of ${FLOWS_MAX_RESULT_BYTES} bytes`
      : overCaps(text);
  if (!over) return text;
  return resultMessage(id, { ok: false, error: { name: "RangeError", message: over }, console: [], durationMs });
}

/**
 * The Flows agent's connection: a WebSocket to the gateway carrying run requests and their
 * results. Runs are handed to the executor; the link never waits on user code itself.
 */
class FlowsLink extends WebSocketLink {
  private inFlight = 0;

  private readonly defaultTimeoutMs: number;

  /** The share of its runtimes in use (the pool's busy metric). */
  get busy(): number {
    return this.inFlight / this.settings.runtimePoolSize;
  }

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
    this.defaultTimeoutMs = durationMs(settings.defaultRunTimeout);
  }

  protected opened(socket: LinkSocket): void {
    const send = (message: AgentMessage) => socket.send(JSON.stringify(message));
    // Answers leave one at a time, each once the socket has handed the last to the kernel: the rest wait here, not
    // queued in the socket ahead of pings and pongs (and in the agent's memory) on a slow link.
    let answers = Promise.resolve();
    send({ type: "hello", poolSize: this.settings.runtimePoolSize, executor: this.executorName });
    this.log.info("Connected to the server", {
      gateway: this.link.gateway.origin,
      poolSize: this.settings.runtimePoolSize,
      executor: this.executorName,
    });

    // Runs not yet answered, by id: what a cancel ends. Once the link is gone no answer can reach anyone: all end.
    const runs = new Map<string, Cancellation>();
    socket.once("close", () => runs.forEach(cancelRun));
    socket.on("message", (text: string) => {
      const message = parseMessage<GatewayMessage>(text);
      if (typeof message?.id !== "string" || message.id.length > FLOWS_MAX_RUN_ID_CHARS) return;
      if (message.type === "cancel") {
        const run = runs.get(message.id);
        return void (run && cancelRun(run));
      }
      if (message.type !== "run" || runs.has(message.id)) return;
      // Counted until each answer is handed to the socket: a gateway that stops reading holds them all here too.
      if (this.inFlight >= FLOWS_AGENT_RUNS_PER_RUNTIME * this.settings.runtimePoolSize) {
        this.log.error("the gateway sent more runs than this agent holds: reconnecting", { runs: this.inFlight });
        return socket.close(1008);
      }
      const { id, job } = message;
      const timeoutMs = Math.min(message.timeoutMs ?? this.defaultTimeoutMs, FLOWS_MAX_RUN_TIMEOUT_MS);
      const cancellation: Cancellation = {};
      runs.set(id, cancellation);
      this.inFlight++;
      // Only what a job is made of goes on to the runtime.
      void this.executor
        .run({ kind: job?.kind, code: job?.code, inputs: job?.inputs }, timeoutMs, cancellation)
        .then(async (outcome) => {
          runs.delete(id);
          await (answers = answers.then(
            () => new Promise((sent) => (socket.open ? socket.send(resultMessage(id, outcome), sent) : sent())),
          ));
          this.inFlight--;
          this.log.info("run finished", {
            id,
            ok: outcome.ok,
            durationMs: Math.round(outcome.durationMs * 100) / 100,
            ...(outcome.ok ? {} : { error: outcome.error?.message }),
          });
        });
    });
  }

  /** Say so, let the runs in flight finish (by the deadline), then close. */
  protected async closeGracefully(deadline: number): Promise<void> {
    const socket = this.socket;
    if (!socket?.open) return;
    socket.send(JSON.stringify({ type: "draining" } satisfies AgentMessage));
    // Runs the gateway sent before it read "draining" arrive before the answer to this ping.
    await roundTrip(socket, deadline);
    while (this.inFlight > 0 && Date.now() < deadline) await interruptibleSleep(20).done;
    socket.close(1001);
  }
}

/** What `isolation` needs that this process lacks; undefined when it has it all. */
export function missingFor(isolation: Isolation, p: Privileges): string | undefined {
  // On EC2, what the component gives every instance (sandbox.ts readPrivileges): the trial runtime proves it.
  if (BUILT_FOR.platform === "ec2" || isolation === "none") return undefined;
  if (!p.switchUser) return "no CAP_SETUID, CAP_SETGID and CAP_KILL";
  if (!p.root && !p.setpriv) return "setpriv is missing";
  if (isolation === "namespaces" && !(p.bwrap && seccompFilter()))
    return "no bubblewrap, or no seccomp filter for this architecture";
  return undefined;
}

export interface Runner {
  path: string;
  args: string[];
  readable: string[];
}

/**
 * The process executor's launcher at the strongest isolation the settings allow and this host
 * gives, proven by a runtime that starts. "auto" steps down, logging each step as an error; a
 * named level refuses to start without it.
 */
async function isolatedLauncher(
  settings: FlowsAgentSettings,
  runner: Runner,
  uids: UidPool,
  log: Logger,
): Promise<RuntimeLauncher> {
  const privileges = readPrivileges();
  // On EC2 one agent per instance (its unit), which sweeps nothing at start: no directory to claim.
  if (BUILT_FOR.platform !== "ec2") claim(settings.mountsDir);
  // On EC2 only namespaces (the component refuses any other level there): an EC2 bundle carries no step-down.
  const wanted = BUILT_FOR.platform === "ec2" ? "namespaces" : settings.runtimeIsolation;
  /** The launcher at `isolation` once a runtime has started in it; else a throw (a named level) or undefined (auto). */
  const attempt = async (isolation: Isolation): Promise<RuntimeLauncher | undefined> => {
    let missing = missingFor(isolation, privileges);
    if (!missing) {
      // (On EC2 the level and the scratch root are not read: namespaces, each runtime's scratch its own tmpfs.)
      const launcher = processLauncher({
        ...(BUILT_FOR.platform !== "ec2" && { isolation, scratchRoot: settings.mountsDir }),
        privileges,
        uids,
        runner: [runner.path, ...runner.args],
        readable: runner.readable,
        memoryMb: settings.runtimeMemoryMb,
        diskMb: settings.runtimeDiskMb,
        openFiles: settings.runtimeOpenFiles,
      } as ProcessLauncherOptions);
      const trial = launcher.start()!;
      missing = await trial.ready.then(
        () => undefined,
        (error: Error) => `a runtime did not start: ${error.message}`,
      );
      trial.kill();
      if (!missing) {
        if (BUILT_FOR.platform !== "ec2" && isolation === "none")
          log.error("FLOWS RUNTIMES ARE NOT ISOLATED: they run as the agent's own user");
        log.info("runtimes isolated", { isolation, executor: launcher.describe });
        return launcher;
      }
    }
    if (wanted !== "auto") throw new Error(`FLOWS_RUNTIME_ISOLATION=${wanted} is not possible here: ${missing}`);
    log.error("runtime isolation not possible here: trying a weaker one", { isolation, reason: missing });
    return undefined;
  };
  // (A loop over one level is kept by the minifier: an EC2 bundle calls its level straight.)
  if (BUILT_FOR.platform === "ec2") return (await attempt("namespaces"))!;
  for (const isolation of wanted === "auto" ? ISOLATIONS : [wanted]) {
    const launcher = await attempt(isolation);
    if (launcher) return launcher;
  }
  throw new Error("no runtime could start");
}

/** The executor the settings ask for; `docker` names the Docker CLI (tests give a stand-in). */
export async function createExecutor(
  settings: FlowsAgentSettings,
  log: Logger,
  runner: Runner,
  docker?: string,
): Promise<{ executor: Executor; name: string }> {
  // (EC2's process executor keeps nothing there: each runtime's scratch is a tmpfs of its own.)
  if (BUILT_FOR.platform !== "ec2" || BUILT_FOR.executor === "docker")
    mkdirSync(settings.mountsDir, { recursive: true, mode: 0o700 });
  const uids = uidPool(settings.runtimeUids);
  // A runtime's uid is held until it is cleaned up: as many again as the pool, so that runs rarely wait for one. (On
  // EC2 the component checked the range, and the agent's user is a system one, below any range: the block leaves an
  // EC2 bundle whole.)
  if (BUILT_FOR.platform !== "ec2") {
    const own = process.getuid?.() ?? -1;
    const needed = 2 * settings.runtimePoolSize;
    if (uids.last - uids.first + 1 < needed || (own >= uids.first && own <= uids.last))
      throw new Error(`FLOWS_RUNTIME_UIDS=${settings.runtimeUids} needs ${needed} uids, not the agent's ${own}`);
    const owner = uidOwner(uids);
    if (owner)
      throw new Error(
        `FLOWS_RUNTIME_UIDS=${settings.runtimeUids} holds ${owner}: a runtime under it could signal its processes and read its files; give uids no one has`,
      );
  }
  const launcher =
    (BUILT_FOR.executor ?? settings.executor) === "docker"
      ? dockerLauncher(settings, runner.path, uids, { docker, log })
      : await isolatedLauncher(settings, runner, uids, log);
  return { executor: executor({ poolSize: settings.runtimePoolSize, launcher, log }), name: launcher.describe };
}

/** The `flows-agent` role; `runner` is how a runtime starts (the bundle itself with --flows-runner). */
export function flowsAgentRole(runner: Runner, options: { docker?: string } = {}): Role<FlowsAgentSettings> {
  return {
    name: "flows-agent",
    async start(settings, { log }): Promise<RunningAgent> {
      // Before anything starts. Off EC2 the settings' JSON Schema does not carry this rule; on EC2 the component's
      // zod schema checked it.
      const plain = BUILT_FOR.platform !== "ec2" && gatewayUrlProblem(new URL(settings.gatewayEndpoint));
      if (plain) throw new Error(`FLOWS_GATEWAY_ENDPOINT: ${plain}`);
      const { executor, name } = await createExecutor(settings, log, runner, options.docker);
      const link = new FlowsLink(settings, executor, name, log);
      return {
        ready: link.ready,
        stopped: link.stopped,
        connected: () => link.connected,
        busy: () => link.busy,
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
  // The runner's modules: its folder, the protocol's, and BUILT_FOR's (a module without imports).
  const readable = [__dirname, path.join(__dirname, "../../protocol"), path.join(__dirname, "../config/built-for.js")];
  return { path: file, args: [], readable };
};
