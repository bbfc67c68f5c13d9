import type { VcsAgentSettings } from "../config/vcs-agent";
import { canonicalRequest } from "./canonical";
import { BUILT_FOR } from "../config/built-for";

/**
 * What the VCS agent lets through, per vendor. A request is allowed only when a rule names
 * its method and path; everything else is refused, never passed through. Rules are path
 * templates: `@project` is one segment holding a URL-encoded "group/sub/repo" (GitLab's
 * API), `@owner/@repo` two plain segments, `@x` any one segment, `*` the rest of a path.
 * A rule without a project must say so by having none in its template: those few are the
 * only requests allowed without a project to check.
 */

type Vendor = VcsAgentSettings["vendor"];
type RuleSpec = [methods: string, template: string, what: string];

const GIT_FETCH = (prefix: string, project: string): RuleSpec[] => [
  ["GET", `${prefix}${project}(?:\\.git)?/info/refs`, "list refs of {project} (git fetch)"],
  ["POST", `${prefix}${project}(?:\\.git)?/git-upload-pack`, "fetch objects of {project} (git fetch)"],
];

/** A vendor's rules. A variant for one vendor (agent/config/variants.ts) carries only its own. */
function vendorRules(vendor: Vendor): RuleSpec[] {
  switch (BUILT_FOR.vendor ?? vendor) {
    case "gitlab":
      return [
        ["GET", "/api/v4/version", "read the GitLab version"],
        ["GET", "/api/v4/user", "read the token's user"],
        ["GET", "/api/v4/projects/@project", "read project {project}"],
        ["GET", "/api/v4/projects/@project/repository/branches", "list branches of {project}"],
        ["GET", "/api/v4/projects/@project/repository/branches/@x", "read a branch of {project}"],
        ["GET", "/api/v4/projects/@project/repository/tags", "list tags of {project}"],
        ["GET", "/api/v4/projects/@project/repository/tags/@x", "read a tag of {project}"],
        ["GET", "/api/v4/projects/@project/repository/commits", "list commits of {project}"],
        ["GET", "/api/v4/projects/@project/repository/commits/@x", "read a commit of {project}"],
        [
          "GET",
          "/api/v4/projects/@project/repository/commits/@x/(?:statuses|diff|merge_requests)",
          "read a commit's details in {project}",
        ],
        ["GET", "/api/v4/projects/@project/repository/compare", "compare commits of {project}"],
        ["GET", "/api/v4/projects/@project/repository/tree", "list files of {project}"],
        ["GET", "/api/v4/projects/@project/repository/files/@file(?:/raw)?", "read a file of {project}"],
        [
          "GET",
          "/api/v4/projects/@project/repository/archive(?:\\.(?:tar\\.gz|tar\\.bz2|tar|zip))?",
          "download an archive of {project}",
        ],
        ["GET", "/api/v4/projects/@project/merge_requests", "list merge requests of {project}"],
        ["GET", "/api/v4/projects/@project/merge_requests/@x", "read a merge request of {project}"],
        [
          "GET",
          "/api/v4/projects/@project/merge_requests/@x/(?:changes|diffs|commits|notes)",
          "read a merge request's details in {project}",
        ],
        ["POST", "/api/v4/projects/@project/merge_requests/@x/notes", "comment on a merge request of {project}"],
        [
          "PUT",
          "/api/v4/projects/@project/merge_requests/@x/notes/@x",
          "edit a comment on a merge request of {project}",
        ],
        ["POST", "/api/v4/projects/@project/statuses/@x", "set a commit status in {project}"],
        ...GIT_FETCH("/", "(?<path>[^/]+(?:/[^/]+?)+?)"),
      ];
    case "github_enterprise":
      return [
        ["GET", "/api/v3/meta", "read the GitHub Enterprise metadata"],
        ["GET", "/api/v3/user", "read the token's user"],
        ["GET", "/api/v3/repos/@owner/@repo", "read repository {project}"],
        [
          "GET",
          "/api/v3/repos/@owner/@repo/(?:branches|tags|commits|pulls)",
          "list branches, tags, commits or pull requests of {project}",
        ],
        ["GET", "/api/v3/repos/@owner/@repo/branches/*", "read a branch of {project}"],
        [
          "GET",
          "/api/v3/repos/@owner/@repo/commits/@x(?:/(?:status|statuses|check-runs))?",
          "read a commit of {project}",
        ],
        // Not `base...owner:repo:branch`: another repository of the fork network.
        ["GET", "/api/v3/repos/@owner/@repo/compare/(?:(?!%3[Aa])[^/:])+", "compare commits of {project}"],
        ["GET", "/api/v3/repos/@owner/@repo/contents(?:/*)?", "read a file of {project}"],
        ["GET", "/api/v3/repos/@owner/@repo/git/(?:trees|commits|refs|ref)/*", "read git data of {project}"],
        ["GET", "/api/v3/repos/@owner/@repo/(?:tarball|zipball)(?:/*)?", "download an archive of {project}"],
        [
          "GET",
          "/api/v3/repos/@owner/@repo/pulls/@x(?:/(?:files|commits|reviews|comments))?",
          "read a pull request of {project}",
        ],
        ["GET", "/api/v3/repos/@owner/@repo/issues/@x/comments", "read comments on a pull request of {project}"],
        ["POST", "/api/v3/repos/@owner/@repo/issues/@x/comments", "comment on a pull request of {project}"],
        ["PATCH", "/api/v3/repos/@owner/@repo/issues/comments/@x", "edit a comment in {project}"],
        ["POST", "/api/v3/repos/@owner/@repo/statuses/@x", "set a commit status in {project}"],
        ["POST", "/api/v3/repos/@owner/@repo/check-runs", "create a check run in {project}"],
        ["PATCH", "/api/v3/repos/@owner/@repo/check-runs/@x", "update a check run in {project}"],
        ...GIT_FETCH("/", "@owner/@repo"),
      ];
    case "bitbucket_datacenter":
      return [
        ["GET", "/rest/api/(?:1\\.0|latest)/application-properties", "read the Bitbucket version"],
        ["GET", "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo", "read repository {project}"],
        [
          "GET",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/(?:branches|tags|commits|pull-requests|default-branch)",
          "list branches, tags, commits or pull requests of {project}",
        ],
        [
          "GET",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/commits/@x(?:/(?:changes|diff))?",
          "read a commit of {project}",
        ],
        [
          "GET",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/(?:browse|raw|files)(?:/*)?",
          "read files of {project}",
        ],
        ["GET", "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/archive", "download an archive of {project}"],
        [
          "GET",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/pull-requests/@x(?:/(?:changes|commits|diff|activities|comments))?",
          "read a pull request of {project}",
        ],
        [
          "POST",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/pull-requests/@x/comments",
          "comment on a pull request of {project}",
        ],
        [
          "PUT",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/pull-requests/@x/comments/@x",
          "edit a comment on a pull request of {project}",
        ],
        [
          "POST",
          "/rest/api/(?:1\\.0|latest)/projects/@owner/repos/@repo/commits/@x/builds",
          "set a build status in {project}",
        ],
        ...GIT_FETCH("/scm/", "@owner/@repo"),
      ];
    case "azure_devops":
      return [
        ["GET", "/_apis/connectionData", "read the Azure DevOps connection data"],
        ["GET", "/@owner/_apis/git/repositories/@repo", "read repository {project}"],
        [
          "GET",
          "/@owner/_apis/git/repositories/@repo/(?:refs|commits|items|pullRequests|stats/branches)",
          "list refs, commits, files or pull requests of {project}",
        ],
        [
          "GET",
          "/@owner/_apis/git/repositories/@repo/(?:commits|pullRequests)/@x(?:/(?:changes|statuses|commits|threads))?",
          "read a commit or pull request of {project}",
        ],
        [
          "POST",
          "/@owner/_apis/git/repositories/@repo/pullRequests/@x/threads",
          "comment on a pull request of {project}",
        ],
        ["POST", "/@owner/_apis/git/repositories/@repo/commits/@x/statuses", "set a commit status in {project}"],
        ...GIT_FETCH("/", "@owner/_git/@repo").map(([m, t, w]) => [m, t.replace("(?:\\.git)?", ""), w] as RuleSpec),
      ];
  }
}

interface Rule {
  methods: string[];
  pattern: RegExp;
  what: string;
  /** The rule's path may carry an encoded "/" (GitLab's project IDs and file paths). */
  encodedSlash: boolean;
  git: boolean;
}

const PLACEHOLDERS: Record<string, string> = {
  project: "(?<project>[^/]+)",
  owner: "(?<owner>[^/]+)",
  repo: "(?<repo>[^/]+?)",
  file: "[^/]+",
  x: "[^/]+",
};

const compiled = new Map<Vendor, Rule[]>();

function rulesOf(vendor: Vendor): Rule[] {
  let rules = compiled.get(vendor);
  if (!rules) {
    rules = vendorRules(vendor).map(([methods, template, what]) => ({
      methods: methods.split(","),
      pattern: new RegExp(
        "^" +
          template
            .replace(/@(project|owner|repo|file|x)/g, (_, name: string) => PLACEHOLDERS[name])
            .replace(/\*/g, ".+") +
          "$",
      ),
      what,
      encodedSlash: template.includes("@project") || template.includes("@file"),
      git: template.includes("info/refs") || template.includes("git-upload-pack"),
    }));
    compiled.set(vendor, rules);
  }
  return rules;
}

export type Decision =
  { allowed: true; what: string; project?: string } | { allowed: false; reason: string; project?: string };

const NAME = /^[A-Za-z0-9_.~ -]+$/;

/** Decode a project's raw pieces and check it has the group/repository shape. */
function projectOf(groups: Record<string, string | undefined>): string | undefined {
  const raw =
    groups.project ?? groups.path ?? (groups.owner && groups.repo ? `${groups.owner}/${groups.repo}` : undefined);
  if (raw === undefined) return undefined;
  const project = raw.split("/").map(decodeURIComponent).join("/");
  const parts = project.split("/");
  if (parts.length < 2 || parts.some((part) => !NAME.test(part) || /^\.+$/.test(part))) return "";
  return project;
}

/** What a project name may also mean to the VCS: GitLab's API reads a trailing ".json" as a format. */
const readings = (vendor: Vendor, project: string) =>
  vendor === "gitlab" ? [project, project.replace(/\.(?:json|xml)$/i, "")] : [project];

/**
 * Decide one request: allowed (with what it is for) or refused (with why). `target` is the
 * raw path and query exactly as the VCS will receive them; it is read once (canonical.ts)
 * and every check below runs on that reading.
 */
export function classify(given: Vendor, method: string, target: string, allowedProjects: RegExp): Decision {
  // A variant's one vendor as a constant: what only the others need is left out of it.
  const vendor = BUILT_FOR.vendor ?? given;
  const canonical = canonicalRequest(vendor, method, target);
  if (!canonical.ok) return { allowed: false, reason: canonical.reason };
  const { path, query, encodedSlash, segments } = canonical.request;
  if ([...segments, query.get("service") ?? ""].some((piece) => /receive-pack/i.test(piece)))
    return { allowed: false, reason: "pushing (git-receive-pack) is never allowed" };

  const matches = rulesOf(vendor).filter((rule) => rule.pattern.test(path));
  if (matches.length === 0) return { allowed: false, reason: `not on the ${vendor} allowlist` };
  const rule = matches.find((r) => r.methods.includes(method));
  if (!rule)
    return {
      allowed: false,
      reason: `${method} is not allowed here (only ${[...new Set(matches.flatMap((r) => r.methods))].join(", ")})`,
    };
  if (!rule.encodedSlash && encodedSlash)
    return { allowed: false, reason: "the path encodes a slash where the VCS expects none" };
  // The project the path names is the only one a request may touch (GitLab's from_project_id, ...).
  const other = [...query.keys()].find((key) => /proj|repo|fork/i.test(key));
  if (other) return { allowed: false, reason: `the query key ${other} may name another project` };
  // A write's fields travel in its body, which the gateway checks: a query would be read as fields too (GitLab).
  if (!rule.git && method !== "GET" && method !== "HEAD" && [...query.keys()].length)
    return { allowed: false, reason: "a write carries no query" };
  if (rule.git && method === "GET" && query.get("service") !== "git-upload-pack") {
    return { allowed: false, reason: "info/refs is allowed only with service=git-upload-pack" };
  }

  const project = projectOf(rule.pattern.exec(path)?.groups ?? {});
  if (project === "") return { allowed: false, reason: "the project is not of the form group/repository" };
  if (project !== undefined && !readings(vendor, project).every((name) => allowedProjects.test(name))) {
    return { allowed: false, reason: `project ${project} is not allowed`, project };
  }
  return { allowed: true, what: rule.what.replace("{project}", project ?? ""), project };
}

/** The allowed-projects expression, matched against the whole project name without case, as every vendor reads names. */
export const projectMatcher = (source: string) => new RegExp(`^(?:${source})$`, "i");
