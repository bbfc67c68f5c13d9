import { mkdirSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import net from "node:net";
import os from "node:os";
import { format } from "node:util";
import { FLOWS_MAX_CONSOLE_BYTES, FLOWS_MAX_CONSOLE_LINES, FLOWS_MAX_VALUE_BYTES, FLOWS_MAX_VALUE_DEPTH, type Answer, type Job } from "../../protocol/flows";
import { WEBSOCKET_MAX_MESSAGE } from "../../protocol/websocket";
import { encodeFrame, FrameReader, withinDepth } from "./channel";

/**
 * The code that runs inside each Flows runtime process (or container): it waits for one
 * job, runs it, answers, and parks. It holds nothing of the agent's: no environment, no
 * token, no handles. Jobs arrive as frames on stdin; answers leave as frames on fd 3
 * (process executor) or on stdout (Docker executor, `--channel-stdout`).
 */

const AsyncFunction = Object.getPrototypeOf(async () => undefined).constructor as new (...args: string[]) => (inputs: unknown) => Promise<unknown>;

const cut = (text: string | undefined, max: number) => (text && text.length > max ? `${text.slice(0, max)}… (cut at ${max} characters)` : text);

/** Console lines, within the caps: past them, one last line says so. */
function consoleLines() {
  const lines: string[] = [];
  let bytes = 0;
  let partial = "";
  const add = (line: string) => {
    if (lines.length >= FLOWS_MAX_CONSOLE_LINES) return;
    const size = JSON.stringify(line).length;
    if (lines.length === FLOWS_MAX_CONSOLE_LINES - 1 || bytes + size > FLOWS_MAX_CONSOLE_BYTES - 200) {
      lines.push(`[console cut: over the cap of ${FLOWS_MAX_CONSOLE_LINES} lines or ${FLOWS_MAX_CONSOLE_BYTES} bytes]`);
      bytes = Infinity;
      return;
    }
    lines.push(line);
    bytes += size;
  };
  return {
    lines,
    add,
    /** Raw writes (process.stdout.write) become lines at their newlines. */
    write(text: string) {
      const parts = (partial + text).split("\n");
      partial = parts.pop() as string;
      parts.forEach(add);
      if (partial.length > 65536) (add(partial), (partial = ""));
    },
    end: () => (partial ? (add(partial), (partial = "")) : undefined),
  };
}

export async function runJob(job: Job): Promise<Answer> {
  const output = consoleLines();
  for (const level of ["log", "info", "warn", "error", "debug"] as const) {
    console[level] = (...args: unknown[]) => output.add(level === "log" ? format(...args) : `${level}: ${format(...args)}`);
  }
  for (const stream of [process.stdout, process.stderr]) {
    stream.write = ((chunk: unknown) => (output.write(typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString()), true)) as typeof stream.write;
  }
  try {
    const fn = new AsyncFunction("inputs", job.kind === "expression" ? `return (${job.code}\n);` : job.code);
    const json = JSON.stringify(await fn(job.inputs ?? {}));
    if (json !== undefined && json.length > FLOWS_MAX_VALUE_BYTES) throw new RangeError(`the result is ${json.length} bytes of JSON, over the cap of ${FLOWS_MAX_VALUE_BYTES}`);
    const value = json === undefined ? null : JSON.parse(json);
    if (!withinDepth(value, FLOWS_MAX_VALUE_DEPTH)) throw new RangeError(`the result nests deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH} levels`);
    output.end();
    return { ok: true, value, console: output.lines };
  } catch (thrown) {
    output.end();
    const error = thrown instanceof Error ? thrown : new Error(`a non-Error was thrown: ${cut(format(thrown), 1000)}`);
    const code = (error as { code?: unknown }).code;
    return { ok: false, error: { name: cut(String(error.name), 200) as string, message: cut(String(error.message), 60_000) as string, stack: cut(typeof error.stack === "string" ? error.stack : undefined, 60_000), ...(typeof code === "string" ? { code: cut(code, 200) } : {}) }, console: output.lines };
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
  for (const name of ["kill", "_kill", "_debugProcess", "_debugEnd", "setuid", "setgid", "seteuid", "setegid", "setgroups", "initgroups", "dlopen"]) {
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
  const scratch = argv.find((arg) => arg.startsWith("--scratch="))?.slice(10);
  if (scratch) {
    // Made by the runtime itself, so it is the runtime's user's; never one that exists already.
    mkdirSync(scratch, { mode: 0o700 });
    process.chdir(scratch);
  }
  const toStdout = argv.includes("--channel-stdout");
  const writeStdout = process.stdout.write.bind(process.stdout);
  const channel = toStdout ? undefined : new net.Socket({ fd: 3, readable: false, writable: true });
  const send = (message: unknown, then?: () => void) => (channel ? channel.write(encodeFrame(message), then) : writeStdout(encodeFrame(message), then));
  confine();
  // A spare waits with its code paths compiled: the run it takes does not pay for that.
  await runJob({ kind: "expression", code: "[0].map(String)" });
  await runJob({ kind: "block", code: "return JSON.stringify({ a: 1 })" });
  const reader = new FrameReader(WEBSOCKET_MAX_MESSAGE, (text) => {
    process.stdin.pause();
    void runJob(JSON.parse(text) as Job).then((answer) => send(answer, park));
  });
  process.stdin.on("data", (chunk: Buffer) => reader.push(chunk));
  send({ ready: true });
}
