import { createHash, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { PING_INTERVAL_MS, PING_TIMEOUT_MS } from "./link";

/** RFC 6455's magic, for the Sec-WebSocket-Accept answer. */
export const acceptKey = (key: string) => createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
export const newKey = () => randomBytes(16).toString("base64");

/** The largest message either side takes; a larger one closes the connection (1009). */
export const WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024;

/** A JSON text message, or undefined if it is not JSON (such a message is ignored, not fatal). */
export function parseMessage<T>(text: string): T | undefined {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

/** A payload masked (or unmasked) with a 4-byte key, into a new buffer (RFC 6455, 5.3). */
function xor(payload: Buffer, key: Buffer): Buffer {
  const out = Buffer.allocUnsafe(payload.length);
  for (let i = 0; i < payload.length; i++) out[i] = payload[i] ^ key[i & 3];
  return out;
}

/** Whether an upgrade request is a WebSocket handshake the server side can answer. */
export const isWebSocketUpgrade = (headers: Record<string, string | string[] | undefined>) =>
  String(headers.upgrade).toLowerCase() === "websocket" && typeof headers["sec-websocket-key"] === "string" && headers["sec-websocket-version"] === "13";

/** The server side of the handshake: answer 101 and open the WebSocket on the upgraded socket. */
export function acceptWebSocket(headers: Record<string, string | string[] | undefined>, socket: Socket, head: Buffer): WebSocket {
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(String(headers["sec-websocket-key"]))}\r\n\r\n`);
  if (head.length > 0) socket.unshift(head);
  return new WebSocket(socket, false);
}

/**
 * A WebSocket over an upgraded socket (RFC 6455): text messages, fragmentation, ping/pong
 * and close. Clients mask what they send, as the RFC requires. Messages over 16 MiB close
 * the connection (1009) rather than grow without bound. Events: "message" (text), "pong",
 * "close". Received chunks are joined only once they hold what the next step needs (a
 * header, then the whole frame), so a byte is copied about once whatever the chunk sizes.
 */
export class WebSocket extends EventEmitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes the next step needs: a header's, then the whole frame's. */
  private needed = 2;
  private fragments: Buffer[] = [];
  private fragmented = 0;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly isClient: boolean,
  ) {
    super();
    // Messages are small and answered at once: never let Nagle hold one back.
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    // The peer's FIN ends it too: the gateway's sockets allow half-open connections, so
    // without this a launcher gone without a close frame would linger until a ping timed out.
    socket.on("end", () => this.finish());
    socket.on("close", () => this.finish());
    socket.on("error", () => this.finish());
    socket.resume();
  }

  get open(): boolean {
    return !this.closed;
  }

  send(text: string): void {
    this.frame(0x1, Buffer.from(text, "utf8"));
  }

  ping(): void {
    this.frame(0x9, Buffer.alloc(0));
  }

  /**
   * Liveness: a ping every intervalMs; one unanswered for timeoutMs closes the WebSocket
   * (after a "timeout" event). Stops by itself when the WebSocket closes.
   */
  keepAlive(intervalMs = PING_INTERVAL_MS, timeoutMs = PING_TIMEOUT_MS): void {
    let deadline: NodeJS.Timeout | undefined;
    const tick = setInterval(() => {
      deadline ??= setTimeout(() => (this.emit("timeout"), this.close(1001)), timeoutMs);
      this.ping();
    }, intervalMs);
    this.on("pong", () => (deadline = void clearTimeout(deadline)));
    this.once("close", () => (clearInterval(tick), clearTimeout(deadline)));
  }

  close(code = 1000): void {
    if (this.closed) return;
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code);
    this.frame(0x8, payload);
    this.socket.end();
    this.finish();
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.emit("close");
  }

  private frame(opcode: number, payload: Buffer): void {
    if (this.closed) return;
    const length = payload.length;
    const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
    const mask = this.isClient ? 4 : 0;
    const header = Buffer.alloc(2 + extended + mask);
    header[0] = 0x80 | opcode;
    header[1] = (this.isClient ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127);
    if (extended === 2) header.writeUInt16BE(length, 2);
    if (extended === 8) header.writeBigUInt64BE(BigInt(length), 2);
    if (this.isClient) {
      const key = randomBytes(4);
      key.copy(header, 2 + extended);
      payload = xor(payload, key);
    }
    this.socket.write(Buffer.concat([header, payload]));
  }

  private receive(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    // Chunks wait, uncopied, until there are enough bytes for the next header or frame.
    if (this.buffered < this.needed) return;
    let buffer = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered);
    this.needed = 2;
    while (buffer.length >= 2 && !this.closed) {
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      const masked = (buffer[1] & 0x80) !== 0;
      // Servers take only masked frames and clients only unmasked ones (RFC 6455, 5.1).
      if (masked === this.isClient) return this.close(1002);
      let length = buffer[1] & 0x7f;
      const offset = length === 126 ? 4 : length === 127 ? 10 : 2;
      const start = offset + (masked ? 4 : 0);
      if (buffer.length < start) {
        this.needed = start;
        break;
      }
      if (length === 126) length = buffer.readUInt16BE(2);
      else if (length === 127) {
        const big = buffer.readBigUInt64BE(2);
        if (big > BigInt(WEBSOCKET_MAX_MESSAGE)) return this.close(1009);
        length = Number(big);
      }
      if (buffer.length < start + length) {
        this.needed = start + length;
        break;
      }
      const payload = buffer.subarray(start, start + length);
      const key = buffer.subarray(offset, start);
      buffer = buffer.subarray(start + length);
      // Unmasked into a buffer of its own: what was received is never written to.
      this.handle(fin, opcode, masked ? xor(payload, key) : payload);
    }
    this.chunks = buffer.length > 0 ? [buffer] : [];
    this.buffered = buffer.length;
  }

  private handle(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case 0x0:
      case 0x1: {
        this.fragments.push(payload);
        this.fragmented += payload.length;
        if (this.fragmented > WEBSOCKET_MAX_MESSAGE) return this.close(1009);
        if (fin) {
          const whole = this.fragments.length === 1 ? payload : Buffer.concat(this.fragments, this.fragmented);
          const text = whole.toString("utf8");
          this.fragments = [];
          this.fragmented = 0;
          this.emit("message", text);
        }
        return;
      }
      case 0x8:
        return this.close();
      case 0x9:
        return this.frame(0xa, payload);
      case 0xa:
        this.emit("pong");
        return;
      default:
        this.close(1003);
    }
  }
}
