import assert from "node:assert/strict";
import { signV4 } from "./sigv4";

// Published AWS examples: the signatures were computed by AWS, not by this code.
const EXAMPLE_CREDENTIALS = { AccessKeyId: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" };
const EXAMPLE_TIME = new Date("2015-08-30T12:36:00Z");

describe("Signature Version 4", () => {
  it("matches the IAM ListUsers example of the AWS documentation", () => {
    const headers = signV4({
      method: "GET",
      url: new URL("https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"),
      headers: { "content-type": "application/x-www-form-urlencoded; charset=utf-8" },
      body: "",
      service: "iam",
      region: "us-east-1",
      credentials: EXAMPLE_CREDENTIALS,
      now: EXAMPLE_TIME,
    });
    assert.equal(
      headers.authorization,
      "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    );
    assert.equal(headers["x-amz-date"], "20150830T123600Z");
  });

  it("matches the get-vanilla case of the AWS test suite", () => {
    const headers = signV4({
      method: "GET",
      url: new URL("https://example.amazonaws.com/"),
      headers: {},
      body: "",
      service: "service",
      region: "us-east-1",
      credentials: EXAMPLE_CREDENTIALS,
      now: EXAMPLE_TIME,
    });
    assert.match(headers.authorization, /Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31$/);
  });

  it("signs the session token of temporary credentials", () => {
    const headers = signV4({
      method: "POST",
      url: new URL("https://secretsmanager.eu-west-1.amazonaws.com/"),
      headers: { "content-type": "application/x-amz-json-1.1" },
      body: "{}",
      service: "secretsmanager",
      region: "eu-west-1",
      credentials: { ...EXAMPLE_CREDENTIALS, Token: "session" },
      now: EXAMPLE_TIME,
    });
    assert.equal(headers["x-amz-security-token"], "session");
    assert.match(headers.authorization, /SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,/);
  });
});
