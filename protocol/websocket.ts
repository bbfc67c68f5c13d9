import { createHash, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";

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
 * the connection (1009) rather than grow without bound. Events: "message" (text), "close".
 */
export class WebSocket extends EventEmitter {
  private buffer: Buffer = Buffer.alloc(0);
  private fragments: Buffer[] = [];
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly isClient: boolean,
  ) {
    super();
    // Messages are small and answered at once: never let Nagle hold one back.
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    // A peer that dies sends FIN and nothing more; an HTTP server's sockets stay half-open on it.
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
      const masked = Buffer.allocUnsafe(length);
      for (let i = 0; i < length; i++) masked[i] = payload[i] ^ key[i & 3];
      payload = masked;
    }
    this.socket.write(Buffer.concat([header, payload]));
  }

  private receive(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 2 && !this.closed) {
      const fin = (this.buffer[0] & 0x80) !== 0;
      const opcode = this.buffer[0] & 0x0f;
      const masked = (this.buffer[1] & 0x80) !== 0;
      let length = this.buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this.buffer.length < 4) return;
        length = this.buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this.buffer.length < 10) return;
        const big = this.buffer.readBigUInt64BE(2);
        if (big > BigInt(WEBSOCKET_MAX_MESSAGE)) return this.close(1009);
        length = Number(big);
        offset = 10;
      }
      // Servers take only masked frames and clients only unmasked ones (RFC 6455, 5.1).
      if (masked === this.isClient) return this.close(1002);
      const total = offset + (masked ? 4 : 0) + length;
      if (this.buffer.length < total) return;
      let payload = this.buffer.subarray(offset + (masked ? 4 : 0), total);
      if (masked) {
        const key = this.buffer.subarray(offset, offset + 4);
        payload = Buffer.from(payload);
        for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
      }
      this.buffer = this.buffer.subarray(total);
      this.handle(fin, opcode, payload);
    }
  }

  private handle(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case 0x0:
      case 0x1: {
        this.fragments.push(payload);
        if (this.fragments.reduce((n, f) => n + f.length, 0) > WEBSOCKET_MAX_MESSAGE) return this.close(1009);
        if (fin) {
          const text = Buffer.concat(this.fragments).toString("utf8");
          this.fragments = [];
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
