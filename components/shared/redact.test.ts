import assert from "node:assert/strict";
import { hasUrlCredentials, redactText, showValue, urlCredentialPaths } from "./redact";

describe("showing a refused value", () => {
  it("takes credentials out of URLs, wherever they are in the text", () => {
    assert.equal(redactText("http://user:s3cret@proxy:3128"), "http://***@proxy:3128");
    assert.equal(
      redactText("see https://token@git.corp/x and ftp://a:b@h"),
      "see https://***@git.corp/x and ftp://***@h",
    );
    // A query or a fragment may carry a token ("?token=..."): neither is shown.
    assert.equal(redactText("https://git.corp/path?mail=a@b.c"), "https://git.corp/path?***");
    assert.equal(redactText("http://u:p@proxy:3128/#t0ken x"), "http://***@proxy:3128/#*** x");
    assert.deepEqual(
      [
        hasUrlCredentials("https://u:p@h"),
        hasUrlCredentials("https://h/u@x"),
        hasUrlCredentials("git@github.com:org/repo"),
      ],
      [true, false, false],
    );
  });

  it("takes out what may be credentials even where the URL is not valid or has no scheme", () => {
    assert.equal(redactText("https://deploy:ab/cd@gitlab.internal"), "https://***@gitlab.internal");
    assert.equal(redactText("https://u:p@ss@host x"), "https://***@host x");
    assert.equal(redactText("deploy:pw@gitlab.internal/x"), "***@gitlab.internal/x");
    assert.equal(
      redactText("git@github.com:org/repo"),
      "git@github.com:org/repo",
      "an scp-like Git address has no password",
    );
    for (const typed of ["https://deploy:ab/cd@gitlab.internal", "https://u:p@ss@host", "http://:secret@h"]) {
      assert.equal(hasUrlCredentials(typed), true, typed);
    }
    // Refused as credentials only with a scheme: these are an image with tag and digest, and an scp-like address.
    assert.equal(hasUrlCredentials("ubuntu:24.04@sha256:" + "a".repeat(64)), false);
    assert.equal(hasUrlCredentials("deploy@git.corp:org/repo.git"), false);
  });

  it("shows a PEM block as its kind and length, never its body", () => {
    const key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
    assert.equal(redactText(key), `[PEM private key, ${key.length - 1} characters]\n`);
    assert.equal(
      redactText("-----BEGIN RSA PRIVATE KEY-----\nMIIabc (cut short"),
      "[PEM rsa private key, 49 characters]",
    );
  });

  it("cuts what is long, saying how long it was; JSON of nested values too", () => {
    assert.equal(redactText("a".repeat(500)), `${"a".repeat(80)}... (500 characters)`);
    assert.equal(showValue({ url: "https://u:p@h", n: 1 }), '{"url":"https://***@h","n":1}');
    assert.ok((showValue(Array.from({ length: 100 }, (_, i) => `item-${i}`)) as string).length <= 163);
    assert.equal(showValue(undefined), undefined);
  });

  it("finds every plain argument that carries URL credentials, by its path", () => {
    assert.deepEqual(
      urlCredentialPaths({
        a: "https://u:p@h",
        b: [{ c: "https://h" }, { c: "http://x@y" }],
        d: 3,
        e: { f: "s3://k:s@bucket" },
      }),
      ["a", "b[1].c", "e.f"],
    );
  });
});
