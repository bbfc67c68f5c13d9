import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, openSync, writeFileSync } from "node:fs";
import path from "node:path";
import {
  FLOWS_MAX_CONSOLE_BYTES,
  FLOWS_MAX_CONSOLE_LINES,
  FLOWS_MAX_ERROR_CHARS,
  FLOWS_MAX_VALUE_BYTES,
  FLOWS_MAX_VALUE_CONTAINERS,
  FLOWS_MAX_VALUE_DEPTH,
  FLOWS_MAX_VALUE_KEYS,
} from "../../protocol/flows";
import { scratchDir } from "../../devkit/helpers";
import { checkAnswer, encodeFrame, frameReader, readFrameSync } from "./channel";

describe("the runtime channel: frames", () => {
  describe("read blocking, as a runtime waits for its job", () => {
    const fromFile = (bytes: Buffer, read: (fd: number) => unknown) => {
      const file = path.join(scratchDir("frame-"), "channel");
      writeFileSync(file, bytes);
      const fd = openSync(file, "r");
      try {
        return read(fd);
      } finally {
        closeSync(fd);
      }
    };

    it("reads exactly one frame, leaving what follows unread", () => {
      const stream = Buffer.concat([encodeFrame({ kind: "expression", code: "1" }), encodeFrame({ next: true })]);
      const [first, second, end] = fromFile(stream, (fd) => [0, 1, 2].map(() => readFrameSync(fd))) as string[];
      assert.deepEqual(
        [JSON.parse(first), JSON.parse(second), end],
        [{ kind: "expression", code: "1" }, { next: true }, undefined],
      );
    });

    it("the end of input, even inside a frame, is no frame", () => {
      assert.equal(
        fromFile(Buffer.alloc(0), (fd) => readFrameSync(fd)),
        undefined,
      );
      assert.equal(
        fromFile(encodeFrame({ a: 1 }).subarray(0, 6), (fd) => readFrameSync(fd)),
        undefined,
      );
    });

    it("reads a frame that arrives in pieces over a pipe", async () => {
      // A child blocks in readFrameSync on its stdin while the frame comes a few bytes at a time.
      const channel = require.resolve("./channel");
      const child = spawn(
        process.execPath,
        ["-e", `process.stdout.write(require(${JSON.stringify(channel)}).readFrameSync(0))`],
        { stdio: ["pipe", "pipe", "inherit"] },
      );
      let out = "";
      child.stdout.on("data", (chunk) => (out += chunk));
      const frame = encodeFrame({ code: "é".repeat(5000) });
      for (let at = 0; at < frame.length; at += 4000) {
        await new Promise<void>((resolve) => child.stdin.write(frame.subarray(at, at + 4000), () => resolve()));
      }
      await new Promise((resolve) => child.on("close", resolve));
      assert.deepEqual(JSON.parse(out), { code: "é".repeat(5000) });
    });
  });

  it("a frame is a u32 big-endian length and the JSON", () => {
    assert.deepEqual([...encodeFrame({ a: "é" })], [0, 0, 0, 10, ...Buffer.from('{"a":"é"}')]);
  });

  it("reads frames whatever the reads: one byte at a time, several in one read", () => {
    const stream = Buffer.concat([
      encodeFrame({ ready: true }),
      encodeFrame({ ok: true, value: "x".repeat(70_000) }),
      encodeFrame([]),
    ]);
    for (const size of [1, 3, 4, 5, 1024, stream.length]) {
      const frames: string[] = [];
      const read = frameReader(1 << 20, (text) => frames.push(text));
      for (let at = 0; at < stream.length; at += size) read(stream.subarray(at, at + size));
      assert.deepEqual(
        frames.map((f) => JSON.parse(f)),
        [{ ready: true }, { ok: true, value: "x".repeat(70_000) }, []],
        `reads of ${size}`,
      );
    }
  });

  it("a frame over the cap is refused from its header, before its body is read", () => {
    const read = frameReader(100, () => assert.fail("no frame"));
    assert.throws(
      () => read(Buffer.from([0xff, 0xff, 0xff, 0xff])),
      /a message of 4294967295 bytes, over the cap of 100/,
    );
    assert.throws(() => frameReader(100, () => undefined)(Buffer.from("garbage")), /over the cap of 100/);
  });

  it("an empty frame is refused, and nothing after the first bad frame is read, in that read or later", () => {
    const frames: string[] = [];
    const read = frameReader(100, (text) => frames.push(text));
    const empties = Buffer.alloc(4 * 10_000);
    assert.throws(() => read(Buffer.concat([encodeFrame("a"), empties, encodeFrame("b")])), /an empty message/);
    read(encodeFrame("c"));
    assert.deepEqual(frames, ['"a"']);
  });

  it("a frame its reader refuses (onFrame throws) is the last one read", () => {
    const frames: string[] = [];
    const read = frameReader(100, (text) => {
      frames.push(text);
      if (frames.length === 2) throw new Error("out of turn");
    });
    const flood = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => encodeFrame(i)));
    assert.throws(() => read(flood), /out of turn/);
    read(encodeFrame("later"));
    assert.deepEqual(frames, ["0", "1"]);
  });

  it("many frames in one read are read in place: a byte is copied at most once, not once per frame", () => {
    const flood = Buffer.concat(Array.from({ length: 20_000 }, () => encodeFrame(1)));
    let copied = 0;
    const { copy } = Buffer.prototype;
    Buffer.prototype.copy = function (this: Buffer, ...args: Parameters<Buffer["copy"]>) {
      const n = copy.apply(this, args);
      copied += n;
      return n;
    };
    let frames = 0;
    try {
      const read = frameReader(100, () => frames++);
      // Split mid-frame and mid-header: only the split frames' bytes are gathered.
      read(flood.subarray(0, 7));
      read(flood.subarray(7, 10_002));
      read(flood.subarray(10_002));
    } finally {
      Buffer.prototype.copy = copy;
    }
    assert.equal(frames, 20_000);
    assert.ok(copied <= 10, `${copied} bytes copied for ${flood.length} bytes of frames`);
  });

  it("a frame trickled a byte per read is gathered into one buffer of its size, allocated once", () => {
    const frame = encodeFrame({ ok: true, value: "x".repeat(100_000) });
    const sizes: number[] = [];
    const { allocUnsafe } = Buffer;
    Buffer.allocUnsafe = (size: number) => (sizes.push(size), allocUnsafe(size));
    const frames: string[] = [];
    try {
      const read = frameReader(1 << 20, (text) => frames.push(text));
      for (let at = 0; at < frame.length; at++) read(frame.subarray(at, at + 1));
    } finally {
      Buffer.allocUnsafe = allocUnsafe;
    }
    assert.deepEqual(sizes, [frame.length - 4]);
    assert.deepEqual(
      frames.map((f) => JSON.parse(f).value.length),
      [100_000],
    );
  });
});

describe("the runtime channel: answers", () => {
  it("a sound answer is rebuilt field by field, and keeps the text it was read from", () => {
    const text = '{"ok":true,"value":{"a":[1]},"console":["x"]}';
    assert.deepEqual(checkAnswer(text), { ok: true, value: { a: [1] }, console: ["x"], text });
    const failed = checkAnswer('{"ok":false,"error":{"name":"E","message":"m","code":"C"},"console":[]}');
    assert.deepEqual(failed.error, { name: "E", message: "m", stack: undefined, code: "C" });
  });

  it("refuses unknown fields (type, id, __proto__), wrong types, deep values", () => {
    for (const [text, why] of [
      ['{"ok":true,"console":[],"type":"draining","id":"other"}', /unknown fields/],
      ['{"ok":true,"console":[],"__proto__":{"polluted":1}}', /unknown fields/],
      ['{"type":"hello","poolSize":64}', /unknown fields/],
      ['{"ok":"yes","console":[]}', /wrong types/],
      ['{"ok":true,"console":"x"}', /wrong types/],
      ['{"ok":true,"console":[1]}', /wrong types/],
      ['{"ok":false,"console":[],"error":null}', /wrong types/],
      ['{"ok":false,"console":[],"error":{"name":5,"message":"m"}}', /wrong types/],
      ['{"ok":false,"console":[],"error":{"name":"E","message":"m","type":"result","value":1}}', /unknown fields/],
      ['{"ok":false,"console":[],"error":{"name":"E","message":"m","__proto__":{"polluted":1}}}', /unknown fields/],
      ["null", /wrong types/],
      ["[1]", /unknown fields/],
      [
        `{"ok":true,"console":[],"value":${"[".repeat(FLOWS_MAX_VALUE_DEPTH + 1)}${"]".repeat(FLOWS_MAX_VALUE_DEPTH + 1)}}`,
        /nests deeper than the cap of 256/,
      ],
    ] as const) {
      assert.throws(() => checkAnswer(text), why, text.slice(0, 80));
    }
    assert.throws(() => checkAnswer("{not json"), SyntaxError);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it("refuses what the runtime's own caps would have cut (its code wrote the frame itself), an error beside ok, a value beside an error", () => {
    const answer = (fields: Record<string, unknown>) => JSON.stringify({ ok: true, console: [], ...fields });
    const line = "x".repeat(1100);
    const caps =
      /over a cap: the result 4194304 bytes, the console 1000 lines or 1048576 bytes, an error's fields 65536 characters$/;
    for (const [text, why] of [
      [answer({ value: "v".repeat(FLOWS_MAX_VALUE_BYTES) }), caps],
      [answer({ console: Array(FLOWS_MAX_CONSOLE_LINES + 1).fill("") }), caps],
      [answer({ console: Array(FLOWS_MAX_CONSOLE_LINES).fill(line) }), caps],
      [answer({ ok: false, error: { name: "E", message: "m".repeat(FLOWS_MAX_ERROR_CHARS + 1) } }), caps],
      [answer({ error: { name: "E", message: "m" } }), /wrong types/],
      [answer({ ok: false }), /wrong types/],
      [answer({ ok: false, value: 1, error: { name: "E", message: "m" } }), /wrong types/],
    ] as const) {
      assert.throws(() => checkAnswer(text), why, text.slice(0, 80));
    }
    // At the caps, all is taken.
    const full = checkAnswer(
      answer({
        value: "v".repeat(FLOWS_MAX_VALUE_BYTES - 2),
        console: Array(FLOWS_MAX_CONSOLE_LINES).fill("x".repeat(FLOWS_MAX_CONSOLE_BYTES / FLOWS_MAX_CONSOLE_LINES - 2)),
      }),
    );
    assert.equal((full.value as string).length, FLOWS_MAX_VALUE_BYTES - 2);
    assert.equal(full.console.length, FLOWS_MAX_CONSOLE_LINES);
    const error = { name: "E", message: "m".repeat(FLOWS_MAX_ERROR_CHARS), stack: "s".repeat(FLOWS_MAX_ERROR_CHARS) };
    assert.deepEqual(checkAnswer(answer({ ok: false, error })).error, { ...error, code: undefined });
  });

  it("an answer of more objects and arrays than the cap is refused before it is parsed", () => {
    const many = `{"ok":true,"console":[],"value":[${"[],".repeat(FLOWS_MAX_VALUE_CONTAINERS)}[]]}`;
    assert.throws(() => checkAnswer(many), /more than the cap of 100000 objects and arrays/);
    const within = `{"ok":true,"console":[],"value":[${"[],".repeat(FLOWS_MAX_VALUE_CONTAINERS - 4)}[]]}`;
    assert.equal((checkAnswer(within).value as unknown[]).length, FLOWS_MAX_VALUE_CONTAINERS - 3);
    // Keys too: one object of as many new keys costs as much to read as many objects.
    const keys = Array.from({ length: FLOWS_MAX_VALUE_KEYS }, (_, i) => `"k${i}":0`).join(",");
    assert.throws(
      () => checkAnswer(`{"ok":true,"console":[],"value":{${keys}}}`),
      /more than the cap of 250000 object keys/,
    );
    // The answer's own ok, console and value count too.
    const fewer = Array.from({ length: FLOWS_MAX_VALUE_KEYS - 3 }, (_, i) => `"k${i}":0`).join(",");
    const value = checkAnswer(`{"ok":true,"console":[],"value":{${fewer}}}`).value as object;
    assert.equal(Object.keys(value).length, FLOWS_MAX_VALUE_KEYS - 3);
  });
});
