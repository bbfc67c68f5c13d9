import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { PING_INTERVAL_MS, PING_MESSAGE, PING_TIMEOUT_MS, PONG_MESSAGE, WEBSOCKET_MAX_MESSAGE } from "./link";

export { parseMessage, WEBSOCKET_MAX_MESSAGE } from "./link";

/** RFC 6455's magic, for the Sec-WebSocket-Accept answer. */
export const acceptKey = (key: string) =>
  createHash("sha1")
    .update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
export const newKey = () => randomBytes(16).toString("base64");

/** Masking keys, 4 bytes at a time from random bytes drawn 4 KiB at a time: one draw per 1,024 frames, not per frame. */
const keys = /* @__PURE__ */ Buffer.alloc(4096);
let keyAt = 4096;
function maskKey(): Buffer {
  if (keyAt === keys.length) {
    randomFillSync(keys);
    keyAt = 0;
  }
  return keys.subarray(keyAt, (keyAt += 4));
}

/** A payload masked (or unmasked) with a 4-byte key, into a new buffer (RFC 6455, 5.3). */
/** The most pieces one message may come in (none of the agents or the gateway sends a message in more than one). */
export const MAX_FRAGMENTS = 1024;

/** `payload` XOR the 4-byte `key`, written to `out` (which may be `payload` itself) from `at`. */
function xor(payload: Buffer, key: Buffer, out = Buffer.allocUnsafe(payload.length), at = 0): Buffer {
  for (let i = 0; i < payload.length; i++) out[at + i] = payload[i] ^ key[i & 3];
  return out;
}

/** Whether an upgrade request is a WebSocket handshake the server side can answer. */
export const isWebSocketUpgrade = (headers: Record<string, string | string[] | undefined>) =>
  String(headers.upgrade).toLowerCase() === "websocket" &&
  typeof headers["sec-websocket-key"] === "string" &&
  headers["sec-websocket-version"] === "13";

/** The server side of the handshake: answer 101 and open the WebSocket on the upgraded socket. */
export function acceptWebSocket(
  headers: Record<string, string | string[] | undefined>,
  socket: Socket,
  head: Buffer,
): WebSocket {
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(String(headers["sec-websocket-key"]))}\r\n\r\n`,
  );
  if (head.length > 0) socket.unshift(head);
  return new WebSocket(socket, false);
}

/**
 * A WebSocket over an upgraded socket (RFC 6455): text messages, fragmentation, ping/pong
 * and close. Clients mask what they send, as the RFC requires. Messages over 16 MiB close
 * the connection (1009) rather than grow without bound. Events: "message" (text), "pong" (its payload),
 * "close". Received chunks are joined only once they hold what the next step needs (a
 * header, then the whole frame), so a byte is copied about once whatever the chunk sizes.
 * (Its state lives in the constructor's closures, not in members: the runtime bundles
 * shorten local names to a letter, which counts against user-data.)
 */
export class WebSocket extends EventEmitter {
  /** Until either side closes it. */
  open = true;
  /** Sends a text message; `sent` is called once the socket has written it (or failed to). */
  send: (text: string, sent?: () => void) => void;
  /** Sends a ping; returns its payload, which the "pong" event answering it carries. */
  ping: () => string;
  /** Bytes sent but not yet written to the connection. */
  buffered: () => number;
  close: (code?: number) => void;
  /**
   * Liveness: a ping every intervalMs; nothing received for timeoutMs after one closes the
   * WebSocket (after a "timeout" event). Any bytes count, not only the pong: on a slow link the
   * pong may queue behind a large message still arriving. Stops when the WebSocket closes.
   */
  keepAlive: (intervalMs?: number, timeoutMs?: number) => void;

  constructor(socket: Socket, isClient: boolean) {
    super();
    let chunks: Buffer[] = [];
    let buffered = 0;
    /** Bytes the next step needs: a header's, then the whole frame's. */
    let needed = 2;
    let fragments: Buffer[] = [];
    let fragmented = 0;

    const finish = () => {
      if (!this.open) return;
      this.open = false;
      socket.destroy();
      this.emit("close");
    };
    /** A frame of `payload` (bytes, or text written as UTF-8), in one buffer, masked in place by a client. */
    const frame = (opcode: number, payload: Buffer | string, sent?: () => void) => {
      if (!this.open) return;
      const length = typeof payload === "string" ? Buffer.byteLength(payload) : payload.length;
      const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
      const start = 2 + extended + (isClient ? 4 : 0);
      const out = Buffer.allocUnsafe(start + length);
      out[0] = 0x80 | opcode;
      out[1] = (isClient ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127);
      if (extended === 2) out.writeUInt16BE(length, 2);
      if (extended === 8) out.writeBigUInt64BE(BigInt(length), 2);
      if (typeof payload === "string") out.write(payload, start);
      else payload.copy(out, start);
      if (isClient) {
        const key = maskKey();
        key.copy(out, start - 4);
        const body = out.subarray(start);
        xor(body, key, body);
      }
      socket.write(out, sent);
    };
    const close = (this.close = (code = 1000) => {
      if (!this.open) return;
      const payload = Buffer.alloc(2);
      payload.writeUInt16BE(code);
      frame(0x8, payload);
      socket.end();
      finish();
    });
    let pings = 0;
    // Each ping's payload its own: a pong says which ping it answers (RFC 6455 5.5.3: the payload echoed).
    const ping = (this.ping = () => {
      const payload = String(++pings);
      frame(0x9, payload);
      return payload;
    });
    this.send = (text, sent) => frame(0x1, text, sent);
    this.buffered = () => socket.writableLength;
    this.keepAlive = (intervalMs = PING_INTERVAL_MS, timeoutMs = PING_TIMEOUT_MS) => {
      let deadline: NodeJS.Timeout | undefined;
      const tick = setInterval(() => {
        // Judged after the next poll phase: bytes that came while this process was busy are read first.
        deadline ??= setTimeout(() => setImmediate(() => deadline && (this.emit("timeout"), close(1001))), timeoutMs);
        ping();
      }, intervalMs);
      socket.on("data", () => (deadline = void clearTimeout(deadline)));
      this.once("close", () => (clearInterval(tick), clearTimeout(deadline)));
    };

    // A ping's answer, unless a message's worth already waits to leave: a peer that pings and never reads fills no memory.
    const answer = (opcode: number, payload: Buffer | string) =>
      socket.writableLength < WEBSOCKET_MAX_MESSAGE ? frame(opcode, payload) : undefined;
    const handle = (fin: boolean, opcode: number, payload: Buffer): void => {
      // A control frame is whole and at most 125 bytes (RFC 6455, 5.5): a 16 MiB ping would be answered in kind.
      if (opcode >= 0x8 && (!fin || payload.length > 125)) return close(1002);
      switch (opcode) {
        case 0x0:
        case 0x1: {
          fragments.push(payload);
          fragmented += payload.length;
          // In bytes and in pieces: an empty fragment costs the sender 6 bytes and the receiver a buffer's keep.
          if (fragmented > WEBSOCKET_MAX_MESSAGE || fragments.length > MAX_FRAGMENTS) return close(1009);
          if (fin) {
            const whole = fragments.length === 1 ? payload : Buffer.concat(fragments, fragmented);
            fragments = [];
            fragmented = 0;
            const text = whole.toString("utf8");
            // A client's ping as text (PING_MESSAGE) is answered here, in order, as a ping frame would be.
            if (!isClient && text === PING_MESSAGE) return answer(0x1, PONG_MESSAGE);
            this.emit("message", text);
          }
          return;
        }
        case 0x8:
          return close();
        case 0x9:
          return answer(0xa, payload);
        case 0xa:
          this.emit("pong", payload.toString("latin1"));
          return;
        default:
          close(1003);
      }
    };
    const receive = (chunk: Buffer): void => {
      chunks.push(chunk);
      buffered += chunk.length;
      // Chunks wait, uncopied, until there are enough bytes for the next header or frame.
      if (buffered < needed) return;
      let buffer = chunks.length === 1 ? chunk : Buffer.concat(chunks, buffered);
      needed = 2;
      while (buffer.length >= 2 && this.open) {
        const fin = (buffer[0] & 0x80) !== 0;
        const opcode = buffer[0] & 0x0f;
        const masked = (buffer[1] & 0x80) !== 0;
        // Servers take only masked frames and clients only unmasked ones (RFC 6455, 5.1).
        if (masked === isClient) return close(1002);
        let length = buffer[1] & 0x7f;
        const offset = length === 126 ? 4 : length === 127 ? 10 : 2;
        const start = offset + (masked ? 4 : 0);
        if (buffer.length < start) {
          needed = start;
          break;
        }
        if (length === 126) length = buffer.readUInt16BE(2);
        else if (length === 127) {
          const big = buffer.readBigUInt64BE(2);
          if (big > BigInt(WEBSOCKET_MAX_MESSAGE)) return close(1009);
          length = Number(big);
        }
        if (buffer.length < start + length) {
          needed = start + length;
          break;
        }
        const payload = buffer.subarray(start, start + length);
        const key = buffer.subarray(offset, start);
        buffer = buffer.subarray(start + length);
        // Unmasked into a buffer of its own: what was received is never written to.
        handle(fin, opcode, masked ? xor(payload, key) : payload);
      }
      chunks = buffer.length > 0 ? [buffer] : [];
      buffered = buffer.length;
    };

    // Messages are small and answered at once: never let Nagle hold one back.
    socket.setNoDelay(true);
    socket.on("data", receive);
    // The peer's FIN ends it too: the gateway's sockets allow half-open connections, so
    // without this a launcher gone without a close frame would linger until a ping timed out.
    socket.on("end", finish);
    socket.on("close", finish);
    socket.on("error", finish);
    socket.resume();
  }
}
