// Loaded by mocha before any test file (.mocharc.json). RSA key pairs cost 0.05 s (2048 bits) to
// 2 s (4096 bits, the luck of its prime search) of CPU each, and tests make dozens. Each RSA
// webcrypto.subtle.generateKey of a test process takes the next stored pair of its size (made
// the first time, then kept by fixture-cache.ts): a process's keys stay distinct from each
// other (its n-th call, the n-th pair) and are the same run after run.
import { createPrivateKey, createPublicKey, webcrypto } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { dir, publish } from "./fixture-cache";

type RsaParams = webcrypto.RsaHashedKeyGenParams;
const subtle = webcrypto.subtle;
const generateKey = subtle.generateKey.bind(subtle) as (...args: unknown[]) => Promise<unknown>;
/** How many pairs of each kind this process has taken. */
const taken = new Map<string, number>();
const PRIVATE_USES: webcrypto.KeyUsage[] = ["sign", "decrypt", "unwrapKey"];

subtle.generateKey = (async (algorithm: RsaParams, extractable: boolean, usages: webcrypto.KeyUsage[]) => {
  if (typeof algorithm !== "object" || !("modulusLength" in algorithm))
    return generateKey(algorithm, extractable, usages);
  // The hash and the algorithm's name do not make the key: only its size and exponent do.
  const kind = `rsa-${algorithm.modulusLength}-${Buffer.from(algorithm.publicExponent).toString("hex")}`;
  const n = taken.get(kind) ?? 0;
  taken.set(kind, n + 1);
  const file = path.join(dir, `${kind}-${n}.pkcs8`);
  let pkcs8: Buffer;
  try {
    pkcs8 = readFileSync(file);
  } catch {
    const made = (await generateKey(algorithm, true, usages)) as webcrypto.CryptoKeyPair;
    pkcs8 = Buffer.from(await subtle.exportKey("pkcs8", made.privateKey));
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${file}.${process.pid}`, pkcs8, { mode: 0o600 });
    publish(`${file}.${process.pid}`, file);
  }
  const spki = createPublicKey(createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" })).export({
    type: "spki",
    format: "der",
  });
  const uses = (of: "private" | "public") => usages.filter((use) => PRIVATE_USES.includes(use) === (of === "private"));
  return {
    privateKey: await subtle.importKey("pkcs8", pkcs8, algorithm, extractable, uses("private")),
    // A public key is always extractable, as generateKey makes it.
    publicKey: await subtle.importKey("spki", spki, algorithm, true, uses("public")),
  };
}) as typeof subtle.generateKey;
