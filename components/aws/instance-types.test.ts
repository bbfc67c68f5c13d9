import assert from "node:assert/strict";
import { architectureOf, instanceTypeProblem, isBurstable, suggestFixedPerformance } from "./instance-types";

describe("instance types", () => {
  it("refuses every T generation, known and later", () => {
    for (const type of ["t1.micro", "t2.medium", "t3.large", "t3a.xlarge", "t4g.small", "t5.large", "t7g.2xlarge"]) {
      assert.equal(isBurstable(type), true, type);
      assert.match(instanceTypeProblem(type) as string, new RegExp(`"${type.replace(".", "\\.")}" is a burstable`));
    }
  });

  it("accepts fixed-performance types, including names that merely contain a t", () => {
    for (const type of [
      "c7i.large",
      "m7i-flex.large",
      "r7iz.xlarge",
      "trn1.2xlarge",
      "c6in.4xlarge",
      "m7g.medium",
      "inf2.xlarge",
      "u-6tb1.metal",
    ]) {
      assert.equal(instanceTypeProblem(type), undefined, type);
    }
  });

  it("refuses what is not an instance type", () => {
    for (const type of ["", "c7i", "large", "C7I.LARGE", "c7i..large"])
      assert.match(instanceTypeProblem(type) as string, /is not an EC2 instance type/);
  });

  it("tells Graviton types apart", () => {
    assert.deepEqual(
      [
        "c7g.large",
        "m6gd.xlarge",
        "c7gn.large",
        "is4gen.large",
        "a1.large",
        "c7i.large",
        "g4dn.xlarge",
        "m7a.large",
      ].map(architectureOf),
      ["arm64", "arm64", "arm64", "arm64", "arm64", "x86_64", "x86_64", "x86_64"],
    );
  });

  it("suggests a fixed-performance type of the same architecture and about the size", () => {
    assert.equal(suggestFixedPerformance("t3.micro"), "m7i.large");
    assert.equal(suggestFixedPerformance("t4g.xlarge"), "m7g.xlarge");
    assert.equal(suggestFixedPerformance("t3a.2xlarge"), "m7i.2xlarge");
  });
});
