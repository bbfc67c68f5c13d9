import { readSync } from "node:fs";
import {
  FLOWS_MAX_VALUE_CONTAINERS,
  FLOWS_MAX_VALUE_DEPTH,
  FLOWS_MAX_VALUE_KEYS,
  jsonCost,
  type Answer,
} from "../../protocol/flows";

/**
 * The channel between the agent and a runtime: frames of a u32 big-endian length and that
 * many bytes of UTF-8 JSON, over the runtime's stdio (see executor.ts for what those are). The
 * agent reads a runtime's side as hostile: a frame over the cap, bytes that are not a frame
 * or JSON that is not an answer end that runtime and fail its run, never the agent.
 */
export function encodeFrame(message: unknown): Buffer {
  return frameOf(JSON.stringify(message));
}

/** A frame of JSON text already made: one buffer, written once. */
export function frameOf(json: string): Buffer {
  const length = Buffer.byteLength(json);
  const frame = Buffer.allocUnsafe(4 + length);
  frame.writeUInt32BE(length);
  frame.write(json, 4);
  return frame;
}

/**
 * Cuts a byte stream into frames. Reads wait, uncopied, until the next frame is whole; then
 * every whole frame of them is read in place. Throws, saying why, at the first bad frame (empty,
 * or over the cap: known from its header) or when onFrame throws; it reads nothing after that.
 */
export function frameReader(max: number, onFrame: (text: string) => void): (chunk: Buffer) => void {
  let chunks: Buffer[] = [];
  let size = 0;
  let needed = 4;
  return (chunk) => {
    if (needed < 0) return;
    chunks.push(chunk);
    if ((size += chunk.length) < needed) return;
    const all = chunks.length > 1 ? Buffer.concat(chunks, size) : chunk;
    let at = 0;
    needed = 4;
    try {
      while (size - at >= 4) {
        const length = all.readUInt32BE(at);
        if (length < 1 || length > max)
          throw new Error(length ? `a message of ${length} bytes, over the cap of ${max}` : "an empty message");
        if (size - at < 4 + length) {
          needed = 4 + length;
          break;
        }
        onFrame(all.toString("utf8", at + 4, (at += 4 + length)));
      }
    } catch (error) {
      needed = -1;
      chunks = [];
      throw error;
    }
    chunks = [all.subarray(at)];
    size -= at;
  };
}

/**
 * Reads one frame from `fd`, blocking until it is whole: how a runtime waits for its single job
 * (from the agent, which it trusts: no cap). A blocked read(2) wakes faster than a stream's first
 * event in a fresh process. Undefined at the end of input. The fd must be blocking, as a child's
 * stdio is (libuv makes fds 0-2 blocking before exec).
 */
export function readFrameSync(fd: number): string | undefined {
  const exactly = (size: number) => {
    const buffer = Buffer.allocUnsafe(size);
    for (let at = 0, n; at < size; at += n) if ((n = readSync(fd, buffer, at, size - at, null)) === 0) return;
    return buffer;
  };
  const head = exactly(4);
  return head && exactly(head.readUInt32BE())?.toString();
}

const optional = (value: unknown) => value === undefined || typeof value === "string";

/**
 * A runtime's answer checked against its schema and rebuilt field by field (nothing else of
 * what the runtime sent is kept): throws, saying what does not hold, if it does not.
 */
export function checkAnswer(text: string): Answer {
  // Measured before it is parsed: the answer's own object is one level above its value.
  const cost = jsonCost(text, FLOWS_MAX_VALUE_DEPTH + 1);
  if (cost === "depth") throw new Error(`the result nests deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}`);
  if (cost === "keys") throw new Error(`the answer holds more than the cap of ${FLOWS_MAX_VALUE_KEYS} object keys`);
  if (cost) throw new Error(`the answer holds more than the cap of ${FLOWS_MAX_VALUE_CONTAINERS} objects and arrays`);
  const { ok, value, error, console, ...unknown } = JSON.parse(text) ?? {};
  const { name, message, stack, code } = error ?? {};
  if (
    Object.keys(unknown).length > 0 ||
    typeof ok !== "boolean" ||
    !Array.isArray(console) ||
    !console.every((line) => typeof line === "string") ||
    !(
      error === undefined ||
      (typeof name === "string" && typeof message === "string" && optional(stack) && optional(code))
    )
  ) {
    throw new Error("unknown fields, or fields of the wrong types");
  }
  return { ok, value, console, ...(error === undefined ? {} : { error: { name, message, stack, code } }) };
}
