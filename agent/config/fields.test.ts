import assert from "node:assert/strict";
import { DURATION_PATTERN, NO_PROXY_PATTERN, proxySettings } from "./fields";
import { flowsAgentSettings } from "./flows-agent";
import { bypassesProxy } from "../tunnel/dial";

describe("setting forms", () => {
  it("NO_PROXY: the forms the runtime, Node, Docker and curl all read", () => {
    for (const list of [
      "*",
      ".corp.example.com",
      "corp.example.com",
      "*.corp.example.com:8443",
      "10.0.0.2",
      "[::1]",
      "localhost,127.0.0.1",
      "host_name.internal",
      ".eu-west-1.amazonaws.com,169.254.169.254",
    ]) {
      assert.ok(NO_PROXY_PATTERN.test(list), list);
      assert.ok(proxySettings.noProxy.safeParse(list).success, list);
    }
    for (const list of ["10.0.0.0/8", "fd00::/8", ".corp,,git", " .corp", ".corp, .internal", "a b", ","]) {
      assert.ok(!proxySettings.noProxy.safeParse(list).success, list);
    }
  });

  it("NO_PROXY: each accepted form is one the runtime's dialer honours", () => {
    const cases: [string, string, string][] = [
      [".corp.example.com", "git.corp.example.com", "443"],
      ["*.corp.example.com:8443", "git.corp.example.com", "8443"],
      ["10.0.0.2", "10.0.0.2", "443"],
      [".eu-west-1.amazonaws.com", "secretsmanager.eu-west-1.amazonaws.com", "443"],
      ["*", "anything.example", "80"],
      ["[fd00::5]", "fd00::5", "443"],
      ["git.example,[::1]:8080", "::1", "8080"],
    ];
    for (const [list, host, port] of cases)
      assert.ok(NO_PROXY_PATTERN.test(list) && bypassesProxy(host, port, list), `${list} ${host}`);
    // A port named is that port only.
    assert.equal(bypassesProxy("::1", "443", "[::1]:8080"), false);
    assert.equal(bypassesProxy("git.corp.example.com", "443", "*.corp.example.com:8443"), false);
  });

  it("a gateway endpoint: https:// any host, http:// only to loopback, the refusal naming field, value and rule", () => {
    const flows = (gatewayEndpoint: string) =>
      flowsAgentSettings.safeParse({
        poolId: "p",
        poolToken: "t".repeat(16),
        gatewayEndpoint,
        backendEndpoint: "https://b",
      });
    for (const good of ["https://gw.example:8443/base", "http://127.0.0.1:8080", "http://localhost", "http://[::1]:1"])
      assert.ok(flows(good).success, good);
    const refused = flows("http://gateway.corp.example.com:8080");
    assert.ok(!refused.success);
    const [issue] = refused.error.issues;
    assert.deepEqual(issue.path, ["gatewayEndpoint"]);
    assert.match(
      issue.message,
      /^must be https:\/\/, or http:\/\/ only to localhost, 127\.0\.0\.0\/8 or \[::1\]: the agent sends/,
    );
    // The components' refusal shows the value beside it (test/bad-config.test.ts); proxies and VCS servers stay free.
    assert.ok(flowsAgentSettings.shape.httpsProxy.safeParse("http://proxy.corp:3128").success);
  });

  it("durations: any length but none", () => {
    for (const text of ["90s", "7m", "1h30m", "500ms", "10s", "0h1m", "100ms"])
      assert.ok(DURATION_PATTERN.test(text), text);
    for (const text of ["0s", "0m", "0h0m", "00s", "0ms", "7 minutes", "70", ""])
      assert.ok(!DURATION_PATTERN.test(text), text);
  });
});
