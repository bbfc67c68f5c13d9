import type net from "node:net";
import { dialGateway } from "../agent/tunnel/dial";
import { FLOWS_CONNECT_PATH, type Answer, type GatewayMessage } from "../protocol/flows";
import type { FlowsRunResult } from "../gateway/flows-hub";
import { POOL_HEADER } from "../protocol/link";
import { newKey, WebSocket } from "../protocol/websocket";

/** A Flows answer the hub gave (the JSON text its client receives), read back. */
export const readAnswer = (answer: Promise<FlowsRunResult>) =>
  answer.then(({ text }) => JSON.parse(text) as Answer & { durationMs: number });

/**
 * A Flows agent by hand: it answers each run with its name at once (pool size 1 unless given), unless
 * muted (runs never answered, pings still answered) or frozen (nothing read, no ping answered).
 */
export async function flowsAgentStandIn(
  url: string,
  pool: string,
  token: string,
  name = "stand-in",
  poolSize = 1,
  executor = "stand-in",
) {
  const raw: net.Socket = await dialGateway(
    new URL(url),
    {
      authorization: `Bearer ${token}`,
      [POOL_HEADER]: pool,
      "sec-websocket-key": newKey(),
      "sec-websocket-version": "13",
    },
    { path: FLOWS_CONNECT_PATH, protocol: "websocket" },
  );
  const socket = new WebSocket(raw, true);
  let answering = true;
  let pongs = 0;
  const runs: Extract<GatewayMessage, { type: "run" }>[] = [];
  const cancels: string[] = [];
  const write = raw.write.bind(raw) as (data: Buffer) => boolean;
  raw.write = ((data: Buffer) => ((data[0] & 0x0f) === 0xa && pongs++, write(data))) as typeof raw.write;
  socket.on("message", (text: string) => {
    const run = JSON.parse(text) as GatewayMessage;
    if (run.type === "cancel") return void cancels.push(run.id);
    runs.push(run);
    if (answering)
      socket.send(JSON.stringify({ type: "result", id: run.id, ok: true, value: name, console: [], durationMs: 1 }));
  });
  socket.send(JSON.stringify({ type: "hello", poolSize, executor }));
  return {
    socket,
    /** The run messages it received. */
    runs,
    /** The ids of the runs the gateway cancelled. */
    cancels,
    freeze: () => (raw.pause(), raw.removeAllListeners("data")),
    mute: () => (answering = false),
    /** Pongs sent: pings the gateway sent and this agent answered. */
    pongs: () => pongs,
    close: () => socket.close(),
  };
}
