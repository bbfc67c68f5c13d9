import "reflect-metadata"; // @peculiar/x509 needs it loaded first
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

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
