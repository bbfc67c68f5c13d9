import assert from "node:assert/strict";
import { gatewayUrlProblem } from "./link";
import { decodeToken, encodeToken } from "./token";

const secret = "s".repeat(43);

describe("gateway URLs an agent dials with its pool's token", () => {
  it("takes https:// with any host, port and path, and http:// only to a loopback host", () => {
    for (const url of [
      "https://gateway.example.com",
      "HTTPS://Gateway.Example.com:8443/base/path",
      "https://10.0.0.5:9443",
      "https://[fd00::5]/",
      "http://127.0.0.1:8080",
      "http://127.45.6.7",
      "http://127.1:9000", // URL reads it as 127.0.0.1
      "http://localhost:8080/x",
      "http://LOCALHOST",
      "http://[::1]:8443",
    ])
      assert.equal(gatewayUrlProblem(new URL(url)), undefined, url);
  });

  it("refuses plain http:// to any other host, naming scheme and host (never credentials) and what is allowed", () => {
    for (const [url, shown] of [
      ["http://gateway.example.com", "http://gateway.example.com"],
      ["http://10.0.0.5:8080/base", "http://10.0.0.5:8080"],
      ["http://localhost.evil.example", "http://localhost.evil.example"],
      ["http://127.0.0.1.nip.io", "http://127.0.0.1.nip.io"],
      ["http://localhost:80@gw.example/", "http://gw.example"],
      ["http://user:pass@gw.example", "http://gw.example"],
      ["http://[::2]", "http://[::2]"],
      ["ws://127.0.0.1", "ws://127.0.0.1"],
    ]) {
      const problem = gatewayUrlProblem(new URL(url)) ?? "";
      assert.equal(
        problem,
        `${shown} is not allowed: use https://, or http:// only to localhost, 127.0.0.0/8 or [::1]`,
        url,
      );
      assert.ok(!problem.includes("pass"));
    }
  });

  it("a pool token naming a plain-http gateway over a network is refused when decoded (launcher, VCS agent)", () => {
    assert.throws(
      () => decodeToken(encodeToken({ gateway: "http://gw.corp:8080", pool: "git", secret })),
      /^Error: the pool token is not valid: its gateway http:\/\/gw.corp:8080 is not allowed: use https:\/\//,
    );
    assert.equal(decodeToken(encodeToken({ gateway: "http://127.0.0.1:8080", pool: "git", secret })).pool, "git");
    assert.equal(decodeToken(encodeToken({ gateway: "https://gw.corp:8443/x", pool: "git", secret })).pool, "git");
  });
});
