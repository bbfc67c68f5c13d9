import type { VcsAgentSettings } from "../config/vcs-agent";

/**
 * One reading of a request target, decided as the strictest server a vendor runs would decide
 * it, so the allowlist checks what the VCS will act on and nothing else:
 *
 * - Tomcat and Jetty (Bitbucket Data Center) cut `;...` path parameters off a segment before
 *   resolving dot segments (`..;/` is `../`) and decode `%2e` first;
 * - IIS and ASP.NET (Azure DevOps Server) also read `\` as `/`, `%uXXXX` escapes, bytes that
 *   are not UTF-8 in the system code page, drop a segment's trailing dots and spaces, compare
 *   query keys without case and join repeated ones, and take a method from
 *   X-HTTP-Method-Override in the query too;
 * - Rails and Rack (GitLab, GitHub Enterprise behind its front end) take the last of
 *   repeated query keys, and older Rack splits a query on `;` as well as `&`;
 * - git http-backend decodes the path once and reads `service` from the query.
 *
 * Anything one of them could read in two ways is refused rather than guessed at: a target
 * with a path parameter, a dot segment in any spelling, an empty segment, an escape that is
 * malformed, double or not UTF-8, an encoded control character or backslash, a repeated
 * query key, or a method override in the query.
 */

type Vendor = VcsAgentSettings["vendor"];

export interface CanonicalRequest {
  method: string;
  /** The raw path and query, exactly as the VCS will receive them. */
  target: string;
  /** The raw path (no query). */
  path: string;
  /** Whether a segment carries an encoded "/" (allowed only where a rule says so). */
  encodedSlash: boolean;
  /** Decoded query keys (lower-cased) and values. */
  query: Map<string, string>;
  /** The decoded path segments, for checks that must see through escapes. */
  segments: string[];
}

export type Canonical = { ok: true; request: CanonicalRequest } | { ok: false; reason: string };

/** Methods some rule of some vendor names; any other method is an unknown shape. */
const METHODS = new Set(["GET", "POST", "PUT", "PATCH"]);
/** RFC 3986 path and query characters; anything else must have been percent-encoded. */
const TARGET_CHARS = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;
const ESCAPES = /%(?![0-9A-Fa-f]{2})/;
// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const CONTROL = /[\x00-\x1f\x7f]/;
/** Query keys that make Rack, ASP.NET or Express-style servers change the method. */
const METHOD_OVERRIDE_KEYS = new Set(["_method", "x-http-method-override", "x-http-method", "x-method-override"]);
export const MAX_TARGET_LENGTH = 8192;

const fail = (reason: string): Canonical => ({ ok: false, reason });

function decode(raw: string, plusIsSpace = false): string | undefined {
  if (ESCAPES.test(raw)) return undefined;
  try {
    return decodeURIComponent(plusIsSpace ? raw.replace(/\+/g, " ") : raw);
  } catch {
    return undefined; // an escape that is not UTF-8 (an overlong "." among them)
  }
}

/** Why one decoded path piece must be refused, if it must. */
function pieceProblem(piece: string, vendor: Vendor): string | undefined {
  if (piece === "") return "the path has an empty segment";
  if (/^\.+$/.test(piece)) return "the path has a dot segment";
  if (piece.includes("%")) return "the path is encoded twice";
  if (piece.includes("\\")) return "the path has a backslash";
  if (piece.includes(";")) return "the path has a ';' (a path parameter to Tomcat and Jetty)";
  if (CONTROL.test(piece)) return "the path encodes a control character";
  // Windows drops a name's trailing dots and spaces: "..%20" and "..." are ".." to IIS.
  if (vendor === "azure_devops" && /[. ]$/.test(piece))
    return "a path segment ends with a dot or a space (IIS drops them)";
  return undefined;
}

/** Read a request target once, or say why it cannot be read unambiguously. */
export function canonicalRequest(vendor: Vendor, method: string, target: string): Canonical {
  if (!METHODS.has(method))
    return fail(`the method ${JSON.stringify(method.slice(0, 16))} is not one the VCS agent forwards`);
  if (target.length > MAX_TARGET_LENGTH) return fail(`the target is longer than ${MAX_TARGET_LENGTH} characters`);
  if (!TARGET_CHARS.test(target)) return fail("the target is not an absolute path with only URL characters");
  const queryAt = target.indexOf("?");
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  const segments: string[] = [];
  let encodedSlash = false;
  for (const raw of path.slice(1).split("/")) {
    if (raw.includes(";")) return fail("the path has a ';' (a path parameter to Tomcat and Jetty)");
    const segment = decode(raw);
    if (segment === undefined) return fail("the path has a malformed or non-UTF-8 escape");
    const pieces = segment.split("/");
    if (pieces.length > 1) encodedSlash = true;
    for (const piece of pieces) {
      const problem = pieceProblem(piece, vendor);
      if (problem) return fail(raw === "" ? "the path has an empty segment" : problem);
    }
    segments.push(segment);
  }

  const query = new Map<string, string>();
  const rawQuery = queryAt === -1 ? "" : target.slice(queryAt + 1);
  if (rawQuery.includes(";")) return fail("the query has a ';' (a separator to older Rack)");
  for (const pair of rawQuery.split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const key = decode(eq === -1 ? pair : pair.slice(0, eq), true);
    const value = decode(eq === -1 ? "" : pair.slice(eq + 1), true);
    if (key === undefined || value === undefined) return fail("the query has a malformed or non-UTF-8 escape");
    if (CONTROL.test(key) || CONTROL.test(value)) return fail("the query encodes a control character");
    const name = key.toLowerCase();
    if (METHOD_OVERRIDE_KEYS.has(name)) return fail(`the query key ${key} overrides the method`);
    if (query.has(name)) return fail(`the query key ${key} is repeated (servers differ on which one counts)`);
    query.set(name, value);
  }
  return { ok: true, request: { method, target, path, encodedSlash, query, segments } };
}
