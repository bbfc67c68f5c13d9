import type { AwsClient, AwsError } from "./aws";

// PutLogEvents' rules: at most 10,000 events and 1,048,576 bytes a batch (each message's
// UTF-8 bytes plus 26), in time order, spanning at most 24 hours; an event at most 256 KB
// (the limit every partition documents).
const MAX_EVENTS = 10_000;
const MAX_BATCH_BYTES = 1_048_576;
const MAX_EVENT_BYTES = 262_118;
const MAX_SPAN_MS = 86_340_000;

export interface LogShipper {
  /** Buffer one line (a sink of the logger). */
  push(message: string): void;
  /** Ship every few seconds from now on. */
  start(): void;
  /** A last attempt, whatever the back-off says. */
  stop(): Promise<void>;
  /** Send what is buffered. Never rejects: each flush starts afresh, whatever the last one met. */
  flush(): Promise<void>;
}

/**
 * Ships log lines to the pool's CloudWatch log group, one stream per instance. Lines wait in
 * a bounded buffer (the oldest are dropped past 10,000) and go out every few seconds in
 * batches CloudWatch accepts. No failure stops later batches: a batch refused for what it is
 * (a 4xx that would never succeed) is dropped; throttling, a 5xx, a missing stream or missing
 * permissions keep it and back off. What is lost is counted and said in the stream, where it
 * was lost. (Closures, not a class: their names shrink to a letter in the bundle.)
 */
export function logShipper(
  client: AwsClient,
  logGroupName: string,
  logStreamName: string,
  intervalMs = 5000,
): LogShipper {
  const buffer: { timestamp: number; message: string }[] = [];
  const where = { logGroupName, logStreamName };
  let dropped = 0;
  let why = "";
  let timer: NodeJS.Timeout | undefined;
  let streamReady = false;
  let failures = 0;
  let retryAt = 0;
  let flushing = Promise.resolve();
  const drop = (count: number, reason: string) => ((dropped += count), (why = reason));

  const send = async (): Promise<void> => {
    if (Date.now() < retryAt) return;
    if (dropped) {
      // Said where it happened: before the oldest line still held, with that line's time.
      const timestamp = buffer[0]?.timestamp ?? Date.now();
      buffer.unshift({
        timestamp,
        message: JSON.stringify({
          time: new Date(timestamp),
          level: "warn",
          msg: "log lines dropped",
          count: dropped,
          reason: why,
        }),
      });
      dropped = 0;
    }
    while (buffer.length) {
      let count = 0;
      for (let bytes = 0; count < buffer.length && count < MAX_EVENTS; count++) {
        bytes += Buffer.byteLength(buffer[count].message) + 26;
        if (bytes > MAX_BATCH_BYTES || buffer[count].timestamp - buffer[0].timestamp > MAX_SPAN_MS) break;
      }
      try {
        if (!streamReady) {
          // Made once per instance; a restarted runtime finds it there.
          await client.json("logs", "Logs_20140328.CreateLogStream", where).catch((error: AwsError) => {
            if (!error.code?.includes("AlreadyExists")) throw error;
          });
          streamReady = true;
        }
        // (Events CloudWatch finds too old or too new are left out by it, the others kept.)
        await client.json("logs", "Logs_20140328.PutLogEvents", {
          ...where,
          logEvents: buffer.slice(0, (count ||= 1)),
        });
        buffer.splice(0, count);
        failures = 0;
      } catch (error) {
        const { code = "", status = 500 } = error as Partial<AwsError>;
        // The stream was deleted under us: the next attempt makes it again.
        streamReady &&= !code.includes("NotFound");
        // Worth another try: a server fault, throttling, a missing stream, or credentials and permissions that may yet arrive.
        if (status >= 500 || /Throttl|TooMany|NotFound|Denied|Unrecognized|Expired/.test(code)) {
          retryAt = Date.now() + Math.min(300_000, intervalMs * 2 ** ++failures);
          return;
        }
        drop(buffer.splice(0, count).length, `refused: ${(error as Error).message}`);
      }
    }
  };
  const flush = () => (flushing = flushing.then(send));

  return {
    push(message) {
      // Never before the line ahead of it (the clock may step back); cut to the event limit.
      const cut =
        Buffer.byteLength(message) > MAX_EVENT_BYTES
          ? Buffer.from(message).subarray(0, MAX_EVENT_BYTES - 16) + " [cut]"
          : message;
      buffer.push({ timestamp: Math.max(Date.now(), buffer.at(-1)?.timestamp ?? 0), message: cut });
      if (buffer.length > MAX_EVENTS) drop(buffer.splice(0, 1).length, "buffer full");
    },
    start: () => void (timer = setInterval(flush, intervalMs).unref()),
    async stop() {
      clearInterval(timer);
      retryAt = 0;
      await flush();
    },
    flush,
  };
}
