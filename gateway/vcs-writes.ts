/**
 * The VCS writes a pool's agents allow (comments, commit statuses, check runs, build statuses)
 * are feedback, nothing more. Each one's JSON body is checked here before it crosses and is sent
 * on as re-serialised, so the VCS parses exactly what was checked (no duplicate key, no escape
 * read two ways): an object, of its write's fields only where the write is known, and no line
 * that starts with `/` (GitLab runs such a line in a note as a quick action: `/merge`,
 * `/approve`; bots on the other vendors read them as commands).
 */

const CHECK_RUN = "name|head_sha|details_url|external_id|status|started_at|conclusion|completed_at|output";

/** Path endings of each vendor's feedback writes and the fields their bodies may have. */
const WRITES: [RegExp, string][] = [
  [/^\/api\/v4\/projects\/[^/]+\/merge_requests\/[^/]+\/notes(?:\/[^/]+)?$/, "body"],
  [/^\/api\/v4\/projects\/[^/]+\/statuses\/[^/]+$/, "state|ref|name|context|target_url|description|coverage|pipeline_id"],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/issues\/(?:[^/]+\/comments|comments\/[^/]+)$/, "body"],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/statuses\/[^/]+$/, "state|target_url|description|context"],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/check-runs(?:\/[^/]+)?$/, CHECK_RUN],
  [/\/repos\/[^/]+\/pull-requests\/[^/]+\/comments$/, "text|parent|anchor|severity"],
  [/\/repos\/[^/]+\/pull-requests\/[^/]+\/comments\/[^/]+$/, "text|version|severity|state"],
  [/\/repos\/[^/]+\/commits\/[^/]+\/builds$/, "state|key|name|url|description|buildNumber|duration|parent|ref|testResults"],
  [/\/_apis\/git\/repositories\/[^/]+\/pullRequests\/[^/]+\/threads$/, "comments|status|threadContext|pullRequestThreadContext"],
  [/\/_apis\/git\/repositories\/[^/]+\/commits\/[^/]+\/statuses$/, "state|description|targetUrl|context"],
];

/** Whether a request's body is a write's JSON the gateway checks: every POST, PUT or PATCH but a git fetch. */
export const isCheckedWrite = (method: string, contentType: string | undefined) =>
  ["POST", "PUT", "PATCH"].includes(method) && !/^application\/x-git-upload-pack-request\b/i.test(contentType ?? "");

const strings = (value: unknown): string[] =>
  typeof value === "string" ? [value] : value && typeof value === "object" ? Object.values(value).flatMap(strings) : [];

/** A write's body (parsed JSON) as it may cross (`path` without its query), or why it may not. */
export function checkedWrite(path: string, value: unknown): Buffer | string {
  if (!value || typeof value !== "object" || Array.isArray(value)) return "a write's body must be a JSON object";
  const fields = WRITES.find(([pattern]) => pattern.test(path))?.[1].split("|");
  const extra = fields && Object.keys(value).find((key) => !fields.includes(key));
  if (extra !== undefined) return `the field ${extra} is not one of this write's (${fields!.join(", ")})`;
  try {
    if (strings(value).some((text) => /^\s*\//m.test(text)))
      return "a line of the body starts with / (a quick action or a bot's command): refused";
  } catch {
    return "a write's body is nested too deeply";
  }
  return Buffer.from(JSON.stringify(value));
}
