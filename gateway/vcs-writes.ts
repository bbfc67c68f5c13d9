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
  [
    /^\/api\/v4\/projects\/[^/]+\/statuses\/[^/]+$/,
    "state|ref|name|context|target_url|description|coverage|pipeline_id",
  ],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/issues\/(?:[^/]+\/comments|comments\/[^/]+)$/, "body"],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/statuses\/[^/]+$/, "state|target_url|description|context"],
  [/^\/api\/v3\/repos\/[^/]+\/[^/]+\/check-runs(?:\/[^/]+)?$/, CHECK_RUN],
  [/\/repos\/[^/]+\/pull-requests\/[^/]+\/comments$/, "text|parent|anchor|severity"],
  [/\/repos\/[^/]+\/pull-requests\/[^/]+\/comments\/[^/]+$/, "text|version|severity|state"],
  [
    /\/repos\/[^/]+\/commits\/[^/]+\/builds$/,
    "state|key|name|url|description|buildNumber|duration|parent|ref|testResults",
  ],
  [
    /\/_apis\/git\/repositories\/[^/]+\/pullRequests\/[^/]+\/threads$/,
    "comments|status|threadContext|pullRequestThreadContext",
  ],
  [/\/_apis\/git\/repositories\/[^/]+\/commits\/[^/]+\/statuses$/, "state|description|targetUrl|context"],
];

/**
 * How a request's body may cross: "stream" (a git fetch's, a write without a body, or a
 * method that writes nothing, which the agent refuses anyway), "check" (a write's JSON, read
 * and checked here), or why it may not. A write carries no query: GitLab reads query parameters as fields too (`?body=/merge`).
 */
export function bodyRule(method: string, path: string, contentType = "", hasBody = true): "stream" | "check" | string {
  if (!["POST", "PUT", "PATCH"].includes(method)) return "stream";
  const [route, query] = path.split("?", 2);
  const fetch =
    method === "POST" &&
    /\/git-upload-pack$/.test(route) &&
    /^application\/x-git-upload-pack-request\s*$/i.test(contentType);
  if (fetch) return "stream";
  if (query !== undefined) return "a write carries no query: its fields go in its JSON body";
  if (!hasBody) return "stream";
  return /^application\/json\s*(;|$)/i.test(contentType)
    ? "check"
    : "a write's body is JSON (Content-Type: application/json)";
}

/**
 * Bytes of write bodies the gateway holds at once, whoever sends them, and at most half of
 * them for one client: bodies are read whole before they are checked and held until their
 * exchange is over, so without a bound slow senders could fill its memory or take every place.
 */
export class WriteBudget {
  private used = 0;
  private readonly byClient = new Map<string, number>();
  constructor(private readonly limit = 16 * 1024 * 1024) {}
  /** Take `bytes` for `client`, or undefined past a bound; the returned function gives them back, once. */
  take(bytes: number, client = ""): (() => void) | undefined {
    const mine = this.byClient.get(client) ?? 0;
    if (this.used + bytes > this.limit || mine + bytes > this.limit / 2) return undefined;
    this.used += bytes;
    this.byClient.set(client, mine + bytes);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.used -= bytes;
      const left = (this.byClient.get(client) ?? bytes) - bytes;
      if (left > 0) this.byClient.set(client, left);
      else this.byClient.delete(client);
    };
  }
}

const strings = (value: unknown): string[] =>
  typeof value === "string" ? [value] : value && typeof value === "object" ? Object.values(value).flatMap(strings) : [];

/** A write's body (parsed JSON) as it may cross, or why it may not. */
export function checkedWrite(path: string, value: unknown): Buffer | string {
  if (!value || typeof value !== "object" || Array.isArray(value)) return "a write's body must be a JSON object";
  const route = path.split("?")[0];
  const fields = WRITES.find(([pattern]) => pattern.test(route))?.[1].split("|");
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
