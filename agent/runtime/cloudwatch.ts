import type { AwsClient, AwsError } from "./aws";

// PutLogEvents' rules: at most 10,000 events and 1,048,576 bytes a batch (each message's
// UTF-8 bytes plus 26), in time order, spanning at most 24 hours; an event at most 256 KB
// (the limit every partition documents).
const MAX_EVENTS = 10_000;
const MAX_BATCH_BYTES = 1_048_576;
const MAX_EVENT_BYTES = 262_118;
const MAX_SPAN_MS = 86_340_000;

/**
 * Ships log lines to the pool's CloudWatch log group, one stream per instance. Lines wait in
 * a bounded buffer (the oldest are dropped past 10,000) and go out every few seconds in
 * batches CloudWatch accepts. No failure stops later batches: a batch refused for what it is
 * (a 4xx that would never succeed) is dropped; throttling, a 5xx, a missing stream or missing
 * permissions keep it and back off. What is lost is counted and said in the stream, where it
 * was lost.
 */
export class LogShipper {
  // (#private members: the bundler shortens their names, which counts against user-data.)
  #buffer: { timestamp: number; message: string }[] = [];
  #dropped = 0;
  #why = "";
  #timer?: NodeJS.Timeout;
  #streamReady = false;
  #failures = 0;
  #retryAt = 0;
  #flushing = Promise.resolve();
  #client: AwsClient;
  #where: { logGroupName: string; logStreamName: string };
  #intervalMs: number;

  constructor(client: AwsClient, logGroupName: string, logStreamName: string, intervalMs = 5000) {
    this.#client = client;
    this.#where = { logGroupName, logStreamName };
    this.#intervalMs = intervalMs;
  }

  readonly push = (message: string): void => {
    // Never before the line ahead of it (the clock may step back); cut to the event limit.
    const cut = Buffer.byteLength(message) > MAX_EVENT_BYTES ? Buffer.from(message).subarray(0, MAX_EVENT_BYTES - 16) + " [cut]" : message;
    this.#buffer.push({ timestamp: Math.max(Date.now(), this.#buffer.at(-1)?.timestamp ?? 0), message: cut });
    if (this.#buffer.length > MAX_EVENTS) this.#drop(this.#buffer.splice(0, 1).length, "buffer full");
  };

  start(): void {
    this.#timer = setInterval(() => void this.flush(), this.#intervalMs);
    this.#timer.unref();
  }

  /** A last attempt, whatever the back-off says. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#retryAt = 0;
    await this.flush();
  }

  /** Send what is buffered. Never rejects: each flush starts afresh, whatever the last one met. */
  flush(): Promise<void> {
    return (this.#flushing = this.#flushing.then(() => this.#send()));
  }

  #drop(count: number, why: string): void {
    this.#dropped += count;
    this.#why = why;
  }

  async #send(): Promise<void> {
    if (Date.now() < this.#retryAt) return;
    if (this.#dropped) {
      // Said where it happened: before the oldest line still held, with that line's time.
      const timestamp = this.#buffer[0]?.timestamp ?? Date.now();
      this.#buffer.unshift({ timestamp, message: JSON.stringify({ time: new Date(timestamp), level: "warn", msg: "log lines dropped", count: this.#dropped, reason: this.#why }) });
      this.#dropped = 0;
    }
    while (this.#buffer.length) {
      let count = 0;
      for (let bytes = 0; count < this.#buffer.length && count < MAX_EVENTS; count++) {
        bytes += Buffer.byteLength(this.#buffer[count].message) + 26;
        if (bytes > MAX_BATCH_BYTES || this.#buffer[count].timestamp - this.#buffer[0].timestamp > MAX_SPAN_MS) break;
      }
      try {
        if (!this.#streamReady) {
          // Made once per instance; a restarted runtime finds it there.
          await this.#client.json("logs", "Logs_20140328.CreateLogStream", this.#where).catch((error: AwsError) => {
            if (!error.code?.includes("AlreadyExists")) throw error;
          });
          this.#streamReady = true;
        }
        // (Events CloudWatch finds too old or too new are left out by it, the others kept.)
        await this.#client.json("logs", "Logs_20140328.PutLogEvents", { ...this.#where, logEvents: this.#buffer.slice(0, (count ||= 1)) });
        this.#buffer.splice(0, count);
        this.#failures = 0;
      } catch (error) {
        const { code = "", status = 500 } = error as Partial<AwsError>;
        // The stream was deleted under us: the next attempt makes it again.
        this.#streamReady &&= !code.includes("NotFound");
        // Worth another try: a server fault, throttling, a missing stream, or credentials and permissions that may yet arrive.
        if (status >= 500 || /Throttl|TooMany|NotFound|Denied|Unrecognized|Expired/.test(code)) {
          this.#retryAt = Date.now() + Math.min(300_000, this.#intervalMs * 2 ** ++this.#failures);
          return;
        }
        this.#drop(this.#buffer.splice(0, count).length, `refused: ${(error as Error).message}`);
      }
    }
  }
}
