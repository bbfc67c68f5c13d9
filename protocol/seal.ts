import {
  constants,
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  X509Certificate,
  type CipherGCM,
  type DecipherGCM,
  type KeyObject,
} from "node:crypto";
import { Duplex } from "node:stream";

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
// Its errors are plain Errors whose messages say "sealed state" (a class of their own costs user-data bytes).
const MAGIC = Buffer.from("APS1");
const TAG = 16;
export const SEAL_CHUNK = 64 * 1024;
/** What seal and open read: chunks of bytes, as they come. */
type Chunks = Iterable<Buffer> | AsyncIterable<Buffer>;

/** The RSA public key of a pool's certificate (PEM). */
export function certificateKey(certificatePem: string): KeyObject {
  return new X509Certificate(certificatePem).publicKey;
}

/** SPACELIFT_POOL_PRIVATE_KEY: the key file as one line of base64. */
export function privateKeyFromBase64(base64: string): KeyObject {
  try {
    return createPrivateKey(Buffer.from(base64, "base64"));
  } catch (error) {
    throw new Error(`the pool private key does not parse: ${(error as Error).message}`);
  }
}

/** The certificate's public key, if the private key belongs to it (the pair a worker pool was created with). */
export function publicKeyPairedWith(privateKey: KeyObject, certificatePem: string): KeyObject | undefined {
  const certificate = new X509Certificate(certificatePem);
  return certificate.checkPrivateKey(privateKey) ? certificate.publicKey : undefined;
}

const oaep = (key: KeyObject) => ({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" });

/** AES-256-GCM for one chunk: its nonce is the header's prefix, the chunk's counter and the final flag. */
function gcm<C extends CipherGCM | DecipherGCM>(
  make: (algorithm: "aes-256-gcm", key: Buffer, iv: Buffer) => C,
  key: Buffer,
  header: Buffer,
  counter: number,
  final: boolean,
): C {
  const iv = Buffer.concat([header.subarray(-11, -4), Buffer.alloc(5)]);
  iv.writeUInt32BE(counter, 7);
  iv[11] = +final;
  return make("aes-256-gcm", key, iv).setAAD(header) as C;
}

/**
 * The input in pieces of `size()` bytes (read again for each piece: it may change once a piece is taken), each with
 * whether it is the last: the last, shorter or empty, once the input ends. Input is gathered in a list and joined
 * only once a piece is whole, so input in many small chunks is not copied over and over.
 */
async function* pieces(input: Chunks, size: () => number): AsyncGenerator<[Buffer, boolean]> {
  let pending: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of input) {
    pending.push(chunk);
    if ((bytes += chunk.length) < size()) continue;
    let all = Buffer.concat(pending);
    for (let n; all.length >= (n = size()); all = all.subarray(n)) yield [all.subarray(0, n), false];
    pending = [all];
    bytes = all.length;
  }
  yield [Buffer.concat(pending), true];
}

/** The input sealed for the holder of `publicKey`'s private key, as it is read. */
export async function* seal(publicKey: KeyObject, input: Chunks, chunkSize = SEAL_CHUNK): AsyncGenerator<Buffer> {
  const dataKey = randomBytes(32);
  const wrapped = publicEncrypt(oaep(publicKey), dataKey);
  const header = Buffer.concat([MAGIC, Buffer.alloc(2), wrapped, randomBytes(7), Buffer.alloc(4)]);
  header.writeUInt16BE(wrapped.length, 4);
  header.writeUInt32BE(chunkSize, header.length - 4);
  yield header;
  let counter = 0;
  // The final chunk is always there (possibly empty): its flag is what proves nothing was cut off.
  for await (const [plain, final] of pieces(input, () => chunkSize)) {
    const cipher = gcm<CipherGCM>(createCipheriv, dataKey, header, counter++, final);
    yield Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  }
}

/**
 * Sealed input opened with the pool's private key, as it is read: it fails with an error saying what is wrong with
 * the sealed state, never with garbage, and gives out no plaintext of a chunk before its tag is verified.
 */
export async function* open(privateKey: KeyObject, input: Chunks): AsyncGenerator<Buffer> {
  // The header is taken in two pieces (magic and key length, then the rest), then the chunks, each with its tag.
  let header = Buffer.alloc(0);
  let size = 6;
  let key: Buffer | undefined;
  let counter = 0;
  for await (const [piece, final] of pieces(input, () => size)) {
    if (key) {
      // A full-size chunk is never the final one (the sealer always ends with a shorter chunk).
      if (piece.length < TAG) throw new Error("the sealed state is cut short: its final chunk is missing");
      const decipher = gcm<DecipherGCM>(createDecipheriv, key, header, counter, final);
      decipher.setAuthTag(piece.subarray(-TAG));
      try {
        yield Buffer.concat([decipher.update(piece.subarray(0, -TAG)), decipher.final()]);
      } catch {
        throw new Error(`the sealed state failed authentication at chunk ${counter}: it was altered or cut short`);
      }
      counter++;
      continue;
    }
    if (final) throw new Error("the sealed state is cut short: its header is incomplete");
    header = Buffer.concat([header, piece]);
    if (header.length === 6) {
      if (!piece.subarray(0, 4).equals(MAGIC)) throw new Error("this is not sealed agentpools state");
      size = piece.readUInt16BE(4) + 11;
      continue;
    }
    try {
      key = privateDecrypt(oaep(privateKey), header.subarray(6, -11));
    } catch {
      throw new Error("the sealed state cannot be opened with this pool's private key, or its header was altered");
    }
    // Only a chunk size a sealer here uses: a tiny one costs a decipher per byte, a huge one a large buffer.
    size = header.readUInt32BE(header.length - 4) + TAG;
    if (key.length !== 32 || size < 4096 + TAG || size > SEAL_CHUNK + TAG)
      throw new Error("the sealed state's header is not valid");
  }
}

/** A stream that seals what is written to it for the holder of `publicKey`'s private key. */
export const sealStream = (publicKey: KeyObject, chunkSize?: number) =>
  Duplex.from((input: AsyncIterable<Buffer>) => seal(publicKey, input, chunkSize));
/** A stream that opens sealed state with the pool's private key. */
export const openStream = (privateKey: KeyObject) =>
  Duplex.from((input: AsyncIterable<Buffer>) => open(privateKey, input));

async function whole(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const all = [];
  for await (const chunk of chunks) all.push(chunk);
  return Buffer.concat(all);
}

/** Seal a small payload whole (a run's environment). */
export const sealBuffer = (publicKey: KeyObject, plain: Buffer) => whole(seal(publicKey, [plain]));
/** Open a small sealed payload whole. */
export const openBuffer = (privateKey: KeyObject, sealed: Buffer) => whole(open(privateKey, [sealed]));
