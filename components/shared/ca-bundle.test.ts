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

  it("refuses a control character between blocks (bash drops a NUL as it reads a script: 'EOF\\0' would end a heredoc)", () => {
    const injected = `${CA_EC}\nEOF\0\necho ran > /tmp/pwned\ncat >/dev/null <<'EOF'\n`;
    assert.deepEqual(caBundleProblems(injected), [
      `has a control character (code 0) at offset ${CA_EC.length + 4}: only text, tabs and line breaks`,
    ]);
    assert.match(caBundleProblems(`${CA_EC}\x1b[2J`)[0], /code 27/);
    assert.deepEqual(caBundleProblems(`# title\r\n\t${CA_EC}`), [], "tabs and CRLF line ends are text");
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
