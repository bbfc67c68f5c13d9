import { createHmac, hash } from "node:crypto";

/** An instance role's credentials, in the names IMDS gives them (the bundle carries no mapping). */
export interface Credentials {
  AccessKeyId: string;
  SecretAccessKey: string;
  Token?: string;
  /** When they expire (ISO 8601): refreshed before. */
  Expiration?: string;
}

const sha256 = (data: string) => hash("sha256", data);
const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data, "utf8").digest();

/**
 * Sign a request with AWS Signature Version 4. Pure: the caller passes the time. The URL's path and query
 * are signed as they are: ASCII, already encoded, a query's parameters in order. Returns
 * the headers to send (the given ones plus x-amz-date, the session token and authorization).
 */
export function signV4(input: {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body: string;
  service: string;
  region: string;
  credentials: Credentials;
  now: Date;
}): Record<string, string> {
  const amzDate = input.now.toISOString().replace(/[-:]|\.\d+/g, "");
  const day = amzDate.slice(0, 8);
  const headers: Record<string, string> = { ...input.headers, host: input.url.host, "x-amz-date": amzDate };
  if (input.credentials.Token) headers["x-amz-security-token"] = input.credentials.Token;

  // Signed as given: the runtime's headers have lower-case names and values without runs of spaces (what SigV4's
  // canonical form would change). In code-unit order, which is byte order for header names (ASCII).
  const names = Object.keys(headers).sort();
  const signedHeaders = names.join(";");
  const canonicalRequest = [
    input.method,
    // As the URL holds them: the runtime's calls have plain paths ("/") and no query; a query is given in order.
    input.url.pathname,
    input.url.search.slice(1),
    names.map((name) => `${name}:${headers[name]}\n`).join(""),
    signedHeaders,
    sha256(input.body),
  ].join("\n");

  const scope = `${day}/${input.region}/${input.service}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonicalRequest)].join("\n");
  const key = hmac(
    hmac(hmac(hmac(`AWS4${input.credentials.SecretAccessKey}`, day), input.region), input.service),
    "aws4_request",
  );
  const signature = hmac(key, stringToSign).toString("hex");

  headers.authorization = `AWS4-HMAC-SHA256 Credential=${input.credentials.AccessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
  return headers;
}
