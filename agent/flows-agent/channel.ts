import { readSync } from "node:fs";
import {
  FLOWS_MAX_CONSOLE_BYTES,
  FLOWS_MAX_CONSOLE_LINES,
  FLOWS_MAX_ERROR_CHARS,
  FLOWS_MAX_VALUE_BYTES,
  overCaps,
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
 * Cuts a byte stream into frames. Whole frames within a read are read in place; a frame split across reads is
 * gathered into one buffer of its announced size (at most `max`), so what a peer trickles a byte per read is held
 * once, not as its reads. Throws, saying why, at the first bad frame (empty, or over the cap: known from its header)
 * or when onFrame throws; it reads nothing after that.
 */
export function frameReader(max: number, onFrame: (text: string) => void): (chunk: Buffer) => void {
  const head = Buffer.alloc(4);
  let headBytes = 0;
  let body: Buffer | undefined;
  let bodyBytes = 0;
  let failed = false;
  const announced = (length: number) => {
    if (length < 1 || length > max)
      throw new Error(length ? `a message of ${length} bytes, over the cap of ${max}` : "an empty message");
    return length;
  };
  return (chunk) => {
    if (failed) return;
    try {
      for (let at = 0; at < chunk.length;) {
        if (body) {
          const n = chunk.copy(body, bodyBytes, at);
          at += n;
          if ((bodyBytes += n) < body.length) return;
          const whole = body;
          body = undefined;
          onFrame(whole.toString("utf8"));
        } else if (headBytes === 0 && chunk.length - at >= 4) {
          const length = announced(chunk.readUInt32BE(at));
          at += 4;
          if (chunk.length - at >= length) onFrame(chunk.toString("utf8", at, (at += length)));
          else [body, bodyBytes] = [Buffer.allocUnsafe(length), 0];
        } else {
          const n = chunk.copy(head, headBytes, at, at + 4 - headBytes);
          at += n;
          if ((headBytes += n) < 4) return;
          headBytes = 0;
          [body, bodyBytes] = [Buffer.allocUnsafe(announced(head.readUInt32BE(0))), 0];
        }
      }
    } catch (error) {
      failed = true;
      body = undefined;
      throw error;
    }
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

/** A checked answer, and the text it was read from: one JSON object that holds only an answer's fields. */
export interface CheckedAnswer extends Answer {
  text: string;
}

/**
 * A runtime's answer checked against its schema and its caps, and rebuilt field by field (nothing else of what the
 * runtime sent is kept): throws, saying what does not hold, if it does not. The runtime keeps to the caps by itself;
 * one that does not (its code wrote its own frame) fails its run here.
 */
export function checkAnswer(text: string): CheckedAnswer {
  // Measured before it is parsed.
  const over = overCaps(text);
  if (over) throw new Error(over);
  const { ok, value, error, console, ...unknown } = JSON.parse(text) ?? {};
  const { name, message, stack, code, ...unknownInError } = error ?? {};
  if (
    Object.keys(unknown).length > 0 ||
    Object.keys(unknownInError).length > 0 ||
    typeof ok !== "boolean" ||
    !Array.isArray(console) ||
    !console.every((line) => typeof line === "string") ||
    // An error exactly when not ok, and then no value.
    (ok
      ? error !== undefined
      : value !== undefined ||
        !(typeof name === "string" && typeof message === "string" && optional(stack) && optional(code)))
  ) {
    throw new Error("unknown fields, or fields of the wrong types");
  }
  if (
    (JSON.stringify(value) ?? "").length > FLOWS_MAX_VALUE_BYTES ||
    console.length > FLOWS_MAX_CONSOLE_LINES ||
    console.reduce((bytes: number, line: string) => bytes + JSON.stringify(line).length, 0) > FLOWS_MAX_CONSOLE_BYTES ||
    [name, message, stack, code].some((field) => field?.length > FLOWS_MAX_ERROR_CHARS)
  ) {
    throw new Error(
      `over a cap: the result ${FLOWS_MAX_VALUE_BYTES} bytes, the console ${FLOWS_MAX_CONSOLE_LINES} lines or ${FLOWS_MAX_CONSOLE_BYTES} bytes, an error's fields ${FLOWS_MAX_ERROR_CHARS} characters`,
    );
  }
  return { ok, value, console, ...(error === undefined ? {} : { error: { name, message, stack, code } }), text };
}
