import http from "node:http";
import https from "node:https";

export interface HttpResponse {
  status: number;
  body: string;
}

/** Node's client for the URL's scheme. */
export const transport = (url: URL) => (url.protocol === "https:" ? https : http);

/**
 * One small request with a deadline; the whole body is read (these are API calls, not streams). Node's fetch: the
 * unit's proxy variables apply to it as to the WebSocket (NODE_USE_ENV_PROXY), and no client of our own is shipped.
 */
export async function request(
  url: URL,
  options: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<HttpResponse> {
  try {
    const res = await fetch(url, { ...options, signal: AbortSignal.timeout(options.timeoutMs ?? 10_000) });
    return { status: res.status, body: await res.text() };
  } catch (error) {
    // fetch says only "fetch failed" (the reason is its cause) or that it was aborted.
    const { name, message, cause } = error as Error & { cause?: Error };
    throw new Error(
      `request to ${url.host} ${name === "TimeoutError" ? "timed out" : `failed: ${cause?.message ?? message}`}`,
    );
  }
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
