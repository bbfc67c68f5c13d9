import assert from "node:assert/strict";
import { classify, projectMatcher } from "./allowlist";

const ALL = projectMatcher(".*");
const ONLY_GROUP_REPO = projectMatcher("group/repo");

type Row = [vendor: Parameters<typeof classify>[0], method: string, target: string, expect: string];

// expect: "allow: <what>" or "deny: <reason fragment>"
const rows: Row[] = [
  ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/branches", "allow: list branches of group/repo"],
  [
    "gitlab",
    "GET",
    "/api/v4/projects/group%2Fsub%2Frepo/repository/files/dir%2Fmain.tf/raw?ref=main",
    "allow: read a file of group/sub/repo",
  ],
  [
    "gitlab",
    "GET",
    "/api/v4/projects/group%2Frepo/repository/archive.tar.gz?sha=abc",
    "allow: download an archive of group/repo",
  ],
  [
    "gitlab",
    "POST",
    "/api/v4/projects/group%2Frepo/merge_requests/7/notes",
    "allow: comment on a merge request of group/repo",
  ],
  ["gitlab", "POST", "/api/v4/projects/group%2Frepo/statuses/0123abc", "allow: set a commit status in group/repo"],
  [
    "gitlab",
    "POST",
    "/api/v4/projects/group%2Frepo/merge_requests/7/notes?body=%2Fmerge",
    "deny: a write carries no query",
  ],
  ["gitlab", "PUT", "/api/v4/projects/group%2Frepo/merge_requests/7/notes/1?body=x", "deny: a write carries no query"],
  [
    "github_enterprise",
    "POST",
    "/api/v3/repos/group/repo/statuses/abc?state=success",
    "deny: a write carries no query",
  ],
  ["gitlab", "GET", "/api/v4/version", "allow: read the GitLab version"],
  [
    "gitlab",
    "GET",
    "/group/sub/repo.git/info/refs?service=git-upload-pack",
    "allow: list refs of group/sub/repo (git fetch)",
  ],
  ["gitlab", "POST", "/group/repo.git/git-upload-pack", "allow: fetch objects of group/repo (git fetch)"],
  ["gitlab", "GET", "/api/v4/projects/123/repository/branches", "deny: not of the form group/repository"],
  ["gitlab", "DELETE", "/api/v4/projects/group%2Frepo", "deny: not one the VCS agent forwards"],
  ["gitlab", "POST", "/api/v4/projects/group%2Frepo", "deny: POST is not allowed here (only GET)"],
  ["gitlab", "GET", "/api/v4/projects", "deny: not on the gitlab allowlist"],
  ["gitlab", "GET", "/api/v4/users", "deny: not on the gitlab allowlist"],
  ["gitlab", "GET", "/group/repo.git/info/refs?service=git-receive-pack", "deny: pushing"],
  ["gitlab", "POST", "/group/repo.git/git-receive-pack", "deny: pushing"],
  ["gitlab", "GET", "/group/repo.git/info/refs", "deny: only with service=git-upload-pack"],
  ["gitlab", "GET", "/api/v4/projects/group%2F..%2Fother/repository/tree", "deny: dot segment"],
  ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/files/..%2F..%2Fetc%2Fpasswd", "deny: dot segment"],
  ["gitlab", "GET", "/api/v4/projects/group%252Frepo/repository/tree", "deny: encoded twice"],
  ["gitlab", "GET", "/api/v4/%70rojects/group%2Frepo", "deny: not on the gitlab allowlist"],
  [
    "github_enterprise",
    "GET",
    "/api/v3/repos/owner/repo/contents/modules/vpc/main.tf?ref=main",
    "allow: read a file of owner/repo",
  ],
  ["github_enterprise", "GET", "/api/v3/repos/owner/repo/tarball/main", "allow: download an archive of owner/repo"],
  ["github_enterprise", "POST", "/api/v3/repos/owner/repo/statuses/abc", "allow: set a commit status in owner/repo"],
  [
    "github_enterprise",
    "GET",
    "/owner/repo.git/info/refs?service=git-upload-pack",
    "allow: list refs of owner/repo (git fetch)",
  ],
  ["github_enterprise", "GET", "/api/v3/repos/owner/repo/contents/../../../admin", "deny: dot segment"],
  ["github_enterprise", "GET", "/api/v3/repos/owner/repo/contents/%2e%2e/%2e%2e/admin", "deny: dot segment"],
  ["github_enterprise", "GET", "/api/v3/repos/owner%2Fx/repo", "deny: encodes a slash"],
  ["github_enterprise", "GET", "/api/v3//repos/owner/repo", "deny: empty segment"],
  ["github_enterprise", "GET", "/api/v3/repos/owner/repo\\..\\x", "deny: only URL characters"],
  ["github_enterprise", "PUT", "/api/v3/repos/owner/repo/contents/main.tf", "deny: PUT is not allowed here"],
  ["gitlab", "GET", "/group/repo.git/info/refs?service=git-receive-p%61ck", "deny: pushing"],
  ["gitlab", "GET", "/group/repo.git/info/refs?service=git-upload-pack&service=git-receive-pack", "deny: repeated"],
  ["github_enterprise", "GET", "/api/v3/admin/users", "deny: not on the github_enterprise allowlist"],
  [
    "bitbucket_datacenter",
    "GET",
    "/rest/api/1.0/projects/INFRA/repos/network/branches?limit=100",
    "allow: list branches, tags, commits or pull requests of INFRA/network",
  ],
  [
    "bitbucket_datacenter",
    "GET",
    "/rest/api/latest/projects/INFRA/repos/network/raw/main.tf?at=main",
    "allow: read files of INFRA/network",
  ],
  [
    "bitbucket_datacenter",
    "GET",
    "/scm/infra/network.git/info/refs?service=git-upload-pack",
    "allow: list refs of infra/network (git fetch)",
  ],
  ["bitbucket_datacenter", "POST", "/scm/infra/network.git/git-receive-pack", "deny: pushing"],
  ["bitbucket_datacenter", "GET", "/rest/api/1.0/admin/users", "deny: not on the bitbucket_datacenter allowlist"],
  [
    "azure_devops",
    "GET",
    "/Infra/_apis/git/repositories/network/items?path=/main.tf&api-version=7.0",
    "allow: list refs, commits, files or pull requests of Infra/network",
  ],
  [
    "azure_devops",
    "GET",
    "/Infra/_git/network/info/refs?service=git-upload-pack",
    "allow: list refs of Infra/network (git fetch)",
  ],
  ["azure_devops", "POST", "/Infra/_apis/git/repositories/network/pushes", "deny: not on the azure_devops allowlist"],
];

describe("VCS allowlist", () => {
  for (const [vendor, method, target, expect] of rows) {
    it(`${vendor} ${method} ${target} -> ${expect}`, () => {
      const decision = classify(vendor, method, target, ALL);
      if (expect.startsWith("allow: ")) {
        assert.deepEqual([decision.allowed, decision.allowed && decision.what], [true, expect.slice(7)]);
      } else {
        assert.equal(decision.allowed, false, `allowed: ${JSON.stringify(decision)}`);
        assert.ok(
          !decision.allowed && decision.reason.includes(expect.slice(6)),
          `${!decision.allowed && decision.reason}`,
        );
      }
    });
  }

  it("the allowed-projects expression must match the whole project", () => {
    const cases: [string, boolean][] = [
      ["/api/v4/projects/group%2Frepo", true],
      ["/api/v4/projects/group%2Frepo-evil", false],
      ["/api/v4/projects/evil%2Fgroup%2Frepo", false],
      ["/api/v4/projects/group%2Frepo%2Fsub", false],
      ["/group/repo-evil.git/info/refs?service=git-upload-pack", false],
      ["/group/repo.git/info/refs?service=git-upload-pack", true],
    ];
    for (const [target, allowed] of cases)
      assert.equal(classify("gitlab", "GET", target, ONLY_GROUP_REPO).allowed, allowed, target);
    const github = classify("github_enterprise", "GET", "/api/v3/repos/group/repo-evil", ONLY_GROUP_REPO);
    assert.deepEqual(github, {
      allowed: false,
      reason: "project group/repo-evil is not allowed",
      project: "group/repo-evil",
    });
    // GitLab's API reads a trailing .json as a format: group/repo.json is also group/repo, and both must be allowed.
    assert.equal(
      classify("gitlab", "GET", "/api/v4/projects/group%2Frepo.json", projectMatcher("group/repo\\.json")).allowed,
      false,
    );
    assert.equal(
      classify("gitlab", "GET", "/api/v4/projects/group%2Frepo.json", projectMatcher("group/repo(\\.json)?")).allowed,
      true,
    );
  });
});
