import {
  constants,
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  X509Certificate,
  type KeyObject,
} from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";

/**
 * Run state sealed for a worker pool's key, so whoever carries or stores it (the gateway)
 * holds only ciphertext. Hybrid: a fresh AES-256-GCM key per payload, wrapped with the
 * pool's RSA key (OAEP, SHA-256), and the payload cut into authenticated chunks so state of
 * any size streams and no plaintext is released before its chunk is verified.
 *
 *   header: "APS1" | u16 wrapped-key length | wrapped key | 7-byte nonce prefix | u32 chunk size
 *   chunks: AES-GCM(chunk) | 16-byte tag, every chunk but the last exactly `chunk size` long
 *
 * Each chunk's nonce is prefix | u32 counter | final flag, and the header is its associated
 * data: chunks cannot be reordered, dropped, truncated or moved to another payload.
 */
const MAGIC = Buffer.from("APS1");
const TAG = 16;
export const SEAL_CHUNK = 64 * 1024;

export class SealError extends Error {
  override name = "SealError";
}

/** The RSA public key of a pool's certificate (PEM). */
export function certificateKey(certificatePem: string): KeyObject {
  return new X509Certificate(certificatePem).publicKey;
}

/** SPACELIFT_POOL_PRIVATE_KEY: the key file as one line of base64. */
export function privateKeyFromBase64(base64: string): KeyObject {
  try {
    return createPrivateKey(Buffer.from(base64, "base64"));
  } catch (error) {
    throw new SealError(`the pool private key does not parse: ${(error as Error).message}`);
  }
}

/** Whether the private key belongs to the certificate (the pair a worker pool was created with). */
export function keyMatchesCertificate(privateKey: KeyObject, certificatePem: string): boolean {
  return new X509Certificate(certificatePem).checkPrivateKey(privateKey);
}

const oaep = (key: KeyObject) => ({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" });

function nonce(prefix: Buffer, counter: number, final: boolean): Buffer {
  const iv = Buffer.alloc(12);
  prefix.copy(iv);
  iv.writeUInt32BE(counter, 7);
  iv[11] = final ? 1 : 0;
  return iv;
}

/**
 * A stream that passes its input on in pieces of `size()` bytes, each through `piece` (the last, shorter or empty,
 * with final set, once the input ends). `head`, if given, first takes a header off the front: the count of its bytes,
 * or 0 while it is incomplete. Input is gathered in a list and joined only once a piece is whole.
 */
function pieces(
  size: () => number,
  piece: (part: Buffer, final: boolean) => Buffer,
  head?: (buffered: Buffer) => number,
  first?: Buffer,
): Transform {
  let pending: Buffer[] = [];
  let bytes = 0;
  let headed = !head;
  const joined = () => Buffer.concat(pending);
  return new Transform({
    construct(callback) {
      if (first) this.push(first);
      callback();
    },
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        pending.push(chunk);
        bytes += chunk.length;
        let all: Buffer | undefined;
        if (!headed) {
          const taken = head!((all = joined()));
          if (!taken) return callback();
          all = all.subarray(taken);
          headed = true;
        }
        if (bytes >= size() || all) {
          all ??= joined();
          for (; all.length >= size(); all = all.subarray(size())) this.push(piece(all.subarray(0, size()), false));
          pending = [all];
          bytes = all.length;
        }
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback: TransformCallback) {
      try {
        if (!headed) throw new SealError("the sealed state is cut short: its header is incomplete");
        callback(null, piece(joined(), true));
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

/** A stream that seals what is written to it for the holder of `publicKey`'s private key. */
export function sealStream(publicKey: KeyObject, chunkSize = SEAL_CHUNK): Transform {
  const dataKey = randomBytes(32);
  const wrapped = publicEncrypt(oaep(publicKey), dataKey);
  const prefix = randomBytes(7);
  const header = Buffer.concat([MAGIC, u16(wrapped.length), wrapped, prefix, u32(chunkSize)]);
  let counter = 0;
  // The final chunk is always there (possibly empty): its flag is what proves nothing was cut off.
  return pieces(
    () => chunkSize,
    (plain, final) => {
      const cipher = createCipheriv("aes-256-gcm", dataKey, nonce(prefix, counter++, final));
      cipher.setAAD(header);
      return Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    },
    undefined,
    header,
  );
}

/** A stream that opens sealed state with the pool's private key; it fails with a SealError, never with garbage. */
export function openStream(privateKey: KeyObject): Transform {
  let header!: Buffer;
  let key: Buffer;
  let chunkSize: number;
  let counter = 0;
  return pieces(
    // A full-size chunk is never the final one (the sealer always ends with a shorter chunk).
    () => chunkSize + TAG,
    (sealed, final) => {
      if (sealed.length < TAG) throw new SealError("the sealed state is cut short: its final chunk is missing");
      const decipher = createDecipheriv("aes-256-gcm", key, nonce(header.subarray(-11, -4), counter, final));
      decipher.setAAD(header);
      decipher.setAuthTag(sealed.subarray(-TAG));
      try {
        const plain = Buffer.concat([decipher.update(sealed.subarray(0, -TAG)), decipher.final()]);
        counter++;
        return plain;
      } catch {
        throw new SealError(`the sealed state failed authentication at chunk ${counter}: it was altered or cut short`);
      }
    },
    (buffered) => {
      if (buffered.length < 6) return 0;
      if (!buffered.subarray(0, 4).equals(MAGIC)) throw new SealError("this is not sealed agentpools state");
      const wrappedLength = buffered.readUInt16BE(4);
      const length = wrappedLength + 17;
      if (buffered.length < length) return 0;
      try {
        key = privateDecrypt(oaep(privateKey), buffered.subarray(6, 6 + wrappedLength));
      } catch {
        throw new SealError(
          "the sealed state cannot be opened with this pool's private key, or its header was altered",
        );
      }
      chunkSize = buffered.readUInt32BE(length - 4);
      if (key.length !== 32 || chunkSize < 1 || chunkSize > 16 << 20)
        throw new SealError("the sealed state's header is not valid");
      header = Buffer.from(buffered.subarray(0, length));
      return length;
    },
  );
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

async function collect(stream: Transform, input: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(chunk));
  const done = new Promise<void>((resolve, reject) => (stream.once("end", resolve), stream.once("error", reject)));
  stream.end(input);
  await done;
  return Buffer.concat(chunks);
}

/** Seal a small payload whole (a run's environment). */
export const sealBuffer = (publicKey: KeyObject, plain: Buffer) => collect(sealStream(publicKey), plain);
/** Open a small sealed payload whole. */
export const openBuffer = (privateKey: KeyObject, sealed: Buffer) => collect(openStream(privateKey), sealed);
