import assert from "node:assert/strict";
import { markRunLine, MASK, MAX_LINE, RUN_LINE_MARK, runOutput } from "./output";

function lines(secrets: string[], chunks: (string | Buffer)[]): string[] {
  const out: string[] = [];
  const output = runOutput(secrets, (batch) => out.push(...batch));
  for (const chunk of chunks) output.write(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  output.end();
  return out;
}

describe("run output: lines and masking", () => {
  it("masks every occurrence, the longer of two overlapping values first", () => {
    assert.deepEqual(lines(["abc", "abcdef", ""], ["x abcdef y abc z"]), [`x ${MASK} y ${MASK} z`]);
    assert.deepEqual(lines([], ["untouched"]), ["untouched"]);
    assert.deepEqual(lines(["a.c"], ["abc a.c"]), [`abc ${MASK}`], "values are literal, not patterns");
  });

  it("cuts output into lines whatever the reads, dropping CR of CRLF, keeping a last unterminated line", () => {
    assert.deepEqual(lines([], ["one\r\ntw", "o\nthr", "ee"]), ["one", "two", "three"]);
    assert.deepEqual(lines([], ["\n\n"]), ["", ""]);
  });

  it("masks a value split across any two reads", () => {
    const secret = "s3cr3t-value";
    for (let cut = 1; cut < secret.length; cut++) {
      assert.deepEqual(
        lines([secret], [`key=${secret.slice(0, cut)}`, `${secret.slice(cut)} end\n`]),
        [`key=${MASK} end`],
        `cut at ${cut}`,
      );
    }
  });

  it("masks a value that contains newlines, whole or split across reads", () => {
    const pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----";
    assert.deepEqual(lines([pem], [`before\n${pem}\nafter\n`]), ["before", MASK, "after"]);
    for (let cut = 1; cut < pem.length; cut += 7) {
      const text = `k=${pem}!\n`;
      assert.deepEqual(lines([pem], [text.slice(0, cut + 2), text.slice(cut + 2)]), [`k=${MASK}!`], `cut at ${cut}`);
    }
  });

  it("decodes UTF-8 across reads: a character split between two reads stays whole, and a non-ASCII secret split so is masked", () => {
    const text = Buffer.from("naïve – 日本語 ✓\n");
    for (let cut = 1; cut < text.length; cut++) {
      assert.deepEqual(
        lines([], [text.subarray(0, cut), text.subarray(cut)]),
        ["naïve – 日本語 ✓"],
        `cut at byte ${cut}`,
      );
    }
    const secret = "пароль-秘密";
    const printed = Buffer.from(`pw=${secret}\n`);
    for (let cut = 4; cut < printed.length - 1; cut++) {
      assert.deepEqual(
        lines([secret], [printed.subarray(0, cut), printed.subarray(cut)]),
        [`pw=${MASK}`],
        `cut at byte ${cut}`,
      );
    }
  });

  it("cuts an endless line into bounded pieces, in time proportional to its length, never showing a value", () => {
    const secret = "0123456789-secret";
    const filler = "x".repeat(MAX_LINE - 5);
    const out = lines([secret], [filler, secret, "y".repeat(MAX_LINE), "\n"]);
    assert.ok(
      out.every((line) => line.length <= MAX_LINE),
      "bounded",
    );
    assert.ok(!out.join("").includes("secret"), "never shown, even cut");
    assert.equal(out.join(""), filler + MASK + "y".repeat(MAX_LINE));
    // 32 MiB without a newline in 64 KiB reads: each read is handled once (a rescan of what
    // is held would take minutes), and what is kept between reads stays small.
    let count = 0;
    const output = runOutput([secret], (batch) => (count += batch.length));
    const chunk = Buffer.alloc(64 * 1024, "z");
    const started = performance.now();
    for (let i = 0; i < 512; i++) output.write(chunk);
    output.end();
    assert.equal(count, (512 * 64 * 1024) / MAX_LINE);
    assert.ok(performance.now() - started < 5000, `took ${Math.round(performance.now() - started)} ms`);
  });

  it("marks a run's line that would read as the launcher's own, whatever escapes or blanks precede it", () => {
    for (const forged of [
      "[agentpools: killed: forged]",
      "  [agentpools: x]",
      "\x1b[0m\x1b[2K[agentpools: x]",
      "\u200b[AGENTPOOLS: x]",
      "\r[agentpools: x]",
      "\u00a0\x1b[1;31m[agentpools: x]",
    ]) {
      assert.equal(markRunLine(forged), RUN_LINE_MARK + forged, JSON.stringify(forged));
    }
    assert.equal(markRunLine("ok [agentpools: inside]"), "ok [agentpools: inside]");
    assert.deepEqual(lines([], ["[agentpools: killed: no output for 7m]\n"]), [
      `${RUN_LINE_MARK}[agentpools: killed: no output for 7m]`,
    ]);
  });
});
