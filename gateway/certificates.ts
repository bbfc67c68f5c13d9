// Worker pool certificates: the gateway signs the CSR a user made with the documented
// `openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key -out spacelift.csr`.
// @peculiar/x509 parses CSRs and builds certificates (Node's crypto can do neither);
// it needs the Reflect metadata polyfill loaded first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { randomBytes, webcrypto } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const CA_ALGORITHM = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000;
/** Run state is wrapped with the pool's RSA key: smaller keys are refused. */
export const MIN_RSA_BITS = 2048;

export interface CertificateAuthority {
  certificate: x509.X509Certificate;
  privateKey: webcrypto.CryptoKey;
}

/** The gateway's signing authority, kept in `dir` (created on first use; the key file is 0600). */
export async function loadOrCreateAuthority(dir: string): Promise<CertificateAuthority> {
  const certFile = path.join(dir, "worker-ca.pem");
  const keyFile = path.join(dir, "worker-ca.key");
  if (existsSync(certFile) && existsSync(keyFile)) {
    const privateKey = await webcrypto.subtle.importKey(
      "pkcs8",
      pemBody(readFileSync(keyFile, "utf8")),
      CA_ALGORITHM,
      false,
      ["sign"],
    );
    return { certificate: new x509.X509Certificate(readFileSync(certFile, "utf8")), privateKey };
  }
  const keys = (await webcrypto.subtle.generateKey(CA_ALGORITHM, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16)
      .toString("hex")
      .replace(/^[89a-f]/, "1"),
    name: "CN=agentpools gateway worker pool CA",
    notBefore: new Date(),
    notAfter: new Date(Date.now() + TEN_YEARS_MS),
    keys,
    signingAlgorithm: CA_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  writeFileSync(keyFile, privateKeyPem(pkcs8), { mode: 0o600 });
  writeFileSync(certFile, certificate.toString("pem") + "\n");
  return { certificate, privateKey: keys.privateKey };
}

const privateKeyPem = (pkcs8: Buffer) =>
  `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "")}\n-----END PRIVATE KEY-----\n`;

function pemBody(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
}

/**
 * Sign a worker pool's CSR: the request must carry a valid self-signature (proof that its
 * maker holds the key) over an RSA key of at least 2048 bits. Returns the certificate (PEM).
 */
export async function signPoolRequest(authority: CertificateAuthority, csrPem: string, pool: string): Promise<string> {
  let request: x509.Pkcs10CertificateRequest;
  try {
    request = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (error) {
    throw new Error(
      `the certificate signing request does not parse (expected the PEM file openssl req writes): ${(error as Error).message}`,
    );
  }
  if (!(await request.verify())) throw new Error("the certificate signing request's signature does not verify");
  const algorithm = request.publicKey.algorithm as { name: string; modulusLength?: number };
  if (!algorithm.name.startsWith("RSA") || (algorithm.modulusLength ?? 0) < MIN_RSA_BITS) {
    throw new Error(
      `the pool key must be RSA of at least ${MIN_RSA_BITS} bits (openssl req -newkey rsa:4096), not ${algorithm.name} ${algorithm.modulusLength ?? ""}`.trim(),
    );
  }
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(16)
      .toString("hex")
      .replace(/^[89a-f]/, "1"),
    subject: `CN=${pool}, O=agentpools worker pool`,
    issuer: authority.certificate.subject,
    notBefore: new Date(),
    notAfter: new Date(Date.now() + TEN_YEARS_MS),
    publicKey: request.publicKey,
    signingKey: authority.privateKey,
    signingAlgorithm: CA_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    ],
  });
  return certificate.toString("pem") + "\n";
}

/**
 * A pool key and CSR made in-process, as `openssl req -newkey rsa:4096 -nodes` would: for the
 * demo and the benchmark, which should not need openssl. Returns the key as the launcher takes
 * it (the PEM file in base64) and the CSR in PEM.
 */
export async function makePoolKeyAndRequest(pool: string): Promise<{ keyBase64: string; csr: string }> {
  const algorithm = {
    name: "RSASSA-PKCS1-v1_5",
    hash: "SHA-256",
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 4096,
  };
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const request = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${pool}`,
    keys,
    signingAlgorithm: algorithm,
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { keyBase64: Buffer.from(privateKeyPem(pkcs8)).toString("base64"), csr: request.toString("pem") };
}
