import { mkdirSync } from "node:fs";
import path from "node:path";
import type { FlowsAgentSettings } from "../config/flows-agent";
import { durationMs } from "../config/duration";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { interruptibleSleep } from "../runtime/http";
import { parseMessage, type WebSocket } from "../../protocol/websocket";
import { roundTrip, WebSocketLink } from "../tunnel/websocket-link";
import { dockerLauncher, Executor, processLauncher, type RuntimeLauncher } from "./executor";
import { FLOWS_CONNECT_PATH, FLOWS_MAX_RUN_TIMEOUT_MS } from "../../protocol/flows";
import type { AgentMessage, GatewayMessage } from "../../protocol/flows";

/**
 * The Flows agent's connection: a WebSocket to the gateway carrying run requests and their
 * results. Runs are handed to the executor; the link never waits on user code itself.
 */
class FlowsLink extends WebSocketLink {
  private inFlight = 0;

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
  }

  protected opened(socket: WebSocket): void {
    const send = (message: AgentMessage) => socket.send(JSON.stringify(message));
    send({ type: "hello", poolSize: this.settings.runtimePoolSize, executor: this.executorName });
    this.log.info("Connected to the server", { gateway: this.link.gateway.origin, poolSize: this.settings.runtimePoolSize, executor: this.executorName });

    socket.on("message", (text: string) => {
      const message = parseMessage<GatewayMessage>(text);
      if (message?.type !== "run") return;
      const asked = message.timeoutMs ?? durationMs(this.settings.defaultRunTimeout);
      const timeoutMs = Math.min(asked, FLOWS_MAX_RUN_TIMEOUT_MS);
      this.inFlight++;
      void this.executor.run(message.job, timeoutMs).then((outcome) => {
        this.inFlight--;
        // The answer first: the log line is not what the caller waits for.
        if (socket.open) send({ type: "result", id: message.id, ...outcome });
        this.log.info("run finished", { id: message.id, ok: outcome.ok, durationMs: Math.round(outcome.durationMs * 100) / 100, ...(outcome.ok ? {} : { error: outcome.error?.message }) });
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

/** The executor the settings ask for, and where its runtimes' scratch space is. */
export function createExecutor(settings: FlowsAgentSettings, log: Logger, runner: { path: string; args: string[]; readable: string[] }): { executor: Executor; name: string } {
  const scratchRoot = settings.mountsDir;
  mkdirSync(scratchRoot, { recursive: true, mode: 0o700 });
  const launcher: RuntimeLauncher =
    settings.executor === "docker"
      ? dockerLauncher(settings, runner.path)
      : processLauncher({ runner: [runner.path, ...runner.args], readable: runner.readable, memoryMb: settings.runtimeMemoryMb });
  return { executor: new Executor({ poolSize: settings.runtimePoolSize, memoryMb: settings.runtimeMemoryMb, scratchRoot, launcher, log }), name: launcher.describe };
}

/** The `flows-agent` role; `runner` is how a runtime starts (the bundle itself with --flows-runner). */
export function flowsAgentRole(runner: { path: string; args: string[]; readable: string[] }): Role<FlowsAgentSettings> {
  return {
    name: "flows-agent",
    start(settings, { log }): RunningAgent {
      const { executor, name } = createExecutor(settings, log, runner);
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

/** The runner of the unbundled build (tests): its compiled module and the directory it lives in. */
export const unbundledRunner = () => {
  const file = path.join(__dirname, "runner-main.js");
  return { path: file, args: [], readable: [__dirname] };
};
