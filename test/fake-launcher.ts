import { randomUUID, sign } from "node:crypto";
import { EventEmitter } from "node:events";
import type net from "node:net";
import { dialGateway } from "../agent/tunnel/dial";
import { newKey, WebSocket } from "../protocol/websocket";
import { POOL_HEADER } from "../protocol/link";
import {
  PROOF_HEADER,
  proofPayload,
  WORKER_CONNECT_PATH,
  WORKER_HEADER,
  type FromWorker,
  type HeldLease,
  type ToWorker,
} from "../protocol/worker";
import { privateKeyFromBase64 } from "../protocol/seal";

export interface PoolCredentials {
  url: string;
  pool: string;
  secret: string;
  keyBase64: string;
}

/**
 * A launcher speaking the worker protocol by hand, so a test decides every message and every
 * drop. It keeps all it receives; `next` waits for a message (an event, never a sleep).
 */
export class FakeLauncher extends EventEmitter {
  readonly received: ToWorker[] = [];
  private constructor(
    readonly id: string,
    readonly socket: WebSocket,
    private readonly raw: net.Socket,
  ) {
    super();
    socket.on("message", (text: string) => {
      const message = JSON.parse(text) as ToWorker;
      this.received.push(message);
      this.emit("message", message);
    });
  }

  /** Connects as launcher `id` and says hello presenting `leases`. */
  static async connect(
    pool: PoolCredentials,
    id: string = randomUUID(),
    leases: HeldLease[] = [],
  ): Promise<FakeLauncher> {
    const timestamp = String(Date.now());
    const raw = await dialGateway(
      new URL(pool.url),
      {
        authorization: `Bearer ${pool.secret}`,
        [POOL_HEADER]: pool.pool,
        [WORKER_HEADER]: id,
        [PROOF_HEADER]: `${timestamp}.${sign("sha256", proofPayload(pool.pool, timestamp), privateKeyFromBase64(pool.keyBase64)).toString("base64url")}`,
        "sec-websocket-key": newKey(),
        "sec-websocket-version": "13",
      },
      { path: WORKER_CONNECT_PATH, protocol: "websocket" },
    );
    const launcher = new FakeLauncher(id, new WebSocket(raw, true), raw);
    launcher.send({ type: "hello", leases });
    return launcher;
  }

  send(message: FromWorker): void {
    this.socket.send(JSON.stringify(message));
  }

  /** The first message received (already, or from now on) of this type that matches. */
  next<T extends ToWorker["type"]>(
    type: T,
    match: (message: Extract<ToWorker, { type: T }>) => boolean = () => true,
    ms = 5000,
  ): Promise<Extract<ToWorker, { type: T }>> {
    const fits = (m: ToWorker): m is Extract<ToWorker, { type: T }> =>
      m.type === type && match(m as Extract<ToWorker, { type: T }>);
    const seen = this.received.find(fits);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => (
          this.off("message", listen),
          reject(
            new Error(
              `launcher ${this.id.slice(0, 8)}: no ${type} within ${ms} ms; got ${JSON.stringify(this.received.map((m) => m.type))}`,
            ),
          )
        ),
        ms,
      );
      const listen = (m: ToWorker) => {
        if (!fits(m)) return;
        clearTimeout(timer);
        this.off("message", listen);
        resolve(m);
      };
      this.on("message", listen);
    });
  }

  /** Messages of this type received for a run. */
  count(type: ToWorker["type"], run: string): number {
    return this.received.filter((m) => m.type === type && (m.type === "run" ? m.run.id : m.id) === run).length;
  }

  /** Run it as a launcher would once started: a log line, then the outcome. */
  complete(run: string, fence: number, line = "ran"): void {
    this.send({ type: "log", id: run, fence, from: 0, lines: [line] });
    this.send({ type: "finished", id: run, fence, status: "succeeded", exitCode: 0, state: false });
  }

  /** The network drops: no close frame, the socket is just gone. */
  drop(): void {
    this.raw.destroy();
  }

  /** Hangs as a stopped process would: reads nothing more, so pings go unanswered. */
  freeze(): void {
    this.raw.pause();
    this.raw.removeAllListeners("data");
  }

  get open(): boolean {
    return this.socket.open;
  }
}
