/**
 * Spellings of a path segment that some server in front of a VCS reads as something else
 * than the raw path shows (agent/vcs-agent/canonical.ts says which server does what). Each
 * must be refused for every vendor, with a reason naming it; shared by the agent's unit tests
 * and the hostile suite, which sends each one through a gateway and an agent to a recording VCS.
 */
export const PATH_FAMILIES: Record<string, [spelling: string, reason: string][]> = {
  "dot segments": [
    ["..", "dot segment"],
    [".", "dot segment"],
    ["...", "dot segment"],
    ["%2e%2e", "dot segment"],
    ["%2E%2e", "dot segment"],
    [".%2e", "dot segment"],
    ["%2e.", "dot segment"],
    ["%c0%ae%c0%ae", "non-UTF-8"], // an overlong "." (IIS's old bug)
    ["%u002e%u002e", "malformed"], // IIS's %u escapes
    ["%252e%252e", "encoded twice"],
  ],
  "path parameters (Tomcat, Jetty)": [
    ["..;", "';'"],
    ["%2e%2e;", "';'"],
    ["..;jsessionid=x", "';'"],
    [".;", "';'"],
    ["repo;x=1", "';'"],
    ["%2e%2e%3b", "';'"],
  ],
  "separators and controls (IIS, CRLF)": [
    ["..%5c..", "backslash"],
    ["a%5cb", "backslash"],
    ["%00", "control character"],
    ["a%0d%0aX-Injected:%201", "control character"],
  ],
  "empty segments": [
    ["", "empty segment"],
    ["a%2f", "empty segment"],
    ["%2f%2f", "empty segment"],
  ],
};

/** Queries that servers read differently: [query, reason]. */
export const QUERY_ATTACKS: [query: string, reason: string][] = [
  ["?service=git-upload-pack&service=git-receive-pack", "repeated"],
  ["?service=git-upload-pack&%73ervice=git-receive-pack", "repeated"],
  ["?service=git-upload-pack&SERVICE=git-receive-pack", "repeated"], // ASP.NET compares keys without case
  ["?service=git-upload-pack;service=git-receive-pack", "';'"], // older Rack splits on ';'
  ["?service=git-upload-pack&_method=DELETE", "overrides the method"],
  ["?service=git-upload-pack&X-HTTP-Method-Override=DELETE", "overrides the method"],
  ["?service=git-upload-pack&x-http-method=PUT", "overrides the method"],
  ["?service=git-upload-pack&a=%zz", "malformed"],
  ["?service=git-upload-pack%00", "control character"],
];
