import type { AwsClient } from "./aws";

const MAX_BUFFERED = 10_000;
const MAX_BATCH_BYTES = 1_000_000;

/**
 * Ships log lines to the pool's CloudWatch log group, one stream per instance. Lines wait
 * in a bounded buffer (the oldest are dropped past 10,000) and go out every few seconds.
 */
export class LogShipper {
  private buffer: { timestamp: number; message: string }[] = [];
  private dropped = 0;
  private timer?: NodeJS.Timeout;
  private streamReady = false;
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly client: AwsClient,
    private readonly groupName: string,
    private readonly streamName: string,
    private readonly intervalMs = 5000,
  ) {}

  readonly push = (message: string): void => {
    this.buffer.push({ timestamp: Date.now(), message });
    if (this.buffer.length > MAX_BUFFERED) {
      this.buffer.shift();
      this.dropped++;
    }
  };

  start(): void {
    this.timer = setInterval(() => void this.flush().catch(() => undefined), this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.flush().catch(() => undefined);
  }

  /** Send what is buffered; a failed batch goes back to the front of the buffer. */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(() => this.send());
    return this.flushing;
  }

  private async send(): Promise<void> {
    if (this.dropped > 0) {
      this.buffer.unshift({ timestamp: Date.now(), message: JSON.stringify({ level: "warn", msg: "log lines dropped", count: this.dropped }) });
      this.dropped = 0;
    }
    while (this.buffer.length > 0) {
      if (!this.streamReady) {
        try {
          await this.client.json("logs", "Logs_20140328.CreateLogStream", { logGroupName: this.groupName, logStreamName: this.streamName });
        } catch (error) {
          if (!String(error).includes("ResourceAlreadyExistsException")) throw error;
        }
        this.streamReady = true;
      }
      let bytes = 0;
      let count = 0;
      while (count < this.buffer.length && count < 10_000) {
        bytes += Buffer.byteLength(this.buffer[count].message) + 26;
        if (bytes > MAX_BATCH_BYTES) break;
        count++;
      }
      const batch = this.buffer.splice(0, Math.max(count, 1));
      try {
        await this.client.json("logs", "Logs_20140328.PutLogEvents", { logGroupName: this.groupName, logStreamName: this.streamName, logEvents: batch });
      } catch (error) {
        this.buffer.unshift(...batch);
        throw error;
      }
    }
  }
}
