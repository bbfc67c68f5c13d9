import http from "node:http";
import https from "node:https";

export interface HttpResponse {
  status: number;
  body: string;
}

/** Node's client for the URL's scheme. */
export const transport = (url: URL) => (url.protocol === "https:" ? https : http);

/** One small request with a deadline; the whole body is read (these are API calls, not streams). */
export function request(
  url: URL,
  options: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const req = transport(url).request(
      url,
      { method: options.method ?? "GET", headers: options.headers, timeout: options.timeoutMs ?? 10_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`request to ${url.host} timed out`)));
    req.on("error", reject);
    req.end(options.body);
  });
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Wait for `ms`, or less if `wake` is called; the timer never outlives the wait. */
export function interruptibleSleep(ms: number): { done: Promise<void>; wake: () => void } {
  let wake!: () => void;
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => (clearTimeout(timer), resolve());
  });
  return { done, wake };
}
