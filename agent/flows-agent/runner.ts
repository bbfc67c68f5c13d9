import { mkdirSync, writeSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import os from "node:os";
import { format } from "node:util";
import {
  FLOWS_MAX_CONSOLE_BYTES,
  FLOWS_MAX_CONSOLE_LINES,
  FLOWS_MAX_ERROR_CHARS,
  FLOWS_MAX_VALUE_BYTES,
  type Answer,
  type Job,
} from "../../protocol/flows";
import { frameOf, readFrameSync } from "./channel";
import { BUILT_FOR } from "../config/built-for";

/**
 * The code that runs inside each Flows runtime process (or container): it waits for one
 * job, runs it, answers, and parks. It holds nothing of the agent's: no environment, no
 * token, no handles. Jobs arrive as frames on stdin; answers leave as frames on fd 3
 * (process executor) or on stdout (Docker executor, `--channel-stdout`).
 */

const AsyncFunction = Object.getPrototypeOf(async () => undefined).constructor as new (
  ...args: string[]
) => (inputs: unknown) => Promise<unknown>;

/** Where console output goes: the current job's collector. */
let toConsole: (line: string) => void = () => undefined;
/** What a raw write left after its last newline. */
let partial = "";

/**
 * Console methods and raw writes (process.stdout.write) become the job's console lines. Installed once, before the
 * runtime says it is ready: the job it takes finds them in place.
 */
function captureConsole(): void {
  for (const level of ["log", "info", "warn", "error", "debug"] as const) {
    console[level] = (...args: unknown[]) =>
      toConsole(level === "log" ? format(...args) : `${level}: ${format(...args)}`);
  }
  for (const stream of [process.stdout, process.stderr]) {
    stream.write = ((chunk: string | Uint8Array) => {
      const parts = (partial + Buffer.from(chunk)).split("\n");
      partial = parts.pop() as string;
      parts.forEach((line) => toConsole(line));
      return true;
    }) as typeof stream.write;
  }
}

/**
 * Runs a job; its answer as JSON text (an `Answer`). A result goes in as the text it was measured as, not parsed back
 * and written again.
 */
export async function runJob(job: Job): Promise<string> {
  // Console lines within the caps (counted as JSON, escapes included); past them, one last line says so.
  const lines: string[] = [];
  let bytes = 0;
  partial = "";
  toConsole = (line: string) => {
    if (bytes < 0) return;
    bytes += JSON.stringify(line).length;
    if (lines.length < FLOWS_MAX_CONSOLE_LINES - 1 && bytes < FLOWS_MAX_CONSOLE_BYTES - 100)
      return void lines.push(line);
    lines.push(`[console cut at the cap: ${FLOWS_MAX_CONSOLE_LINES} lines, ${FLOWS_MAX_CONSOLE_BYTES} bytes]`);
    bytes = -1;
  };
  const finish = (fields: string) => {
    if (partial) toConsole(partial);
    return `{${fields},"console":${JSON.stringify(lines)}}`;
  };
  try {
    const fn = new AsyncFunction("inputs", job.kind === "expression" ? `return (${job.code}\n);` : job.code);
    const json = JSON.stringify(await fn(job.inputs ?? {})) ?? "null";
    if (json.length > FLOWS_MAX_VALUE_BYTES)
      throw new RangeError(`the result is ${json.length} bytes of JSON, over the cap of ${FLOWS_MAX_VALUE_BYTES}`);
    return finish(`"ok":true,"value":${json}`);
  } catch (thrown) {
    const error =
      thrown instanceof Error ? thrown : new Error(`a non-Error was thrown: ${format(thrown).slice(0, 1000)}`);
    const code = (error as { code?: unknown }).code;
    const cut = (field: unknown) => {
      const text = String(field);
      return text.length > FLOWS_MAX_ERROR_CHARS
        ? `${text.slice(0, FLOWS_MAX_ERROR_CHARS - 50)} [cut at the cap]`
        : text;
    };
    const answer: Omit<Answer, "console"> = {
      ok: false,
      error: {
        name: cut(error.name),
        message: cut(error.message),
        stack: error.stack && cut(error.stack),
        code: typeof code === "string" ? cut(code) : undefined,
      },
    };
    return finish(JSON.stringify(answer).slice(1, -1));
  }
}

/**
 * Close what Node's permission model leaves open (a second layer: the kernel already keeps
 * the runtime from other processes): signalling processes, opening another process's
 * inspector (_debugProcess), changing priorities, credentials, loading addons. Done before
 * any user code runs; internal bindings, which could restore them, are denied by the
 * permission model.
 */
export function confine(): void {
  const refuse = (what: string) => () => {
    throw Object.assign(new Error(`${what} is not available to flow code`), { code: "ERR_ACCESS_DENIED" });
  };
  for (const name of ["kill", "_kill", "_debugProcess", "setuid", "setgid", "dlopen"]) {
    (process as unknown as Record<string, unknown>)[name] = refuse(`process.${name}`);
  }
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

/** Run as a runtime: make its scratch (when told), warm up, say ready, take one job, answer, park. */
export async function runRunner(argv = process.argv): Promise<void> {
  // Only "user" isolation, which EC2 never uses (its runtimes' scratch is their namespace's /tmp), names one: in the
  // environment (not the command line, which any user reads), taken out of it with the flags naming it.
  const scratch = BUILT_FOR.platform !== "ec2" && process.env.AGENTPOOLS_SCRATCH;
  delete process.env.AGENTPOOLS_SCRATCH;
  delete process.env.NODE_OPTIONS;
  if (scratch) {
    // Made by the runtime itself, so it is the runtime's user's; never one that exists already. Its group the agent's
    // (the scratch root is setgid), which reads it to measure its disk; no other runtime's.
    mkdirSync(scratch, { mode: 0o750 });
    process.chdir(scratch);
  }
  // On fd 3, which nothing here wraps in a stream (so it stays blocking), frames leave by write(2) at once: a runtime
  // has nothing else to do meanwhile. Stdout is Node's stream (non-blocking): frames wait their turn there.
  const toStdout = argv.includes("--channel-stdout");
  const writeStdout = process.stdout.write.bind(process.stdout);
  const send = (json: string, then = () => undefined) => {
    const frame = frameOf(json);
    if (toStdout) return void writeStdout(frame, then);
    for (let at = 0; at < frame.length;) at += writeSync(3, frame, at);
    then();
  };
  confine();
  captureConsole();
  // A spare waits with its code paths compiled: the run it takes does not pay for that.
  await runJob({ kind: "expression", code: "[0].map(String)" });
  await runJob({ kind: "block", code: "return JSON.stringify({ a: 1 })" });
  send('{"ready":true}');
  // Nothing else to do until the job comes: wait for it in read(2), the event loop stopped.
  const job = readFrameSync(0);
  if (job === undefined) process.exit(0);
  send(await runJob(JSON.parse(job) as Job), park);
}
