import assert from "node:assert/strict";
import { createLogger, MAX_VALUE } from "./log";

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
});
