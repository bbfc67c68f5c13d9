import { syncBuiltinESMExports } from "node:module";
import os from "node:os";
import { format } from "node:util";
import type { Answer, Job } from "../../protocol/flows";

/**
 * The code that runs inside each Flows runtime process (or container): it waits for one
 * job, runs it, answers, and exits. It holds nothing of the agent's: no environment, no
 * token, no handles. Jobs and answers go over the IPC channel (process executor) or as
 * lines on stdin/stdout (Docker executor: the answer line starts with RESULT_PREFIX).
 */

export const RESULT_PREFIX = "\u0000agentpools-result:";
const MAX_CONSOLE_LINES = 1000;

const AsyncFunction = Object.getPrototypeOf(async () => undefined).constructor as new (...args: string[]) => (inputs: unknown) => Promise<unknown>;

export async function runJob(job: Job): Promise<Answer> {
  const lines: string[] = [];
  for (const level of ["log", "info", "warn", "error", "debug"] as const) {
    console[level] = (...args: unknown[]) => {
      if (lines.length < MAX_CONSOLE_LINES) lines.push(level === "log" ? format(...args) : `${level}: ${format(...args)}`);
    };
  }
  try {
    const fn = new AsyncFunction("inputs", job.kind === "expression" ? `return (${job.code}\n);` : job.code);
    const value = await fn(job.inputs ?? {});
    const json = JSON.stringify(value);
    return { ok: true, value: json === undefined ? null : JSON.parse(json), console: lines };
  } catch (thrown) {
    const error = thrown instanceof Error ? thrown : new Error(`a non-Error was thrown: ${format(thrown)}`);
    const code = (error as { code?: unknown }).code;
    return { ok: false, error: { name: error.name, message: error.message, stack: error.stack, ...(typeof code === "string" ? { code } : {}) }, console: lines };
  }
}

/**
 * Close what Node's permission model leaves open to a process of the agent's own user:
 * signalling other processes (the agent among them) and changing their priority. Done
 * before any user code runs; internal bindings, which could restore them, are denied by
 * the permission model.
 */
export function confine(): void {
  const refuse = (what: string) => () => {
    throw Object.assign(new Error(`${what} is not available to flow code`), { code: "ERR_ACCESS_DENIED" });
  };
  process.kill = refuse("process.kill");
  (process as unknown as { _kill: unknown })._kill = refuse("process.kill");
  os.setPriority = refuse("os.setPriority");
  // import("node:os") must see the replacement too.
  syncBuiltinESMExports();
}

/**
 * After its answer a runtime runs nothing more: its thread sleeps (no timer or promise the
 * job left behind gets to run) until the agent kills it once the answer is delivered, so the
 * process's teardown is not in the way of that answer. Exits by itself if nobody does.
 */
function park(): never {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30_000);
  process.exit(0);
}

/** Run as a runtime: announce readiness, take one job, answer, park. */
export async function runRunner(): Promise<void> {
  confine();
  // A spare waits with its code paths compiled: the run it takes does not pay for that.
  await runJob({ kind: "expression", code: "[0].map(String)" });
  await runJob({ kind: "block", code: "return JSON.stringify({ a: 1 })" });
  const send = process.send?.bind(process);
  if (send) {
    // The agent's first message only warms the channel (a process's first IPC message costs
    // half a millisecond more); the second is the job.
    process.once("message", () => {
      process.once("message", (job: Job) => {
        void runJob(job).then((answer) => send(answer, park));
      });
      send({ ready: true });
    });
    send({ started: true });
    return;
  }
  let input = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    input += chunk;
    const newline = input.indexOf("\n");
    if (newline === -1) return;
    process.stdin.pause();
    void runJob(JSON.parse(input.slice(0, newline))).then((answer) => process.stdout.write(`\n${RESULT_PREFIX}${JSON.stringify(answer)}\n`, () => process.exit(0)));
  });
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify({ ready: true })}\n`);
}
