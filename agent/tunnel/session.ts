import { interruptibleSleep } from "../runtime/http";
import type { Logger } from "../../lib/log";
import type { DialOptions } from "./dial";

/**
 * Full-jitter exponential backoff: a random delay up to min(cap, base * 2^attempt). The cap
 * bounds how long after a gateway's return every agent is back (5 s): jitter, not a long
 * cap, is what spreads a fleet's reconnects.
 */
export const backoffDelay = (attempt: number, baseMs = 500, capMs = 5_000) =>
  Math.random() * Math.min(capMs, baseMs * 2 ** attempt);

export interface LinkOptions extends DialOptions {
  gateway: URL;
  /** Headers of the upgrade request (credentials, role, metadata), made anew for each dial. */
  headers: Record<string, string> | (() => Record<string, string>);
  log: Logger;
}

/**
 * A connection the agent keeps to its gateway: dial out, serve until the connection ends,
 * reconnect with jittered backoff, until drained. Subclasses say what runs on the socket.
 */
export abstract class GatewayLink<S> {
  readonly ready: Promise<void>;
  /** Rejects if the gateway refuses the credentials (401/403): retrying cannot help. */
  readonly stopped: Promise<void>;
  protected markReady!: () => void;
  protected draining = false;
  private drainDeadline = 0;
  private fail!: (error: Error) => void;
  private finish!: () => void;
  private wake?: () => void;

  constructor(protected readonly link: LinkOptions) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.stopped = new Promise((resolve, reject) => ((this.finish = resolve), (this.fail = reject)));
    this.stopped.catch(() => undefined);
    setImmediate(() => void this.run());
  }

  /** Dial the gateway with these headers: the connection serve() takes, or a refusal (its `status`). */
  protected abstract dial(headers: Record<string, string>): Promise<S>;
  /** Serve one connection; resolves when it has ended. Call markReady() once it is live. */
  protected abstract serve(socket: S): Promise<void>;
  /** Close the live connection gracefully, by the deadline at the latest. */
  protected abstract closeGracefully(deadline: number): Promise<void>;
  /** Connected to the gateway now (not between a drop and a reconnect). */
  abstract get connected(): boolean;

  private async run(): Promise<void> {
    const { log, gateway, headers } = this.link;
    for (let attempt = 0; !this.draining;) {
      try {
        const socket = await this.dial(typeof headers === "function" ? headers() : headers);
        attempt = 0;
        const served = this.serve(socket);
        // A drain that came while this dialled found no connection to close, and waits for this one to end.
        if (this.draining) void this.closeGracefully(this.drainDeadline);
        await served;
        if (!this.draining) log.warn("disconnected from the gateway; reconnecting");
      } catch (error) {
        const status = (error as { status?: number }).status;
        if (status === 401 || status === 403) {
          this.fail(error as Error);
          return;
        }
        log.warn("cannot reach the gateway", { gateway: gateway.origin, error: (error as Error).message });
      }
      if (this.draining) break;
      const pause = interruptibleSleep(backoffDelay(attempt++));
      this.wake = pause.wake;
      await pause.done;
    }
    this.finish();
  }

  /** Stop reconnecting and close the connection gracefully. */
  async drain(deadline: number): Promise<void> {
    this.draining = true;
    this.drainDeadline = deadline;
    this.wake?.();
    await this.closeGracefully(deadline);
    await this.stopped.catch(() => undefined);
  }
}
