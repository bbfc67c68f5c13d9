import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import type { VcsAgentSettings } from "../config/vcs-agent";
import { durationMs } from "../config/duration";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import { Tunnel } from "../tunnel/tunnel";
import { decodeToken } from "../../protocol/token";
import {
  BODILESS_METHODS,
  forwardableHeaders,
  queryCredentials,
  redactTarget,
  repeatedSingular,
  requestHeaders,
  type HeaderMap,
} from "../../protocol/vcs";
import { classify, projectMatcher } from "./allowlist";
import { pump } from "../../lib/pump";

/** Never printed, even with debug-print-all. */
const CREDENTIAL_HEADERS = /^(authorization|private-token|job-token|cookie|set-cookie|x-[a-z-]*token)$/i;
const DEBUG_BODY_LIMIT = 64 * 1024;
/** What the agent holds of one answer beyond HTTP/2's window: more per turn of the event loop. */
const ANSWER_BUFFER = 1024 * 1024;
/** The bodies the allowed requests carry: JSON for the APIs, git's own for fetches (Rack reads a form body's `_method`). */
const BODY_TYPES = /^(?:application\/json|application\/x-git-upload-pack-request)\s*(?:;|$)/i;
const BODY_ENCODINGS = /^(?:gzip|identity)$/i;
const { NGHTTP2_NO_ERROR, NGHTTP2_INTERNAL_ERROR, NGHTTP2_CANCEL } = http2.constants;

const redactHeaders = (headers: Record<string, unknown>) =>
  Object.fromEntries(
    Object.entries(headers).map(([name, value]) => [name, CREDENTIAL_HEADERS.test(name) ? "[redacted]" : value]),
  );

/** The credential values a request carries, to blank out wherever they reappear (an echoing body). */
const credentialValues = (headers: Record<string, unknown>) =>
  Object.entries(headers)
    .filter(([name, value]) => CREDENTIAL_HEADERS.test(name) && typeof value === "string")
    .flatMap(([, value]) => [value as string, ...(value as string).split(" ").slice(1)])
    .filter((value) => value.length >= 6);

const redactText = (text: string, secrets: string[]) =>
  secrets.reduce((out, secret) => out.split(secret).join("[redacted]"), text);

/** Collects the start of a body for debug output, never more than the limit. */
function tap(stream: NodeJS.ReadableStream, enabled: boolean): () => string {
  const chunks: Buffer[] = [];
  let size = 0;
  if (enabled) {
    stream.on("data", (chunk: Buffer) => {
      if (size < DEBUG_BODY_LIMIT) chunks.push(chunk.subarray(0, DEBUG_BODY_LIMIT - size));
      size += chunk.length;
    });
  }
  return () => Buffer.concat(chunks).toString("utf8") + (size > DEBUG_BODY_LIMIT ? `... (${size} bytes in all)` : "");
}

/** Answer with a JSON body of our own; the rest of the request's body, if any, is refused (RST_STREAM NO_ERROR). */
function answerAlone(stream: http2.ServerHttp2Stream, status: number, body: object): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  const text = JSON.stringify(body);
  stream.respond({ ":status": status, "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  stream.end(text, () => stream.close(NGHTTP2_NO_ERROR));
}

/**
 * How the request's body is framed, checked: a body only where the method has one, one
 * length (counted again by HTTP/2 itself), a type the allowed APIs take. The client's own
 * framing never crosses: the VCS gets a length we verify, or chunks we make.
 */
function bodyFraming(
  method: string,
  headers: http2.IncomingHttpHeaders,
  hasBody: boolean,
): { length?: number } | { problem: string } {
  const repeated = repeatedSingular(headers);
  if (repeated) return { problem: `the header ${repeated} is given more than once` };
  const declared = headers["content-length"];
  const length = declared === undefined ? undefined : Number(declared);
  if (declared !== undefined && !/^[0-9]{1,15}$/.test(String(declared)))
    return { problem: "the content-length is not a number" };
  if (!hasBody && !length) return BODILESS_METHODS.has(method) ? {} : { length: 0 };
  if (BODILESS_METHODS.has(method)) return { problem: `a ${method} request has no body` };
  if (!BODY_TYPES.test(String(headers["content-type"] ?? "")))
    return { problem: "a body must be application/json or a git fetch (application/x-git-upload-pack-request)" };
  if (headers["content-encoding"] !== undefined && !BODY_ENCODINGS.test(String(headers["content-encoding"])))
    return { problem: "a body's content-encoding must be gzip or none" };
  return { length };
}

/** The VCS's answer as it crosses: its framing replaced by the length Node's parser checked, where there is one. */
function responseHead(response: http.IncomingMessage): http2.OutgoingHttpHeaders {
  const status = response.statusCode ?? 502;
  const head: http2.OutgoingHttpHeaders = { ...forwardableHeaders(response.headers as HeaderMap), ":status": status };
  const length = response.headers["content-length"];
  if (length !== undefined && status !== 204 && status !== 304) head["content-length"] = length;
  return head;
}

export interface StreamContext {
  log: Logger;
  allowed: RegExp;
  upstream: URL;
  agent: http.Agent;
  upstreamTimeoutMs: number;
}

/**
 * Serve one stream from the gateway: refuse what the allowlist does not name, otherwise
 * forward it to the VCS and stream both bodies, with backpressure both ways. A stream the
 * gateway cancels (its client went away) cancels the request to the VCS.
 */
export function serveStream(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  settings: VcsAgentSettings,
  context: StreamContext,
): void {
  const started = performance.now();
  const method = String(headers[":method"]);
  const target = String(headers[":path"]);
  const shown = redactTarget(target);
  const elapsed = () => Math.round((performance.now() - started) * 100) / 100;
  stream.on("error", () => undefined); // a reset; its code is logged when the stream closes

  /** Answer a refusal ourselves (nothing reaches the VCS) and log why. */
  const refuse = (status: number, reason: string, project?: string) => {
    answerAlone(stream, status, { error: "refused by the VCS agent", reason });
    context.log.info("denied", { method, path: shown, project, status, reason, durationMs: elapsed() });
  };
  const decision = classify(settings.vendor, method, target, context.allowed);
  if (!decision.allowed) return refuse(403, decision.reason, decision.project);
  const framing = bodyFraming(method, headers, !stream.endAfterHeaders);
  if ("problem" in framing) return refuse(400, framing.problem, decision.project);
  // A connection-bound login (NTLM, Negotiate) would authenticate an upstream connection the next client reuses.
  if (/^\s*(?:ntlm|negotiate)\b/i.test(String(headers.authorization)))
    return refuse(400, "NTLM and Negotiate logins cannot cross a shared agent: use a token", decision.project);

  const upstreamHeaders: HeaderMap = { ...requestHeaders(headers), host: context.upstream.host };
  if (framing.length !== undefined) upstreamHeaders["content-length"] = String(framing.length);
  else if (!stream.endAfterHeaders) upstreamHeaders["transfer-encoding"] = "chunked";
  let request: http.ClientRequest;
  try {
    request = (context.upstream.protocol === "https:" ? https : http).request({
      protocol: context.upstream.protocol,
      hostname: context.upstream.hostname,
      port: context.upstream.port,
      method,
      path: context.upstream.pathname.replace(/\/$/, "") + target,
      headers: upstreamHeaders,
      agent: context.agent,
      insecureHTTPParser: false,
      joinDuplicateHeaders: false,
    });
  } catch (error) {
    // Headers Node will not send (a bad name or value): the gateway's client is told, nothing reaches the VCS.
    answerAlone(stream, 400, { error: "the request cannot be forwarded" });
    context.log.info(decision.what, {
      method,
      path: shown,
      project: decision.project,
      status: 400,
      error: (error as Error).message,
      durationMs: elapsed(),
    });
    return;
  }
  // Node's own check that a body is as long as its Content-Length, behind ours (pump counts).
  (request as unknown as http.ServerResponse).strictContentLength = framing.length !== undefined;
  // Silence from the VCS, before its answer or within a body, is bounded.
  let timedOut = false;
  request.setTimeout(context.upstreamTimeoutMs, () => {
    timedOut = true;
    request.destroy(new Error(`the VCS was silent for ${context.upstreamTimeoutMs} ms`));
  });
  const requestBody = tap(stream, settings.debugPrintAll);
  let status = 0;
  let bytes = 0;
  let done = false;
  const finish = (extra: Record<string, unknown> = {}) => {
    if (done) return;
    done = true;
    const code = stream.rstCode;
    const reset = code !== undefined && code !== NGHTTP2_NO_ERROR;
    const outcome = reset
      ? code === NGHTTP2_CANCEL
        ? { cancelled: true }
        : { error: `stream reset (${code})` }
      : extra;
    context.log.info(decision.what, {
      method,
      path: shown,
      project: decision.project,
      status,
      bytes,
      durationMs: elapsed(),
      ...outcome,
    });
  };

  // A stream's close says how it ended: NO_ERROR once both bodies are through; any other
  // code is a reset (the gateway's client went away), which cancels the request to the VCS.
  stream.once("close", () => {
    if (stream.rstCode !== NGHTTP2_NO_ERROR) request.destroy();
    if (settings.debugPrintAll && status !== 0) {
      const secrets = [...credentialValues(headers), ...queryCredentials(target)].filter((value) => value.length >= 6);
      context.log.debug("exchange", {
        method,
        path: shown,
        requestHeaders: redactHeaders(upstreamHeaders),
        requestBody: redactText(requestBody(), secrets),
        status,
        responseHeaders: redactHeaders(responseHeaders),
        responseBody: redactText(responseBody(), secrets),
      });
    }
    finish();
  });
  // A body longer or shorter than its length fails the exchange: the upstream request is
  // destroyed (its connection with it), never ended short or written past its length.
  if (stream.endAfterHeaders) request.end();
  else
    pump(stream, request, {
      length: framing.length,
      fail: (why) => (request.destroy(new Error(why)), stream.close(NGHTTP2_INTERNAL_ERROR)),
    });
  let responseHeaders: http.IncomingHttpHeaders = {};
  let responseBody = () => "";
  request.on("response", (response) => {
    status = response.statusCode ?? 502;
    responseHeaders = response.headers;
    if (stream.destroyed) return void response.destroy();
    const head = responseHead(response);
    stream.respond(head);
    response.on("data", (chunk: Buffer) => (bytes += chunk.length));
    responseBody = tap(response, settings.debugPrintAll);
    // A body cut short (the VCS closed early, or fell silent) must not end as if complete.
    const cut = () => stream.close(NGHTTP2_INTERNAL_ERROR);
    response.once("error", cut);
    response.once("aborted", cut);
    const length = head["content-length"] === undefined ? undefined : Number(head["content-length"]);
    pump(response, stream, { length, highWater: ANSWER_BUFFER, fail: () => (response.destroy(), cut()) });
  });
  request.on("error", (error) => {
    if (done) return;
    if (!stream.headersSent) {
      status = timedOut ? 504 : 502;
      // Why (an internal address, a DNS name) is for the agent's log only.
      answerAlone(stream, status, { error: timedOut ? "the VCS did not answer in time" : "the VCS did not answer" });
    } else stream.close(NGHTTP2_INTERNAL_ERROR);
    finish({ error: error.message });
  });
}

/** The `vcs-agent` role: dial the gateway named by the token and serve the VCS through it. */
export const vcsAgentRole: Role<VcsAgentSettings> = {
  name: "vcs-agent",
  start(settings, { log }): RunningAgent {
    const token = decodeToken(settings.token);
    const upstream = new URL(settings.targetBaseEndpoint);
    const agent = new (upstream.protocol === "https:" ? https : http).Agent({
      keepAlive: true,
      maxSockets: settings.parallelism,
    });
    const context = {
      log,
      allowed: projectMatcher(settings.allowedProjects),
      upstream,
      agent,
      upstreamTimeoutMs: durationMs(settings.upstreamTimeout),
    };
    const tunnel = new Tunnel({
      gateway: new URL(token.gateway),
      token: settings.token,
      role: "vcs-agent",
      metadata: settings.metadataTags,
      parallelism: settings.parallelism,
      proxy: settings.httpsProxy,
      noProxy: settings.noProxy,
      log,
      onStream: (stream, headers) => serveStream(stream, headers, settings, context),
    });
    return {
      ready: tunnel.ready,
      stopped: tunnel.stopped,
      connected: () => tunnel.connected,
      busy: () => tunnel.busy,
      drain: async (deadline) => {
        await tunnel.drain(deadline);
        agent.destroy();
      },
    };
  },
};
