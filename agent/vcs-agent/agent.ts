import http from "node:http";
import https from "node:https";
import type { VcsAgentSettings } from "../config/vcs-agent";
import type { Logger } from "../../lib/log";
import type { Role, RunningAgent } from "../runtime/runtime";
import type { MuxStream, RequestHead } from "../../protocol/mux";
import { Tunnel } from "../tunnel/tunnel";
import { decodeToken } from "../../protocol/token";
import { forwardableHeaders } from "../../protocol/vcs";
import { classify, projectMatcher } from "./allowlist";
import { streamed } from "../../lib/streaming-gc";

/** Never printed, even with debug-print-all. */
const CREDENTIAL_HEADERS = /^(authorization|private-token|job-token|cookie|set-cookie|x-[a-z-]*token)$/i;
const DEBUG_BODY_LIMIT = 64 * 1024;

const redactHeaders = (headers: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, CREDENTIAL_HEADERS.test(name) ? "[redacted]" : value]));

/** The credential values a request carries, to blank out wherever they reappear (an echoing body). */
const credentialValues = (headers: Record<string, unknown>) =>
  Object.entries(headers)
    .filter(([name, value]) => CREDENTIAL_HEADERS.test(name) && typeof value === "string")
    .flatMap(([, value]) => [value as string, ...(value as string).split(" ").slice(1)])
    .filter((value) => value.length >= 6);

const redactText = (text: string, secrets: string[]) => secrets.reduce((out, secret) => out.split(secret).join("[redacted]"), text);

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

/** Answer with a JSON body of our own, without reading the rest of the request's body. */
function answerAlone(stream: MuxStream, status: number, body: object): void {
  stream.respond({ status, headers: { "content-type": "application/json" } });
  stream.end(JSON.stringify(body));
  stream.stopReading();
}

/**
 * Serve one stream from the gateway: refuse what the allowlist does not name, otherwise
 * forward it to the VCS and stream both bodies, with backpressure both ways. A stream the
 * gateway cancels (its client went away) cancels the request to the VCS.
 */
export function serveStream(
  stream: MuxStream,
  head: RequestHead,
  settings: VcsAgentSettings,
  context: { log: Logger; allowed: RegExp; upstream: URL; agent: http.Agent },
): void {
  const started = performance.now();
  const { method, path: target } = head;
  const decision = classify(settings.vendor, method, target, context.allowed);
  const elapsed = () => Math.round((performance.now() - started) * 100) / 100;
  stream.on("error", () => undefined); // a reset; its reason is logged when the stream closes

  if (!decision.allowed) {
    answerAlone(stream, 403, { error: "refused by the VCS agent", reason: decision.reason });
    context.log.info("denied", { method, path: target, project: decision.project, status: 403, reason: decision.reason, durationMs: elapsed() });
    return;
  }

  const base = context.upstream.pathname.replace(/\/$/, "");
  let request: http.ClientRequest;
  try {
    request = (context.upstream.protocol === "https:" ? https : http).request({
      protocol: context.upstream.protocol,
      hostname: context.upstream.hostname,
      port: context.upstream.port,
      method,
      path: base + target,
      headers: { ...forwardableHeaders(head.headers), host: context.upstream.host },
      agent: context.agent,
    });
  } catch (error) {
    // Headers Node will not send (a bad name or value): the gateway's client is told, nothing reaches the VCS.
    answerAlone(stream, 400, { error: "the request cannot be forwarded", reason: (error as Error).message });
    context.log.info(decision.what, { method, path: target, project: decision.project, status: 400, error: (error as Error).message, durationMs: elapsed() });
    return;
  }
  const requestBody = tap(stream, settings.debugPrintAll);
  let status = 0;
  let bytes = 0;
  let done = false;
  const finish = (extra: Record<string, unknown> = {}) => {
    if (done) return;
    done = true;
    const reason = stream.resetReason;
    const outcome = reason ? (reason === "cancel" ? { cancelled: true } : { error: `stream reset (${reason})` }) : extra;
    context.log.info(decision.what, { method, path: target, project: decision.project, status, bytes, durationMs: elapsed(), ...outcome });
  };

  // A stream closes once both bodies are through, or when it is reset (the gateway's client
  // went away), which cancels the request to the VCS.
  stream.once("close", () => {
    if (stream.resetReason) request.destroy();
    if (settings.debugPrintAll && status !== 0) {
      const secrets = credentialValues(head.headers);
      context.log.debug("exchange", {
        method,
        path: target,
        requestHeaders: redactHeaders(forwardableHeaders(head.headers)),
        requestBody: redactText(requestBody(), secrets),
        status,
        responseHeaders: redactHeaders(responseHeaders),
        responseBody: redactText(responseBody(), secrets),
      });
    }
    finish();
  });
  // pipe() rather than pipeline(): pipeline builds an AbortError on every completion, a
  // measurable cost per request; ends and resets are read from the stream's close instead.
  if (stream.hasBody) stream.pipe(request);
  else {
    request.end();
    stream.resume();
  }
  let responseHeaders: http.IncomingHttpHeaders = {};
  let responseBody = () => "";
  let responded = false;
  request.on("response", (response) => {
    status = response.statusCode ?? 502;
    responseHeaders = response.headers;
    if (stream.destroyed) {
      response.destroy();
      return;
    }
    stream.respond({ status, headers: forwardableHeaders(response.headers) });
    responded = true;
    response.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      streamed(chunk.length);
    });
    responseBody = tap(response, settings.debugPrintAll);
    response.once("error", () => stream.cancel("error"));
    response.pipe(stream);
  });
  request.on("error", (error) => {
    if (done) return;
    status = 502;
    if (!stream.destroyed && !responded) {
      answerAlone(stream, 502, { error: "the VCS did not answer", reason: error.message });
    } else stream.cancel("error");
    finish({ error: error.message });
  });
}

/** The `vcs-agent` role: dial the gateway named by the token and serve the VCS through it. */
export const vcsAgentRole: Role<VcsAgentSettings> = {
  name: "vcs-agent",
  start(settings, { log }): RunningAgent {
    const token = decodeToken(settings.token);
    const upstream = new URL(settings.targetBaseEndpoint);
    const agent = new (upstream.protocol === "https:" ? https : http).Agent({ keepAlive: true, maxSockets: settings.parallelism });
    const context = { log, allowed: projectMatcher(settings.allowedProjects), upstream, agent };
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
