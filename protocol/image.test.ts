import assert from "node:assert/strict";
import { isImageReference } from "./image";

describe("image references", () => {
  it("accepts what a registry names: host and port, repository path, tag, digest", () => {
    for (const image of [
      "alpine",
      "alpine:3",
      "docker.io/library/alpine:3.20",
      "localhost:5000/a/b_c__d-e:1.0",
      "123456789012.dkr.ecr.eu-west-1.amazonaws.com/x",
      `ghcr.io/acme/app@sha256:${"a".repeat(64)}`,
      "[::1]:5000/x:y",
      "a".repeat(255),
    ]) {
      assert.ok(isImageReference(image), image);
    }
  });

  it("refuses options, whitespace, capitals in the path, empty parts and over-long names", () => {
    for (const image of [
      "--volume=/:/host",
      "-v",
      "--runtime=runc",
      "-alpine",
      "alpine:3 --privileged",
      "alpine:3\n--privileged",
      "UPPER/Case",
      "alpine:",
      "alpine:-x",
      "alpine@sha256:abc",
      "a//b",
      "/abs",
      "a:b:c",
      "",
      "a".repeat(256),
      `reg.io:5000/${"a".repeat(250)}`,
      7,
      null,
    ]) {
      assert.ok(!isImageReference(image), JSON.stringify(image));
    }
  });
});
