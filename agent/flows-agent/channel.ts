import { FLOWS_MAX_VALUE_DEPTH, type Answer } from "../../protocol/flows";

/**
 * The channel between the agent and a runtime: frames of a u32 big-endian length and that
 * many bytes of UTF-8 JSON, over the runtime's pipes (pipes carry no file descriptors). The
 * agent reads a runtime's side as hostile: a frame over the cap, bytes that are not a frame
 * or JSON that is not an answer end that runtime and fail its run, never the agent.
 */
export function encodeFrame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

/** Cuts a byte stream into frames, joining the reads of a frame once it is whole; throws, saying why, on a frame over the cap. */
export function frameReader(max: number, onFrame: (text: string) => void): (chunk: Buffer) => void {
  let chunks: Buffer[] = [];
  let size = 0;
  let expected = -1;
  return (chunk) => {
    chunks.push(chunk);
    size += chunk.length;
    while (size >= (expected < 0 ? 4 : expected)) {
      const all = Buffer.concat(chunks, size);
      const length = expected < 0 ? 4 : expected;
      chunks = [all.subarray(length)];
      size -= length;
      if (expected < 0) {
        if ((expected = all.readUInt32BE(0)) > max) throw new Error(`a message of ${expected} bytes, over the cap of ${max}`);
      } else {
        expected = -1;
        onFrame(all.toString("utf8", 0, length));
      }
    }
  };
}

/** Whether a JSON value nests no deeper than `limit` (walked without recursion). */
export function withinDepth(value: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  for (let item; (item = stack.pop()); ) {
    const [node, depth] = item;
    if (node && typeof node === "object") {
      if (depth >= limit) return false;
      for (const child of Object.values(node)) stack.push([child, depth + 1]);
    }
  }
  return true;
}

const optional = (value: unknown) => value === undefined || typeof value === "string";

/**
 * A runtime's answer checked against its schema and rebuilt field by field (nothing else of
 * what the runtime sent is kept): throws, saying what does not hold, if it does not.
 */
export function checkAnswer(text: string): Answer {
  const { ok, value, error, console, ...unknown } = JSON.parse(text) ?? {};
  const { name, message, stack, code } = error ?? {};
  if (Object.keys(unknown).length > 0 || typeof ok !== "boolean" || !Array.isArray(console) || !console.every((line) => typeof line === "string") || !(error === undefined || (typeof name === "string" && typeof message === "string" && optional(stack) && optional(code)))) {
    throw new Error("unknown fields, or fields of the wrong types");
  }
  if (!withinDepth(value, FLOWS_MAX_VALUE_DEPTH)) throw new Error(`the result nests deeper than the cap of ${FLOWS_MAX_VALUE_DEPTH}`);
  return { ok, value, console, ...(error === undefined ? {} : { error: { name, message, stack, code } }) };
}
