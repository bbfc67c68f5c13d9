import { FLOWS_MAX_CONSOLE_BYTES, FLOWS_MAX_CONSOLE_LINES, FLOWS_MAX_VALUE_DEPTH, type Answer } from "../../protocol/flows";

/**
 * The channel between the agent and a runtime: frames of a u32 big-endian length and that
 * many bytes of UTF-8 JSON, over the runtime's pipes (pipes carry no file descriptors). The
 * agent reads a runtime's side as hostile: a frame over the cap, bytes that are not a frame
 * or JSON that is not an answer end that runtime and fail its run, never the agent.
 */
export function encodeFrame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), "utf8");
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, 4);
  return frame;
}

/** Cuts a byte stream into frames; each read is copied once, however a frame is split. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private expected = -1;

  constructor(
    private readonly max: number,
    private readonly onFrame: (text: string) => void,
  ) {}

  /** Throws, saying why, on a frame longer than the cap. */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    for (;;) {
      if (this.expected < 0) {
        if (this.size < 4) return;
        this.expected = this.take(4).readUInt32BE(0);
        if (this.expected > this.max) throw new Error(`a message of ${this.expected} bytes, over the cap of ${this.max}`);
      }
      if (this.size < this.expected) return;
      const body = this.take(this.expected);
      this.expected = -1;
      this.onFrame(body.toString("utf8"));
    }
  }

  private take(count: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size);
    this.chunks = all.length > count ? [all.subarray(count)] : [];
    this.size -= count;
    return all.subarray(0, count);
  }
}

/** Whether a JSON value nests no deeper than `limit` (walked without recursion). */
export function withinDepth(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [node, depth] = item;
    if (node === null || typeof node !== "object") continue;
    if (depth >= limit) return false;
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  return true;
}

const isText = (value: unknown, max: number) => typeof value === "string" && value.length <= max;

/**
 * A runtime's answer checked against its schema, rebuilt field by field (nothing else of what
 * the runtime sent is kept): throws, saying which field and which cap, if it does not hold.
 */
export function checkAnswer(text: string): Answer {
  const answer = JSON.parse(text) as Record<string, unknown>;
  if (answer === null || typeof answer !== "object" || Array.isArray(answer)) throw new Error("the answer is not an object");
  const unknown = Object.keys(answer).filter((key) => !["ok", "value", "error", "console"].includes(key));
  if (unknown.length > 0) throw new Error(`the answer has unknown fields: ${unknown.join(", ").slice(0, 100)}`);
  const { ok, value, error, console } = answer;
  if (typeof ok !== "boolean") throw new Error("the answer's ok is not a boolean");
  if (!Array.isArray(console) || !console.every((line) => typeof line === "string")) throw new Error("the answer's console is not a list of strings");
  if (console.length > FLOWS_MAX_CONSOLE_LINES) throw new Error(`the console has ${console.length} lines, over the cap of ${FLOWS_MAX_CONSOLE_LINES}`);
  const consoleBytes = console.reduce((sum, line) => sum + Buffer.byteLength(line), 0);
  if (consoleBytes > FLOWS_MAX_CONSOLE_BYTES) throw new Error(`the console is ${consoleBytes} bytes, over the cap of ${FLOWS_MAX_CONSOLE_BYTES}`);
  if (!withinDepth(value, FLOWS_MAX_VALUE_DEPTH)) throw new Error(`the result nests deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH} levels`);
  const checked: Answer = { ok, console: console as string[] };
  if (value !== undefined) checked.value = value;
  if (error !== undefined) {
    const { name, message, stack, code } = (error ?? {}) as Record<string, unknown>;
    if (!isText(name, 256) || !isText(message, 65536) || !(stack === undefined || isText(stack, 65536)) || !(code === undefined || isText(code, 256))) {
      throw new Error("the answer's error is not {name, message, stack?, code?} of strings within their caps");
    }
    checked.error = { name: name as string, message: message as string, ...(stack === undefined ? {} : { stack: stack as string }), ...(code === undefined ? {} : { code: code as string }) };
  }
  return checked;
}
