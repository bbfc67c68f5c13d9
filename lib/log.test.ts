import assert from "node:assert/strict";
import { createLogger, MAX_LINE, MAX_VALUE } from "./log";

describe("log lines", () => {
  const logged = () => {
    const lines: string[] = [];
    return { lines, log: createLogger("test", [(line) => lines.push(line)]) };
  };

  it("a value past MAX_VALUE characters is cut, the line still JSON; shorter values and numbers stay whole", () => {
    const { lines, log } = logged();
    log.warn("run refused", { run: "x".repeat(1 << 20), reason: "short", count: 3 });
    assert.ok(lines[0].length < MAX_VALUE + 200, `${lines[0].length} characters`);
    const line = JSON.parse(lines[0]);
    assert.equal(line.run, "x".repeat(MAX_VALUE) + "[cut]");
    assert.deepEqual([line.level, line.msg, line.reason, line.count], ["warn", "run refused", "short", 3]);
  });

  it("a secret in a value that is cut is hidden first: no part of it is left at the cut", () => {
    const { lines, log } = logged();
    const secret = "s3cr3t-".repeat(20);
    log.redact(secret);
    // The secret straddles the cut: cut first, its first part would be kept, and match no secret.
    const value = "a".repeat(MAX_VALUE - 70) + secret + "b".repeat(MAX_VALUE);
    log.error("failed", { error: value, plain: `${secret} and more` });
    assert.ok(!lines[0].includes("s3cr3t"), lines[0].slice(MAX_VALUE - 200, MAX_VALUE + 100));
    const line = JSON.parse(lines[0]);
    assert.equal(line.error, "a".repeat(MAX_VALUE - 70) + "[redacted]" + "b".repeat(60) + "[cut]");
    assert.equal(line.plain, "[redacted] and more");
  });

  it("a line past MAX_LINE all the same (keys, arrays, numbers), or one that cannot be written (nested past the stack): its message alone, marked", () => {
    const { lines, log } = logged();
    const nested = JSON.parse("[".repeat(10_000) + "]".repeat(10_000));
    log.warn("lease revoked", { reason: nested });
    log.warn("lease revoked", { reason: { ["k".repeat(1 << 20)]: 1 } });
    log.warn("lease revoked", { reason: Array.from({ length: 100_000 }, () => 9e20) });
    assert.equal(lines.length, 3);
    for (const text of lines) {
      assert.ok(text.length <= MAX_LINE, `${text.length} characters`);
      const line = JSON.parse(text);
      assert.deepEqual(
        [line.level, line.role, line.msg, line.cut, line.reason],
        ["warn", "test", "lease revoked", true, undefined],
      );
    }
  });

  it("a message of control characters, cut with its line, stays within MAX_LINE escaped", () => {
    const { lines, log } = logged();
    log.error("\u0001".repeat(MAX_LINE), { reason: Array.from({ length: 100_000 }, () => 1) });
    assert.ok(lines[0].length <= MAX_LINE, `${lines[0].length} characters`);
    assert.equal(JSON.parse(lines[0]).msg, "\u0001".repeat(MAX_LINE / 8));
  });

  it("a message cut with its line keeps no part of a secret", () => {
    const { lines, log } = logged();
    const secret = "t0ken-".repeat(20);
    log.redact(secret);
    log.error("x".repeat(MAX_LINE / 8 - 50) + secret, { reason: Array.from({ length: 100_000 }, () => 1) });
    assert.ok(!lines[0].includes("t0ken"), lines[0].slice(-200));
    assert.equal(JSON.parse(lines[0]).msg, "x".repeat(MAX_LINE / 8 - 50) + "[redacted]");
  });
});
