import assert from "node:assert/strict";
import { backoffDelay } from "./session";

describe("reconnect backoff", () => {
  const random = Math.random;
  afterEach(() => (Math.random = random));

  it("doubles from 0.5 s and never waits more than 5 s, however long the gateway was away", () => {
    Math.random = () => 0.999_999;
    assert.deepEqual(
      [0, 1, 2, 3].map((attempt) => Math.round(backoffDelay(attempt))),
      [500, 1000, 2000, 4000],
    );
    for (const attempt of [4, 10, 30, 1000]) {
      const delay = backoffDelay(attempt);
      assert.ok(delay <= 5000 && delay > 4990, `attempt ${attempt}: ${delay} ms`);
    }
  });

  it("is jittered over the whole range (full jitter), so a fleet does not return at once", () => {
    Math.random = () => 0;
    assert.equal(backoffDelay(30), 0);
    Math.random = () => 0.5;
    assert.equal(backoffDelay(30), 2500);
  });
});
