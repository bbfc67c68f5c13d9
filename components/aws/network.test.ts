import assert from "node:assert/strict";
import { planSubnets } from "./network";

describe("subnet plan", () => {
  it("gives each zone a quarter of the range and NAT subnets a sixteenth of the last quarter", () => {
    assert.deepEqual(planSubnets("10.0.0.0/16", 3), {
      private: ["10.0.0.0/18", "10.0.64.0/18", "10.0.128.0/18"],
      public: ["10.0.192.0/20", "10.0.208.0/20", "10.0.224.0/20"],
    });
    assert.deepEqual(planSubnets("172.16.8.0/22", 2), {
      private: ["172.16.8.0/24", "172.16.9.0/24"],
      public: ["172.16.11.0/26", "172.16.11.64/26"],
    });
  });

  it("aligns a range given with host bits set", () => {
    assert.deepEqual(planSubnets("10.1.2.3/24", 2).private, ["10.1.2.0/26", "10.1.2.64/26"]);
  });
});
