import { X509Certificate } from "node:crypto";

/**
 * A custom CA bundle checked as the machines that read it will: every PEM block a real X.509
 * certificate (parsed, not pattern-matched), text between blocks allowed (the comment and
 * title lines of the cacert.pem layout, which OpenSSL, p11-kit and Node skip), and nothing
 * else in PEM form: a private key pasted by mistake is refused without a byte of it shown. No
 * control character but tab and line breaks: the bundle travels in the boot script (userdata.ts).
 */
const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END ([A-Z0-9 ]+)-----/g;

/** Control characters no PEM file holds; bash drops NUL from a script, so a line "EOF\0" would end a heredoc early. */
const CONTROL = /[^\P{Cc}\t\n\r]/u;

export function caBundleProblems(text: string): string[] {
  const problems: string[] = [];
  const control = CONTROL.exec(text);
  if (control)
    problems.push(
      `has a control character (code ${control[0].charCodeAt(0)}) at offset ${control.index}: only text, tabs and line breaks`,
    );
  let certificates = 0;
  let index = 0;
  for (const [block, label, , endLabel] of text.matchAll(BLOCK)) {
    index++;
    if (label !== "CERTIFICATE" || endLabel !== label) {
      problems.push(
        `block ${index} is a PEM "${label}", not a certificate${/PRIVATE KEY/.test(label) ? " (a private key must never be given here; it is not shown)" : ""}`,
      );
      continue;
    }
    try {
      new X509Certificate(block);
      certificates++;
    } catch {
      problems.push(`block ${index} is not a valid X.509 certificate`);
    }
  }
  const unclosed = text.replace(BLOCK, "").match(/-----(BEGIN|END) [A-Z0-9 ]+-----/);
  if (unclosed) problems.push(`has a PEM line "${unclosed[0]}" without its pair`);
  if (certificates === 0 && problems.length === 0)
    problems.push("has no PEM certificate (-----BEGIN CERTIFICATE----- ...)");
  return problems;
}
