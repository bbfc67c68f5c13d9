/**
 * HTTP/2 frames written by hand (RFC 9113 §4, §6; header blocks as HPACK literals, RFC 7541
 * §6.2.2), for hostile peers in tests: what a well-behaved stack refuses to send (framing
 * headers, duplicated single values, control characters, floods) is exactly what they need.
 */
export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
export const CLIENT_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.alloc(9 + payload.length);
  out.writeUIntBE(payload.length, 0, 3);
  out[3] = type;
  out[4] = flags;
  out.writeUInt32BE(stream & 0x7fffffff, 5);
  payload.copy(out, 9);
  return out;
}

/** An HPACK integer with an n-bit prefix (the prefix's high bits given in `first`). */
function integer(value: number, bits: number, first = 0): Buffer {
  const max = (1 << bits) - 1;
  if (value < max) return Buffer.from([first | value]);
  const bytes = [first | max];
  for (value -= max; value >= 128; value >>= 7) bytes.push((value & 0x7f) | 0x80);
  bytes.push(value);
  return Buffer.from(bytes);
}

const literal = (text: string) => {
  const bytes = Buffer.from(text, "latin1");
  return Buffer.concat([integer(bytes.length, 7), bytes]);
};

/** A header block of literal fields never indexed: any name and value, repeated as given. */
export function headerBlock(fields: [name: string, value: string][]): Buffer {
  return Buffer.concat(fields.flatMap(([name, value]) => [Buffer.from([0x10]), literal(name), literal(value)]));
}

export const headers = (stream: number, fields: [string, string][], endStream = false) =>
  frame(FRAME.HEADERS, FLAG.END_HEADERS | (endStream ? FLAG.END_STREAM : 0), stream, headerBlock(fields));
export const data = (stream: number, body: Buffer | string, endStream = false) =>
  frame(FRAME.DATA, endStream ? FLAG.END_STREAM : 0, stream, Buffer.from(body));
export const settings = (values: [id: number, value: number][] = []) =>
  frame(
    FRAME.SETTINGS,
    0,
    0,
    Buffer.concat(
      values.map(([id, value]) =>
        Buffer.from([id >> 8, id & 0xff, value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]),
      ),
    ),
  );
export const settingsAck = () => frame(FRAME.SETTINGS, FLAG.ACK, 0);
export const ping = () => frame(FRAME.PING, 0, 0, Buffer.alloc(8));
export const rstStream = (stream: number, code = 8) => frame(FRAME.RST_STREAM, 0, stream, Buffer.from([0, 0, 0, code]));
export const windowUpdate = (stream: number, increment: number) =>
  frame(
    FRAME.WINDOW_UPDATE,
    0,
    stream,
    Buffer.from([increment >>> 24, (increment >>> 16) & 0xff, (increment >>> 8) & 0xff, increment & 0xff]),
  );
export const SETTING = { MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4, MAX_FRAME_SIZE: 5 } as const;

export interface ReadFrame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** Cuts a byte stream into frames (skipping a client's preface first, when told to). */
export class FrameReader {
  private buffer = Buffer.alloc(0);
  constructor(private skip = 0) {}

  push(chunk: Buffer): ReadFrame[] {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (this.skip > 0) {
      const cut = Math.min(this.skip, this.buffer.length);
      this.buffer = this.buffer.subarray(cut);
      this.skip -= cut;
    }
    const frames: ReadFrame[] = [];
    while (this.buffer.length >= 9) {
      const length = this.buffer.readUIntBE(0, 3);
      if (this.buffer.length < 9 + length) break;
      frames.push({
        type: this.buffer[3],
        flags: this.buffer[4],
        stream: this.buffer.readUInt32BE(5) & 0x7fffffff,
        payload: this.buffer.subarray(9, 9 + length),
      });
      this.buffer = this.buffer.subarray(9 + length);
    }
    return frames;
  }
}
