import assert from "node:assert/strict";
import { LineSplitter, MASK, masker, MAX_LINE } from "./output";

function split(secrets: string[], chunks: string[]): string[] {
  const lines: string[] = [];
  const splitter = new LineSplitter(masker(secrets), (batch) => lines.push(...batch), Math.max(0, ...secrets.map((s) => s.length)));
  for (const chunk of chunks) splitter.write(chunk);
  splitter.end();
  return lines;
}

describe("run output: lines and masking", () => {
  it("masks every occurrence, the longer of two overlapping values first", () => {
    const mask = masker(["abc", "abcdef", ""]);
    assert.equal(mask("x abcdef y abc z"), `x ${MASK} y ${MASK} z`);
    assert.equal(masker([])("untouched"), "untouched");
    assert.equal(masker(["a.c"])("abc a.c"), `abc ${MASK}`, "values are literal, not patterns");
  });

  it("cuts output into lines whatever the reads, dropping CR of CRLF, keeping a last unterminated line", () => {
    assert.deepEqual(split([], ["one\r\ntw", "o\nthr", "ee"]), ["one", "two", "three"]);
    assert.deepEqual(split([], ["\n\n"]), ["", ""]);
  });

  it("masks a value split across any two reads", () => {
    const secret = "s3cr3t-value";
    for (let cut = 1; cut < secret.length; cut++) {
      assert.deepEqual(split([secret], [`key=${secret.slice(0, cut)}`, `${secret.slice(cut)} end\n`]), [`key=${MASK} end`], `cut at ${cut}`);
    }
  });

  it("cuts an endless line into bounded pieces without letting a value straddle a cut", () => {
    const secret = "0123456789-secret";
    const filler = "x".repeat(MAX_LINE - 5);
    const lines = split([secret], [filler, secret, "y".repeat(MAX_LINE), "\n"]);
    assert.ok(lines.every((line) => line.length <= MAX_LINE), "bounded");
    assert.ok(!lines.join("").includes("secret"), "never shown, even cut");
    assert.equal(lines.join("").replace(MASK, "S"), filler + "S" + "y".repeat(MAX_LINE));
    // The cut falls while the value is still arriving: its start is held back until it is whole.
    const held = split([secret], [filler + "ab" + secret.slice(0, 10), secret.slice(10) + " tail\n"]);
    assert.ok(!held.join("").includes(secret.slice(0, 10)), held.map((l) => l.slice(-30)).join(" | "));
    assert.equal(held.join(""), filler + "ab" + MASK + " tail");
  });
});
