import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { open, openBuffer, openStream, seal, SEAL_CHUNK, sealBuffer, sealStream } from "./seal";

const pool = generateKeyPairSync("rsa", { modulusLength: 2048 });
const other = generateKeyPairSync("rsa", { modulusLength: 2048 });

async function joined(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const all = [];
  for await (const chunk of chunks) all.push(chunk);
  return Buffer.concat(all);
}

describe("sealed run state", () => {
  for (const size of [0, 1, SEAL_CHUNK - 1, SEAL_CHUNK, SEAL_CHUNK + 1, 3 * SEAL_CHUNK, 1_000_003]) {
    it(`round-trips ${size} bytes`, async () => {
      const plain = randomBytes(size);
      const sealed = await sealBuffer(pool.publicKey, plain);
      assert.equal(sealed.subarray(0, 4).toString(), "APS1");
      if (size >= 16)
        assert.ok(!sealed.includes(plain.subarray(0, 16)), "plaintext must not appear in the sealed form");
      assert.deepEqual(await openBuffer(pool.privateKey, sealed), plain);
    });
  }

  it("seals the same plaintext differently each time (a fresh key per payload)", async () => {
    const plain = Buffer.from("terraform.tfstate");
    assert.notDeepEqual(await sealBuffer(pool.publicKey, plain), await sealBuffer(pool.publicKey, plain));
  });

  it("wraps the data key with RSA-OAEP SHA-256 (not Node's SHA-1 default)", async () => {
    const { privateDecrypt, constants } = await import("node:crypto");
    const sealed = await sealBuffer(pool.publicKey, Buffer.from("x"));
    const wrapped = sealed.subarray(6, 6 + sealed.readUInt16BE(4));
    assert.equal(
      privateDecrypt({ key: pool.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, wrapped)
        .length,
      32,
    );
    assert.throws(() => privateDecrypt({ key: pool.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING }, wrapped));
  });

  it("refuses the wrong key with a clear error", async () => {
    const sealed = await sealBuffer(pool.publicKey, Buffer.from("state"));
    await assert.rejects(openBuffer(other.privateKey, sealed), /cannot be opened with this pool's private key/);
  });

  it("refuses a flipped bit anywhere: header, a chunk, a tag", async () => {
    const sealed = await sealBuffer(pool.publicKey, randomBytes(2 * SEAL_CHUNK + 10));
    for (const at of [1, 8, 300, sealed.length - 2 * SEAL_CHUNK, sealed.length - 40, sealed.length - 1]) {
      const tampered = Buffer.from(sealed);
      tampered[at] ^= 0x01;
      await assert.rejects(
        openBuffer(pool.privateKey, tampered),
        /not sealed|cannot be opened|failed authentication|not valid/,
        `byte ${at}`,
      );
    }
  });

  it("refuses state cut short, at a chunk boundary or inside one", async () => {
    const sealed = await sealBuffer(pool.publicKey, randomBytes(2 * SEAL_CHUNK + 10));
    const headerLength = 6 + sealed.readUInt16BE(4) + 11;
    const chunk = SEAL_CHUNK + 16;
    await assert.rejects(
      openBuffer(pool.privateKey, sealed.subarray(0, headerLength + 2 * chunk)),
      /final chunk is missing/,
    );
    await assert.rejects(
      openBuffer(pool.privateKey, sealed.subarray(0, headerLength + chunk + 100)),
      /failed authentication at chunk 1/,
    );
    await assert.rejects(openBuffer(pool.privateKey, sealed.subarray(0, sealed.length - 1)), /failed authentication/);
    await assert.rejects(openBuffer(pool.privateKey, sealed.subarray(0, 10)), /header is incomplete/);
  });

  it("refuses chunks swapped between positions", async () => {
    const sealed = await sealBuffer(pool.publicKey, randomBytes(3 * SEAL_CHUNK));
    const headerLength = 6 + sealed.readUInt16BE(4) + 11;
    const chunk = SEAL_CHUNK + 16;
    const swapped = Buffer.concat([
      sealed.subarray(0, headerLength),
      sealed.subarray(headerLength + chunk, headerLength + 2 * chunk),
      sealed.subarray(headerLength, headerLength + chunk),
      sealed.subarray(headerLength + 2 * chunk),
    ]);
    await assert.rejects(openBuffer(pool.privateKey, swapped), /failed authentication at chunk 0/);
  });

  it("releases no plaintext of a chunk that fails verification", async () => {
    const plain = randomBytes(3 * SEAL_CHUNK);
    const sealed = await sealBuffer(pool.publicKey, plain);
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 16 - 100] ^= 0xff; // inside the third chunk (an empty final chunk follows)
    const released: Buffer[] = [];
    const opener = openStream(pool.privateKey);
    opener.on("data", (chunk: Buffer) => released.push(chunk));
    await assert.rejects(
      pipeline(Readable.from([tampered.subarray(0, 1000), tampered.subarray(1000)]), opener),
      /chunk 2/,
    );
    assert.deepEqual(Buffer.concat(released), plain.subarray(0, 2 * SEAL_CHUNK));
  });

  it("reads its header and chunks however the input is cut: one byte at a time, and as one piece", async () => {
    const plain = randomBytes(10_000);
    const sealed = await joined(seal(pool.publicKey, [plain.subarray(0, 10), plain.subarray(10)], 4096));
    // 10,000 bytes in chunks of 4096: 2 full chunks and a final one of 1808, each with its 16-byte tag.
    assert.equal(sealed.length, 4 + 2 + 256 + 7 + 4 + 10_000 + 3 * 16);
    const bytes = function* () {
      for (let i = 0; i < sealed.length; i++) yield sealed.subarray(i, i + 1);
    };
    assert.deepEqual(await joined(open(pool.privateKey, bytes())), plain);
    assert.deepEqual(await joined(open(pool.privateKey, [sealed])), plain);
    await assert.rejects(joined(open(pool.privateKey, [sealed.subarray(0, 5)])), /header is incomplete/);
  });

  it("opens only the chunk sizes a sealer here uses (4 KiB to SEAL_CHUNK): 1-byte chunks cost a decipher per byte", async () => {
    const plain = randomBytes(5000);
    for (const size of [1, 4095, SEAL_CHUNK + 1, 16 << 20])
      await assert.rejects(
        joined(open(pool.privateKey, [await joined(seal(pool.publicKey, [plain], size))])),
        /header is not valid/,
      );
    for (const size of [4096, SEAL_CHUNK])
      assert.deepEqual(await joined(open(pool.privateKey, [await joined(seal(pool.publicKey, [plain], size))])), plain);
  });

  it("streams: memory stays bounded by the chunk size, not the payload", async () => {
    const total = 64 * 1024 * 1024;
    let seen = 0;
    const source = Readable.from(
      (function* () {
        for (let sent = 0; sent < total; sent += 1 << 20) yield Buffer.alloc(1 << 20, sent & 0xff);
      })(),
    );
    let peakBuffered = 0;
    const sealer = sealStream(pool.publicKey);
    const opener = openStream(pool.privateKey);
    opener.on("data", (chunk: Buffer) => {
      seen += chunk.length;
      peakBuffered = Math.max(peakBuffered, sealer.readableLength + opener.writableLength);
    });
    await pipeline(source, sealer, opener);
    assert.equal(seen, total);
    assert.ok(peakBuffered < 4 * 1024 * 1024, `buffered ${peakBuffered} bytes between the streams`);
  });
});
