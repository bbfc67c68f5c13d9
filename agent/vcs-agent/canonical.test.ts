import assert from "node:assert/strict";
import { PATH_FAMILIES, QUERY_ATTACKS } from "../../devkit/attacks";
import { canonicalRequest } from "./canonical";

describe("canonical requests", () => {
  const vendors = ["gitlab", "github_enterprise", "bitbucket_datacenter", "azure_devops"] as const;
  for (const [family, spellings] of Object.entries(PATH_FAMILIES)) {
    it(`${family}: refused in any spelling, for every vendor`, () => {
      for (const vendor of vendors) {
        for (const [spelling, reason] of spellings) {
          const result = canonicalRequest(vendor, "GET", `/group/${spelling}/x`);
          assert.equal(result.ok, false, `${vendor} /group/${spelling}/x was read as ${JSON.stringify(result)}`);
          assert.ok(
            !result.ok && result.reason.includes(reason),
            `${vendor} ${spelling}: ${!result.ok && result.reason}`,
          );
        }
      }
    });
  }

  it("IIS drops a segment's trailing dots and spaces: refused for Azure DevOps", () => {
    for (const spelling of ["group.", "group%20", "..%20", ".%20."]) {
      const result = canonicalRequest("azure_devops", "GET", `/${spelling}/_apis/git/repositories/repo`);
      assert.equal(result.ok, false, spelling);
    }
    assert.equal(
      canonicalRequest("gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/files/notes.%20").ok,
      true,
    );
    // An encoded slash is only marked: the rules say where one may be.
    const slash = canonicalRequest("gitlab", "GET", "/api/v4/projects/group%2Frepo");
    assert.ok(slash.ok && slash.request.encodedSlash);
  });

  it("reads the query once: a repeated key (in any case or spelling), a ';' or a method override is refused", () => {
    for (const [query, reason] of QUERY_ATTACKS) {
      const result = canonicalRequest("gitlab", "GET", `/group/repo.git/info/refs${query}`);
      assert.ok(!result.ok && result.reason.includes(reason), `${query}: ${JSON.stringify(result)}`);
    }
    const read = canonicalRequest(
      "azure_devops",
      "GET",
      "/Infra/_apis/git/repositories/net/items?path=%2Fmain.tf&api-version=7.0&recursionLevel=Full",
    );
    assert.ok(read.ok);
    assert.deepEqual(
      [...read.request.query],
      [
        ["path", "/main.tf"],
        ["api-version", "7.0"],
        ["recursionlevel", "Full"],
      ],
    );
  });

  it("forwards only methods some rule names, and targets of URL characters only", () => {
    for (const method of ["DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "get", "PROPFIND"])
      assert.equal(canonicalRequest("gitlab", method, "/api/v4/version").ok, false, method);
    for (const target of [
      "/a b",
      "/a\tb",
      "/a#b",
      "/caf\u00e9",
      "relative",
      "*",
      "http://evil/",
      `/${"a".repeat(8200)}`,
    ]) {
      assert.equal(canonicalRequest("gitlab", "GET", target).ok, false, target);
    }
  });

  it("accepts what real clients send", () => {
    for (const target of [
      "/api/v4/projects/group%2Fsub%2Frepo/repository/files/dir%2Fmain.tf/raw?ref=feature%2Fx",
      "/api/v4/projects/group%2Frepo/repository/branches/feature%20x",
      "/group/repo.git/info/refs?service=git-upload-pack",
      "/rest/api/1.0/projects/INFRA/repos/network/browse/modules/vpc?at=refs%2Fheads%2Fmain&limit=100",
      "/api/v3/repos/owner/repo/contents/a+b.tf?ref=v1.2.3",
    ]) {
      const result = canonicalRequest("gitlab", "GET", target);
      assert.ok(result.ok, `${target}: ${JSON.stringify(result)}`);
      assert.equal(result.request.target, target, "the target crosses exactly as sent");
    }
  });
});
