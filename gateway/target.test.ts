import assert from "node:assert/strict";
import { readTarget } from "./target";

const RUN = "0f8fad5b-d9cb-469f-a165-70867728950e";

describe("readTarget: one reading of a request-target", () => {
  it("routes each of the gateway's own paths, with the pool and run it names", () => {
    const route = (raw: string) => (readTarget(raw) as Exclude<ReturnType<typeof readTarget>, string>).route;
    assert.deepEqual(route("/"), { kind: "status" });
    assert.deepEqual(route("/_agentpools/status"), { kind: "status" });
    assert.deepEqual(route("/_agentpools/connect"), { kind: "connect", link: "vcs" });
    assert.deepEqual(route("/_agentpools/api/workers/w/runs"), { kind: "runs", pool: "w" });
    assert.deepEqual(route(`/_agentpools/api/workers/w/runs/${RUN}/logs`), {
      kind: "run",
      pool: "w",
      run: RUN,
      logs: true,
    });
    assert.deepEqual(route(`/_agentpools/api/workers/w/runs/${RUN}/state`), { kind: "state", pool: "w", run: RUN });
    assert.deepEqual(route("/_agentpools/api/flows/f/run"), { kind: "flows-run", pool: "f" });
    assert.deepEqual(route("/git/api/v4/projects/group%2Frepo?x=1"), {
      kind: "vcs",
      pool: "git",
      path: "/api/v4/projects/group%2Frepo?x=1",
    });
    assert.deepEqual(route("/_agentpools/api/workers/w/runs/not-a-run/state"), {
      kind: "unknown",
      path: "/_agentpools/api/workers/w/runs/not-a-run/state",
    });
  });

  it("refuses what another reader would resolve elsewhere: \\, #, spaces, absolute forms, dot segments, escapes in own paths", () => {
    const confusing = [
      "/_agentpools/api/workers/x/runs/..\\..\\workers\\runs#/state",
      `/_agentpools/api/workers/x/runs/${RUN}#/state`,
      "/_agentpools/api/workers/w/runs/../../v/runs",
      "/_agentpools/api/workers/w/runs/%2e%2e/state",
      "/_agentpools/api/workers//w/runs",
      "/_agentpools/api/pools?a=1&A=2",
      "/_agentpools/api/pools?a=%zz",
      "http://gateway/_agentpools/api/pools",
      "*",
      "/git/a b",
      "/git/a\u0000b",
      `/git/${"a".repeat(9000)}`,
      "//git/x",
    ];
    for (const raw of confusing) assert.equal(typeof readTarget(raw), "string", raw);
  });

  it("a run's query comes from the same reading (decoded once)", () => {
    const read = readTarget(`/_agentpools/api/workers/w/runs?Limit=5&before=a%2Bb+c`);
    assert.ok(typeof read === "object");
    assert.deepEqual(
      [...read.query],
      [
        ["limit", "5"],
        ["before", "a+b c"],
      ],
    );
  });
});
