import http from "node:http";
import net from "node:net";
import tls from "node:tls";
import { Readable } from "node:stream";
import { CONNECT_PATH, UPGRADE_PROTOCOL } from "../../protocol/vcs";
import { BUILT_FOR } from "../config/built-for";
import { transport } from "../runtime/http";

/** Whether NO_PROXY exempts a host: "*", exact names, ".suffix" or "suffix" domains, optional ":port". */
export function bypassesProxy(host: string, port: string, noProxy = ""): boolean {
  return noProxy
    .split(",")
    .map((entry) => entry.trim().toLowerCase())
    .filter(Boolean)
    .some((entry) => {
      if (entry === "*") return true;
      // An IPv6 address is bracketed ("[fd00::5]:8443"), as the settings take it.
      const [, name, entryPort] = /^\[(.+)\](?::(\d+))?$/.exec(entry) ?? /^([^:]*)(?::(.*))?$/.exec(entry) ?? [];
      if (entryPort && entryPort !== port) return false;
      const bare = name.replace(/^\*?\./, "");
      return host === bare || host.endsWith(`.${bare}`);
    });
}

/** The socket's `ok` event within the deadline; a socket that misses it is ended, not left open. */
function once<T>(socket: net.Socket, ok: string, timeoutMs: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const fail = (error: Error) => (clearTimeout(timer), socket.destroy(), reject(error));
    const timer = setTimeout(() => fail(new Error(`${what} timed out`)), timeoutMs);
    socket.once(ok, (value: T) => (clearTimeout(timer), resolve(value)));
    socket.once("error", fail);
  });
}

/** A TCP connection to host:port, through an HTTP proxy's CONNECT when one applies. */
async function openSocket(
  host: string,
  port: number,
  proxy: string | undefined,
  timeoutMs: number,
): Promise<net.Socket> {
  if (!proxy) {
    const socket = net.connect({ host, port, noDelay: true });
    await once(socket, "connect", timeoutMs, `connecting to ${host}:${port}`);
    return socket;
  }
  const proxyUrl = new URL(proxy);
  // This dialer speaks to its proxy in plain HTTP: never to one that expects TLS (its credentials would go in clear).
  if (proxyUrl.protocol !== "http:")
    throw new Error(
      `the proxy ${proxyUrl.host} is ${proxyUrl.protocol}//: this dialer reaches proxies by http:// only`,
    );
  const headers: Record<string, string> = { host: `${host}:${port}` };
  // On EC2 the component refuses a proxy URL with credentials (as every URL argument).
  if (BUILT_FOR.platform !== "ec2" && proxyUrl.username)
    headers["proxy-authorization"] =
      `Basic ${Buffer.from(`${decodeURIComponent(proxyUrl.username)}:${decodeURIComponent(proxyUrl.password)}`).toString("base64")}`;
  // agent: false: the CONNECT goes to the proxy itself, never through an environment proxy.
  const req = http.request({
    host: proxyUrl.hostname,
    port: proxyUrl.port || 80,
    method: "CONNECT",
    path: `${host}:${port}`,
    headers,
    agent: false,
  });
  req.end();
  const [res, socket] = await new Promise<[http.IncomingMessage, net.Socket]>((resolve, reject) => {
    const timer = setTimeout(
      () => (req.destroy(), reject(new Error(`the proxy ${proxyUrl.host} did not answer CONNECT`))),
      timeoutMs,
    );
    req.once("connect", (r, s) => (clearTimeout(timer), resolve([r, s])));
    req.once("error", (e) => (clearTimeout(timer), reject(e)));
  });
  if (res.statusCode !== 200) {
    socket.destroy();
    throw new Error(`the proxy ${proxyUrl.host} refused CONNECT ${host}:${port} with ${res.statusCode}`);
  }
  socket.setNoDelay(true);
  return socket;
}

export interface DialOptions {
  proxy?: string;
  noProxy?: string;
  timeoutMs?: number;
  /** The upgrade request's path and protocol: the multiplexed tunnel's by default. */
  path?: string;
  protocol?: string;
  /** Throws if the gateway's 101 answer is not acceptable (a WebSocket's accept key). */
  check?(response: http.IncomingMessage): void;
}

/** A connection to the gateway: TCP (through HTTPS_PROXY unless NO_PROXY exempts it), then TLS for https://. */
export async function openGatewaySocket(
  gateway: URL,
  options: Pick<DialOptions, "proxy" | "noProxy" | "timeoutMs"> = {},
): Promise<net.Socket> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const secure = gateway.protocol === "https:";
  const port = Number(gateway.port || (secure ? 443 : 80));
  const host = gateway.hostname.replace(/^\[|\]$/g, "");
  // A plain http:// gateway is a loopback one (gatewayUrlProblem): never through a proxy, which would read the token
  // in clear, and whose own loopback is not ours.
  const proxy =
    secure && options.proxy && !bypassesProxy(host.toLowerCase(), String(port), options.noProxy)
      ? options.proxy
      : undefined;
  const socket = await openSocket(host, port, proxy, timeoutMs);
  if (!secure) return socket;
  // host: the name (or IP) the certificate is checked against; SNI only for names.
  const secured = tls.connect({ socket, host, servername: net.isIP(host) ? undefined : host });
  await once(secured, "secureConnect", timeoutMs, `TLS with ${gateway.host}`).catch((error: Error) => {
    socket.destroy();
    throw error;
  });
  return secured;
}

/**
 * A request to the gateway on a connection of its own (the VCS agent's dial; state transfers off EC2). On EC2,
 * Node's own proxy support and TLS carry it: the unit gives the runtime the pool's proxy as HTTPS_PROXY and NO_PROXY
 * with NODE_USE_ENV_PROXY, which the AWS calls go by too, and the component refuses a proxy with credentials.
 * Elsewhere (Kubernetes, docker run) the settings' proxy: openGatewaySocket.
 */
async function requestGateway(
  gateway: URL,
  request: Omit<GatewayRequest, "body">,
  options: Pick<DialOptions, "proxy" | "noProxy" | "timeoutMs">,
): Promise<http.ClientRequest> {
  const { method, path, headers, signal } = request;
  if (BUILT_FOR.platform === "ec2")
    return transport(gateway).request(new URL(path, gateway), { method, headers, signal });
  const socket = await openGatewaySocket(gateway, options);
  if (signal?.aborted) {
    socket.destroy();
    signal.throwIfAborted();
  }
  return http.request({
    createConnection: () => socket,
    method,
    path,
    headers: { host: gateway.host, ...headers },
    signal,
  });
}

/** A request to the gateway: the body streamed; aborting the signal ends the request, and the answer's body with it. */
export interface GatewayRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: AsyncIterable<Uint8Array>;
  signal?: AbortSignal;
}

/** The gateway's answer to gatewayRequest: its status, and its body as a stream. */
export type GatewayResponse = Readable & { statusCode?: number };

/**
 * On EC2, Node's fetch (undici, as the link's WebSocket): the unit's proxy variables apply, and the bundle loads no
 * HTTP client of Node's besides. It is given as long to open and answer as the link's dial; the body then takes its time.
 */
export async function fetchGateway(
  gateway: URL,
  request: GatewayRequest,
  timeoutMs = 10_000,
): Promise<GatewayResponse> {
  const slow = new AbortController();
  const timer = setTimeout(() => slow.abort(new Error(`${gateway.host} did not answer`)), timeoutMs);
  // The caller's signal ends the request, and the answer's body with it.
  const signal = request.signal ? AbortSignal.any([slow.signal, request.signal]) : slow.signal;
  try {
    const { status, body } = await fetch(new URL(request.path, gateway), {
      method: request.method,
      headers: request.headers,
      // An async iterable of chunks, which Node's fetch sends as it reads them (duplex "half").
      body: request.body,
      duplex: "half",
      // The gateway's answer is its own: a redirect would carry the launcher's proof elsewhere (http.request, off
      // EC2, follows none either).
      redirect: "error",
      signal,
    } as RequestInit);
    return Object.assign(body ? Readable.fromWeb(body as never) : Readable.from([]), { statusCode: status });
  } catch (error) {
    // fetch says only "fetch failed" (the reason is its cause).
    throw (signal.reason as Error) ?? (error as Error & { cause?: Error }).cause ?? error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * One HTTP request to the gateway over its own connection, proxy and TLS as for the link
 * (run state: large bodies streamed both ways). Resolves with the response once its head arrives.
 */
export async function gatewayRequest(
  gateway: URL,
  request: GatewayRequest,
  options: Pick<DialOptions, "proxy" | "noProxy" | "timeoutMs"> = {},
): Promise<GatewayResponse> {
  if (BUILT_FOR.platform === "ec2") return fetchGateway(gateway, request, options.timeoutMs);
  const req = await requestGateway(
    gateway,
    { ...request, headers: { connection: "close", ...request.headers } },
    options,
  );
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once("response", resolve);
    req.once("error", reject);
  });
  if (request.body) {
    const body = Readable.from(request.body);
    body.once("error", (error: Error) => req.destroy(error));
    body.pipe(req);
  } else req.end();
  return response;
}

/**
 * Dial the gateway and authenticate: TCP (through HTTPS_PROXY unless NO_PROXY exempts the
 * gateway), TLS for https:// gateways (NODE_EXTRA_CA_CERTS adds a custom CA), then an
 * HTTP/1.1 Upgrade carrying the token. Returns the socket, ready for what was upgraded to.
 */
export async function dialGateway(
  gateway: URL,
  headers: Record<string, string>,
  options: DialOptions = {},
): Promise<net.Socket> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const req = await requestGateway(
    gateway,
    {
      method: "GET",
      path: options.path ?? CONNECT_PATH,
      headers: { connection: "Upgrade", upgrade: options.protocol ?? UPGRADE_PROTOCOL, ...headers },
    },
    options,
  );
  req.end();
  return new Promise<net.Socket>((resolve, reject) => {
    // (On EC2 the connection opens in this time too.)
    const timer = setTimeout(
      () => (req.destroy(), reject(new Error("the gateway did not answer the upgrade"))),
      timeoutMs,
    );
    req.once("upgrade", (res: http.IncomingMessage, upgraded: net.Socket, head: Buffer) => {
      clearTimeout(timer);
      try {
        options.check?.(res);
      } catch (error) {
        upgraded.destroy();
        return reject(error);
      }
      // Hold the gateway's first frames in the buffer until a session reads them: a
      // flowing socket with no listener would drop them.
      upgraded.pause();
      if (head.length > 0) upgraded.unshift(head);
      resolve(upgraded);
    });
    req.once("response", (res: http.IncomingMessage) => {
      // A refusal's reason, read within the dial's time and only its first KiB: a hostile
      // gateway's endless answer must not grow the agent.
      let body = "";
      const refused = () => {
        clearTimeout(timer);
        req.destroy();
        reject(
          Object.assign(
            new Error(`the gateway refused the connection: ${res.statusCode} ${body.slice(0, 1024).trim()}`),
            { status: res.statusCode },
          ),
        );
      };
      res.on("data", (chunk) => (body += chunk).length > 1024 && refused());
      res.on("end", refused);
    });
    req.once("error", (error) => (clearTimeout(timer), reject(error)));
  });
}
