import assert from "node:assert/strict";
import { jsonCost } from "./flows";

describe("the cost of a JSON text, read without parsing it", () => {
  it("counts nesting and objects and arrays, not what strings hold", () => {
    assert.equal(jsonCost('{"a":[{"b":[]}]}', 4), undefined);
    assert.equal(jsonCost('{"a":[{"b":[[]]}]}', 4), "depth");
    assert.equal(jsonCost('{"a":"[[[[{{{{","b":"\\\\"}', 1), undefined, "brackets in strings, an escaped backslash");
    assert.equal(jsonCost('["\\"[[[[", []]', 1), "depth", "an escaped quote does not end the string");
    assert.equal(jsonCost(`[${"{},".repeat(9)}{}]`, 2, 11), undefined);
    assert.equal(jsonCost(`[${"{},".repeat(10)}{}]`, 2, 11), "containers");
    assert.equal(jsonCost('{"a":1,"b":{"c":2},"d:e":":"}', 2, 10, 4), undefined, "colons in strings are no keys");
    assert.equal(jsonCost('{"a":1,"b":{"c":2},"d":3,"e":4}', 2, 10, 4), "keys");
  });

  it("200,000 levels cost no stack: refused at the cap", () => {
    assert.equal(jsonCost("[".repeat(200_000) + "]".repeat(200_000), 256), "depth");
    assert.equal(jsonCost("[".repeat(256) + "]".repeat(256), 256), undefined);
  });
});
