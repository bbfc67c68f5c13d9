import type http from "node:http";
import http2 from "node:http2";
import { Readable } from "node:stream";
import { pump } from "../lib/pump";
import {
  BODILESS_METHODS,
  forwardableHeaders,
  repeatedSingular,
  requestHeaders,
  type HeaderMap,
} from "../protocol/vcs";
import { HttpError, readJsonBody } from "./http";
import type { Slot, VcsHub } from "./vcs-hub";
import { bodyRule, checkedWrite } from "./vcs-writes";

const { NGHTTP2_CANCEL } = http2.constants;

export interface ExchangeLimits {
  /** A reader (the client, or the agent for a request body) that takes nothing for this long ends the exchange. */
  stallTimeoutMs: number;
  /** No exchange lasts longer than this, however it trickles. */
  exchangeTimeoutMs: number;
}
/** What the gateway holds of one answer for a slow client, beyond HTTP/2's window. */
const ANSWER_BUFFER = 1024 * 1024;
export const EXCHANGE_DEFAULTS: ExchangeLimits = { stallTimeoutMs: 30_000, exchangeTimeoutMs: 3_600_000 };

/** What a request sends an agent: its head, and whether (and how long) a body follows. */
export interface ForwardedRequest {
  method: string;
  /** Path and query relative to the pool, exactly as the client sent them. */
  path: string;
  headers: HeaderMap;
  hasBody: boolean;
  length?: number;
}

export interface ForwardedResponse {
  status: number;
  headers: HeaderMap;
  body: Readable;
  /** Abandon the request: the agent cancels it at the VCS too. */
  cancel(): void;
}

/**
 * Read a client's framing once, as Node's strict parser left it: the gateway never passes it
 * on, it sends its own (a length it has, or HTTP/2 DATA up to END_STREAM). A body on a
 * method that has none, or a header that must be single given twice, is refused here.
 */
export function clientRequest(req: http.IncomingMessage, path: string): ForwardedRequest | string {
  const method = req.method ?? "GET";
  const repeated = repeatedSingular(req.headersDistinct);
  if (repeated) return `the header ${repeated} is given more than once`;
  const length = req.headers["content-length"] === undefined ? undefined : Number(req.headers["content-length"]);
  const hasBody = req.headers["transfer-encoding"] !== undefined || (length ?? 0) > 0;
  if (hasBody && BODILESS_METHODS.has(method)) return `a ${method} request has no body`;
  return {
    method,
    path,
    headers: requestHeaders(req.headers),
    hasBody,
    length: hasBody ? length : BODILESS_METHODS.has(method) ? undefined : 0,
  };
}

/** The agent's answer as a client may receive it: a final status, and its framing checked and made ours. */
export function responseHead(
  headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader,
): { status: number; headers: HeaderMap; length?: number } | string {
  const status = Number(headers[":status"]);
  if (!Number.isInteger(status) || status < 200 || status > 599)
    return `the agent answered with status ${headers[":status"]}`;
  const declared = headers["content-length"];
  if (declared !== undefined && !/^[0-9]{1,15}$/.test(String(declared)))
    return "the agent's content-length is not a number";
  const length = declared === undefined || status === 204 || status === 304 ? undefined : Number(declared);
  const out = forwardableHeaders(headers as HeaderMap);
  if (length !== undefined) out["content-length"] = String(length);
  return { status, headers: out, length };
}

/**
 * Send one request down a slot's stream and wait for the answer's head. Bodies stream both
 * ways under the stall rule; the whole exchange under its deadline; the slot is released
 * when the stream closes, whatever closed it.
 */
export function exchange(
  hub: VcsHub,
  slot: Slot,
  request: ForwardedRequest,
  body: Readable | undefined,
  limits: ExchangeLimits,
  gone?: AbortSignal,
): Promise<ForwardedResponse> {
  let stream: http2.ClientHttp2Stream;
  try {
    stream = hub.open(slot, request, request.hasBody);
  } catch (error) {
    return Promise.reject(error);
  }
  stream.on("error", () => undefined); // a reset or a dropped agent: seen as the stream's close
  const cancel = (): void => void (stream.destroyed || stream.close(NGHTTP2_CANCEL));
  const deadline = setTimeout(cancel, limits.exchangeTimeoutMs);
  gone?.addEventListener("abort", cancel, { once: true });
  stream.once("close", () => {
    clearTimeout(deadline);
    gone?.removeEventListener("abort", cancel);
  });
  if (body && request.hasBody) {
    pump(body, stream, { length: request.length, stallMs: limits.stallTimeoutMs, fail: cancel });
    body.once("error", cancel);
  }
  return new Promise<ForwardedResponse>((resolve, reject) => {
    const onClose = () =>
      reject(new HttpError(502, `the agent closed the request before answering (${stream.rstCode})`));
    stream.once("close", onClose);
    stream.once("response", (headers) => {
      stream.off("close", onClose);
      const head = responseHead(headers);
      if (typeof head === "string") {
        cancel();
        return reject(new HttpError(502, head));
      }
      resolve({ status: head.status, headers: head.headers, body: stream, cancel });
    });
  });
}

/**
 * The HTTP entry of a VCS pool: /<pool>/<path> from a plain client (git, curl, a service).
 * The client's slot is released exactly once: by the stream's close, or, if it never got
 * one, by leaving the queue when it goes away.
 */
export function serveClient(
  hub: VcsHub,
  pool: string,
  client: string,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  path: string,
  limits: ExchangeLimits,
  fail: (error: HttpError) => void,
): void {
  const request = clientRequest(req, path);
  if (typeof request === "string") return fail(new HttpError(400, request));
  const rule = bodyRule(request.method, path, req.headers["content-type"], request.hasBody);
  if (rule !== "stream" && rule !== "check") return fail(new HttpError(400, rule));
  if (rule === "stream") return serveRequest(hub, pool, client, request, req, res, limits, fail);
  // Held whole to be checked, and until its exchange is over, within the gateway's budget for
  // such bodies and this client's part of it.
  const release = hub.writes.take(Math.min(request.length ?? WRITE_BODY_LIMIT, WRITE_BODY_LIMIT), client);
  if (!release) return fail(new HttpError(503, "too many write bodies are being received at once: try again"));
  res.once("close", release);
  readJsonBody(req, "a JSON object", WRITE_BODY_LIMIT).then(
    (body) => {
      const checked = checkedWrite(path, body);
      if (typeof checked === "string") return fail(new HttpError(400, checked));
      serveRequest(hub, pool, client, checkedRequest(request, checked), Readable.from([checked]), res, limits, fail);
    },
    (error: HttpError) => (release(), fail(error)),
  );
}

const withoutEncoding = ({ "content-encoding": _, ...rest }: HeaderMap): HeaderMap => rest;

/** A write's largest JSON body. */
export const WRITE_BODY_LIMIT = 1024 * 1024;

/** A write as it crosses once checked: its re-serialised body, said to be JSON, of that length. */
export const checkedRequest = (request: ForwardedRequest, body: Buffer): ForwardedRequest => ({
  ...request,
  // The bytes are the gateway's own now: plain JSON, whatever encoding the client's had.
  headers: { ...withoutEncoding(request.headers), "content-type": "application/json" },
  hasBody: true,
  length: body.length,
});

/** One request, its body from the client or checked here, through a stream of the pool. */
function serveRequest(
  hub: VcsHub,
  pool: string,
  client: string,
  request: ForwardedRequest,
  body: Readable,
  res: http.ServerResponse,
  limits: ExchangeLimits,
  fail: (error: HttpError) => void,
): void {
  // The client gone before the exchange is through: out of the queue, or its stream cancelled.
  const gone = new AbortController();
  res.once("close", () => res.writableFinished || gone.abort());
  hub.acquire(pool, client, gone.signal).then(
    (slot) => {
      if (gone.signal.aborted) return slot.release();
      exchange(hub, slot, request, body, limits, gone.signal).then((response) => {
        try {
          res.writeHead(response.status, response.headers);
        } catch (error) {
          // The agent's headers are not valid HTTP/1.1 (the agent is not trusted to be well-formed).
          response.cancel();
          return fail(new HttpError(502, `the agent's answer cannot be forwarded: ${(error as Error).message}`));
        }
        res.strictContentLength = response.headers["content-length"] !== undefined;
        // An answer cut short is never ended as if whole.
        response.body.once("close", () => res.writableEnded || res.destroy());
        const length =
          response.headers["content-length"] === undefined ? undefined : Number(response.headers["content-length"]);
        pump(response.body, res, {
          length,
          stallMs: limits.stallTimeoutMs,
          highWater: ANSWER_BUFFER,
          fail: () => (response.cancel(), res.destroy()),
        });
      }, fail);
    },
    (error: HttpError) => gone.signal.aborted || fail(error),
  );
}
