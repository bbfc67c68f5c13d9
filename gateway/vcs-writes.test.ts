import assert from "node:assert/strict";
import { bodyRule, checkedWrite, WriteBudget } from "./vcs-writes";

describe("VCS writes at the gateway", () => {
  it("a body streams only for a git fetch (or a method that writes nothing); a write is JSON, without a query", () => {
    const fetch = "application/x-git-upload-pack-request";
    assert.equal(bodyRule("POST", "/group/repo.git/git-upload-pack", fetch), "stream");
    assert.equal(bodyRule("GET", "/group/repo.git/info/refs?service=git-upload-pack"), "stream");
    assert.equal(
      bodyRule("POST", "/api/v4/projects/g%2Fr/merge_requests/1/notes", "application/json; charset=utf-8"),
      "check",
    );
    // A fetch's content type on a write's path, or a fetch's path with a write's type: checked or refused, never streamed.
    assert.match(bodyRule("POST", "/api/v3/repos/g/r/check-runs", fetch), /Content-Type: application\/json/);
    assert.equal(bodyRule("POST", "/group/repo.git/git-upload-pack", "application/json"), "check");
    assert.match(
      bodyRule("POST", "/api/v4/projects/g%2Fr/merge_requests/1/notes?body=%2Fmerge", "application/json"),
      /no query/,
    );
    assert.match(bodyRule("PATCH", "/x", undefined), /Content-Type/);
    assert.equal(
      bodyRule("PUT", "/x", undefined, false),
      "stream",
      "no body: nothing to check (the agent's allowlist decides)",
    );
    assert.match(bodyRule("POST", "/x?body=%2Fmerge", undefined, false), /no query/);
    assert.match(bodyRule("PUT", "/x", "text/plain"), /Content-Type/);
  });

  it("a checked write ignores any query it is given: its fields are those of its path", () => {
    assert.match(
      checkedWrite("/api/v4/projects/g%2Fr/statuses/abc?x=1", { state: "success", sudo: "root" }) as string,
      /field sudo/,
    );
  });

  it("the budget for bodies held at once: taken up to its bound, half of it at most by one client, each part given back once", () => {
    const budget = new WriteBudget(100);
    assert.equal(budget.take(51, "a"), undefined, "more than half for one client");
    const a = budget.take(50, "a");
    assert.ok(a);
    assert.equal(budget.take(1, "a"), undefined, "a's half is taken");
    assert.equal(budget.take(50, "b")?.constructor, Function, "b still has its part");
    assert.equal(budget.take(1, "c"), undefined, "over the bound");
    a();
    a(); // twice: given back once
    assert.ok(budget.take(50, "c"));
    assert.equal(budget.take(1, "d"), undefined, "a's double give-back did not count twice");
  });
});
