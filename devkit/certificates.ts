import "reflect-metadata"; // @peculiar/x509 needs it loaded first
import { execFileSync } from "node:child_process";
import { webcrypto } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import * as x509 from "@peculiar/x509";
import { copyCachedFiles } from "./fixture-cache";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/**
 * Real, distinct CA certificates (PEM), each with its own RSA 2048 key, as a corporate root
 * is: the size and incompressibility of the real thing, for size checks and parsing. Made
 * once per process and reused.
 */
const made: string[] = [];
export async function caCertificates(count: number): Promise<string[]> {
  while (made.length < count) {
    const algorithm = {
      name: "RSASSA-PKCS1-v1_5",
      hash: "SHA-256",
      publicExponent: new Uint8Array([1, 0, 1]),
      modulusLength: 2048,
    };
    const keys = await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
    const certificate = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: (made.length + 1).toString(16).padStart(2, "0"),
      name: `O=agentpools tests, CN=Test Root CA ${made.length + 1}`,
      notBefore: new Date(Date.now() - 86_400_000),
      notAfter: new Date(Date.now() + 10 * 365 * 86_400_000),
      keys,
      signingAlgorithm: algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      ],
    });
    made.push(certificate.toString("pem") + "\n");
  }
  return made.slice(0, count);
}

/**
 * A private CA and a certificate for 127.0.0.1 signed by it, made with the openssl command (valid
 * two days: made again once a day old, kept meanwhile by fixture-cache.ts), copied into `dir`.
 */
export function gatewayCertificates(dir: string) {
  copyCachedFiles("gateway-tls", makeGatewayCertificates, dir, 86_400_000);
  return {
    ca: path.join(dir, "ca.pem"),
    cert: readFileSync(path.join(dir, "gateway.pem")),
    key: readFileSync(path.join(dir, "gateway.key")),
  };
}

function makeGatewayCertificates(dir: string): void {
  const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  run(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=agentpools test CA",
  );
  run(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "gateway.key",
    "-out",
    "gateway.csr",
    "-subj",
    "/CN=127.0.0.1",
  );
  writeFileSync(path.join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
  run(
    "x509",
    "-req",
    "-in",
    "gateway.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "gateway.pem",
    "-days",
    "2",
    "-extfile",
    "san.ext",
  );
}
