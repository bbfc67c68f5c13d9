import type { Readable } from "node:stream";

/** A failure the gateway answers with this HTTP status and message. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** Seconds a client should wait before trying again (a 503's Retry-After). */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/**
 * JSON text made before the answer is written, and written as it is. A Flows answer is encoded once, where the
 * gateway counts the bytes it holds: encoding the agent's answer again can make it about five times longer
 * (`9e20` comes back as 21 digits).
 */
export class JsonText {
  constructor(readonly text: string) {}
}

/** A request's JSON body, at most `limit` bytes; a clear 413 or 400 otherwise. */
export function readJsonBody(req: Readable, shape: string, limit = 1_048_576): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    req.once("error", reject);
    req.once("end", () => {
      if (size > limit) return reject(new HttpError(413, `a request body is at most ${limit} bytes`));
      try {
        // (A body that came in one chunk, as a small one does, is read where it is.)
        resolve(JSON.parse((chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)).toString("utf8")));
      } catch {
        reject(new HttpError(400, `the body must be JSON: ${shape}`));
      }
    });
  });
}
