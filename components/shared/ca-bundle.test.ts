import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { caBundleProblems } from "./ca-bundle";
import { CA_BUNDLE, CA_EC, CA_RSA } from "../../devkit/fixtures";

describe("CA bundles, parsed as X.509", () => {
  it("takes real certificates, alone, together, in the cacert.pem layout, with CRLF line ends", () => {
    for (const bundle of [
      CA_EC,
      CA_RSA,
      CA_RSA + CA_EC,
      CA_BUNDLE,
      CA_EC.replace(/\n/g, "\r\n"),
      `# a comment first\n${CA_EC}\n\n# and a trailing one\n`,
    ]) {
      assert.deepEqual(caBundleProblems(bundle), [], bundle.slice(0, 60));
    }
  });

  it("refuses what only looks like one: a wrong body, a cut block, no block at all", () => {
    assert.deepEqual(
      caBundleProblems(`${CA_EC}-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n`),
      ["block 2 is not a valid X.509 certificate"],
    );
    assert.deepEqual(caBundleProblems(CA_EC.slice(0, 300)), [
      'has a PEM line "-----BEGIN CERTIFICATE-----" without its pair',
    ]);
    assert.deepEqual(caBundleProblems("just some text"), ["has no PEM certificate (-----BEGIN CERTIFICATE----- ...)"]);
    assert.deepEqual(caBundleProblems(""), ["has no PEM certificate (-----BEGIN CERTIFICATE----- ...)"]);
  });

  it("refuses a private key pasted among them, saying so and never showing it", () => {
    const key = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey.export({
      type: "pkcs8",
      format: "pem",
    }) as string;
    const problems = caBundleProblems(CA_EC + key);
    assert.deepEqual(problems, [
      'block 2 is a PEM "PRIVATE KEY", not a certificate (a private key must never be given here; it is not shown)',
    ]);
    assert.ok(!problems.join("").includes(key.split("\n")[1]));
  });
});
