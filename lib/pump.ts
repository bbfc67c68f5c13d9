import type { Readable, Writable } from "node:stream";
import { streamed } from "./streaming-gc";

export interface PumpOptions {
  /** The body's declared length: a byte more is never written, a byte less never ends it. */
  length?: number;
  /** A writer that takes nothing for this long fails the body. */
  stallMs?: number;
  /**
   * Bytes the writer may hold before the source is paused (default: the writer's own mark).
   * Above a stream's 16 KiB default, one turn of the event loop moves more of a large body.
   */
  highWater?: number;
  /** Called once if the body cannot be passed on whole; the caller tears both sides down. */
  fail(why: string): void;
}

/**
 * Pass a body from one side of a proxy to the other, with backpressure, counting it: a body
 * longer or shorter than declared fails instead of being cut or padded (Node's own
 * strictContentLength checks too late: past the length, its write has already gone out).
 * Once the writer has closed, the rest of the source is read into nothing.
 */
export function pump(from: Readable, to: Writable, options: PumpOptions): void {
  const { length, stallMs } = options;
  let passed = 0;
  let failed = false;
  let stall: NodeJS.Timeout | undefined;
  const fail = (why: string) => {
    if (failed) return;
    failed = true;
    detach();
    options.fail(why);
  };
  const onData = (chunk: Buffer) => {
    if (length !== undefined && passed + chunk.length > length)
      return fail(`the body is longer than its declared ${length} bytes`);
    passed += chunk.length;
    streamed(chunk.length);
    let more: boolean;
    try {
      more = to.write(chunk);
    } catch (error) {
      return fail((error as Error).message);
    }
    if (!more && options.highWater !== undefined && to.writableLength < options.highWater) more = true;
    if (!more && !stall) {
      from.pause();
      if (stallMs !== undefined) stall = setTimeout(() => fail(`the reader took nothing for ${stallMs} ms`), stallMs);
    }
  };
  const onDrain = () => {
    clearTimeout(stall);
    stall = undefined;
    from.resume();
  };
  const onEnd = () => {
    if (length !== undefined && passed !== length)
      return fail(`the body ended after ${passed} of its declared ${length} bytes`);
    try {
      to.end();
    } catch (error) {
      fail((error as Error).message);
    }
  };
  const detach = () => {
    clearTimeout(stall);
    from.off("data", onData).off("end", onEnd);
    to.off("drain", onDrain).off("close", detach);
    from.resume();
  };
  from.on("data", onData);
  from.once("end", onEnd);
  to.on("drain", onDrain);
  to.once("close", detach);
}
