/**
 * How a refused value may be shown in an error message. An error is printed by `pulumi
 * preview`, kept in CI logs and pasted into tickets, so it shows a value only as far as it
 * is safe: never a URL's credentials, never the body of a PEM block (a private key pasted
 * into a certificate field is a secret), never more than a line's worth of anything.
 */

const SHOWN_CHARACTERS = 80;
const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?(-----END \1-----|$)/g;
const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
// "user:password@host" typed without a scheme.
const BARE_USERINFO = /^[^\s@/:]+:[^\s@]*@/;

/**
 * A word of text with anything that may be a URL's userinfo, query or fragment (where tokens ride: "?token=...")
 * replaced by "***". Generous on purpose: a password may hold "/" or "@" (invalid, but typed), so everything up to
 * the last "@" before the query goes, and a few innocent characters may go with it.
 */
function redactWord(word: string): string {
  const scheme = SCHEME.exec(word)?.[0];
  if (scheme) {
    const rest = word.slice(scheme.length);
    const end = rest.search(/[?#]|$/);
    const at = rest.slice(0, end).lastIndexOf("@");
    return `${scheme}${at === -1 ? rest.slice(0, end) : `***${rest.slice(at, end)}`}${rest[end] ? `${rest[end]}***` : ""}`;
  }
  return BARE_USERINFO.test(word) ? `***${word.slice(word.lastIndexOf("@", word.search(/[?#]|$/)))}` : word;
}

/**
 * Whether a text carries credentials the way a URL does ("https://user:pass@host"), or may.
 * Only words with a scheme count: "ubuntu:24.04@sha256:..." is an image, not a login.
 */
export function hasUrlCredentials(text: string): boolean {
  return text.split(/\s+/).some((word) => {
    if (!SCHEME.test(word)) return false;
    try {
      const url = new URL(word);
      return url.username !== "" || url.password !== "";
    } catch {
      // Unreadable as a URL: whatever sits where its userinfo would is taken for credentials.
      return redactWord(word) !== word;
    }
  });
}

/** A text with URL credentials and PEM bodies taken out, cut to one line's worth. */
export function redactText(text: string): string {
  const cleaned = text
    .replace(/\S+/g, redactWord)
    .replace(PEM_BLOCK, (block, label: string) => `[PEM ${label.toLowerCase()}, ${block.length} characters]`);
  return cleaned.length <= SHOWN_CHARACTERS
    ? cleaned
    : `${cleaned.slice(0, SHOWN_CHARACTERS)}... (${text.length} characters)`;
}

/** A value as an error message may show it: JSON, with every string in it redacted. */
export function showValue(value: unknown): string | undefined {
  const json = JSON.stringify(value, (_key, item: unknown) => (typeof item === "string" ? redactText(item) : item));
  if (json === undefined) return undefined;
  return json.length <= SHOWN_CHARACTERS * 2 ? json : `${json.slice(0, SHOWN_CHARACTERS * 2)}...`;
}

/** The paths of the strings in plain arguments that carry URL credentials ("vcsAgents[1].baseEndpoint"). */
export function urlCredentialPaths(value: unknown, path = ""): string[] {
  if (typeof value === "string") return hasUrlCredentials(value) ? [path] : [];
  if (Array.isArray(value)) return value.flatMap((item, index) => urlCredentialPaths(item, `${path}[${index}]`));
  if (value && typeof value === "object" && value.constructor === Object) {
    return Object.entries(value).flatMap(([key, item]) => urlCredentialPaths(item, path ? `${path}.${key}` : key));
  }
  return [];
}
