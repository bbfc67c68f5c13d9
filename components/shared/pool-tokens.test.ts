import assert from "node:assert/strict";
import { poolTokenProblem } from "./pool-tokens";
import { encodeToken } from "../../protocol/token";
import { CA_EC } from "../../devkit/fixtures";

const vcs = encodeToken({ gateway: "https://gw.corp", pool: "git", secret: "s".repeat(43) });
const worker = encodeToken({ gateway: "https://gw.corp", pool: "workers", secret: "s".repeat(43), certificate: CA_EC });

describe("pool credentials' shapes", () => {
  it("takes each role's own", () => {
    assert.equal(poolTokenProblem("vcs-agent", "token", vcs), undefined);
    assert.equal(poolTokenProblem("launcher", "token", worker), undefined);
    for (const flows of ["Jq3x_Zk9-w0rD5aLongBase64urlSecret012345678", "any-printable!token#16+", "x".repeat(200)]) {
      assert.equal(poolTokenProblem("flows-agent", "poolToken", flows), undefined, flows);
    }
    assert.equal(
      poolTokenProblem("launcher", "poolPrivateKey", "anything"),
      undefined,
      "not a token: the settings schema checks it",
    );
  });

  it("refuses a line break pasted along, a token of another kind, one of no gateway", () => {
    assert.match(poolTokenProblem("vcs-agent", "token", `${vcs}\n`) as string, /line breaks/);
    assert.match(poolTokenProblem("vcs-agent", "token", worker) as string, /worker pool's token/);
    assert.match(poolTokenProblem("launcher", "token", vcs) as string, /VCS agent pool's token/);
    assert.match(
      poolTokenProblem("vcs-agent", "token", "glpat-abcdef0123456789") as string,
      /is not the VCS agent pool's token/,
    );
    assert.match(poolTokenProblem("flows-agent", "poolToken", vcs) as string, /"ap1\." token/);
    assert.match(poolTokenProblem("flows-agent", "poolToken", "short") as string, /shorter/);
    assert.match(poolTokenProblem("flows-agent", "poolToken", "has a space in it, long enough") as string, /spaces/);
  });

  it("never shows the token it refuses", () => {
    for (const [role, key, token] of [
      ["vcs-agent", "token", `${worker} `],
      ["launcher", "token", vcs],
      ["flows-agent", "poolToken", `${vcs}`],
    ] as const) {
      const problem = poolTokenProblem(role, key, token) as string;
      assert.ok(!problem.includes(token.trim().slice(4, 24)), problem);
    }
  });
});
