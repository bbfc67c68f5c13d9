import assert from "node:assert/strict";
import { duration, DURATION_PATTERN, durationMs, NO_CONTROL_ERROR, NO_PROXY_PATTERN, proxySettings } from "./fields";
import { MAX_TIMER_MS } from "./duration";
import { flowsAgentSettings } from "./flows-agent";
import { launcherSettings } from "./launcher";
import type { RoleName } from "./roles";
import { settingsJsonSchema } from "./settings-schema";
import { SettingsError, validateSettings } from "./validate";
import { vcsAgentSettings } from "./vcs-agent";
import { PRIVATE_KEY_B64, TOKENS } from "../../devkit/fixtures";
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

  it("durations: shorter than Node's longest timer, in the schema; the runtime's durationMs stops at it", async () => {
    assert.ok(duration.safeParse("596h").success);
    for (const text of ["597h", "25000h", "2147483647ms", "1000h"]) {
      const parsed = launcherSettings.safeParse({
        token: TOKENS.worker,
        poolPrivateKey: PRIVATE_KEY_B64,
        runTimeout: text,
      });
      assert.deepEqual(
        parsed.error?.issues.map((i) => [i.path[0], i.message.slice(0, 26)]),
        [["runTimeout", "must be shorter than 596h "]],
        text,
      );
    }
    // A timer set from a duration past the schema (an environment the components never saw) waits: it does not fire at once.
    assert.equal(durationMs("1000h"), MAX_TIMER_MS);
    const warnings: string[] = [];
    const warned = (warning: Error) => warnings.push(warning.name);
    process.on("warning", warned);
    let fired = false;
    const timer = setTimeout(() => (fired = true), durationMs("1000h"));
    await new Promise((resolve) => setTimeout(resolve, 5));
    await new Promise((resolve) => setImmediate(resolve));
    clearTimeout(timer);
    process.off("warning", warned);
    assert.deepEqual([fired, warnings], [false, []]);
  });

  describe("what lands in a file or on a command line as it is", () => {
    const base = {
      launcher: { token: TOKENS.worker, poolPrivateKey: PRIVATE_KEY_B64 },
      "flows-agent": {
        poolId: "p",
        poolToken: "t".repeat(16),
        gatewayEndpoint: "https://gw",
        backendEndpoint: "https://b",
      },
      "vcs-agent": { token: TOKENS.vcs, targetBaseEndpoint: "https://git.corp", vendor: "gitlab" },
    };
    const schemas = { launcher: launcherSettings, "flows-agent": flowsAgentSettings, "vcs-agent": vcsAgentSettings };
    /** [role, setting, its value with `c` in it] */
    const settings: [RoleName, string, (c: string) => unknown][] = [
      ["flows-agent", "httpsProxy", (c) => `http://proxy.corp:3128/${c}`],
      ["flows-agent", "registryMirror", (c) => `https://mirror.internal/v2${c}/x`],
      ["flows-agent", "backendEndpoint", (c) => `${c}https://backend.corp`],
      ["flows-agent", "mountsDir", (c) => `/var/lib/mounts${c}`],
      ["flows-agent", "extraDockerParams", (c) => [`--label=team${c}x`]],
      ["flows-agent", "metadataTags", (c) => ({ team: `a${c}b` })],
      ["launcher", "extraMounts", (c) => [`/srv/cache${c}:/cache:ro`]],
      ["launcher", "dockerConfigDir", (c) => `/etc/docker${c}`],
      ["launcher", "vcsAgents", (c) => [{ name: "git", baseEndpoint: `https://git.corp/${c}` }]],
      ["vcs-agent", "targetBaseEndpoint", (c) => `https://git.corp:8443${c}`],
    ];

    for (const [code, c] of Object.entries({
      VT: "\x0b",
      SOH: "\x01",
      ESC: "\x1b",
      DEL: "\x7f",
      NEL: "\x85",
      TAB: "\t",
      LF: "\n",
      NUL: "\0",
    }))
      it(`a control character (${code}) is refused, by the components' schema and the runtime's check, naming the setting`, () => {
        for (const [role, key, value] of settings) {
          const raw = { ...base[role], [key]: value(c) };
          const parsed = schemas[role].safeParse(raw);
          assert.ok(!parsed.success, `${key} took ${JSON.stringify(value(c))}`);
          const issue = parsed.error.issues.find((i) => i.path[0] === key);
          assert.ok(issue && /control character/.test(issue.message), `${key}: ${JSON.stringify(parsed.error.issues)}`);
          assert.throws(
            () => validateSettings(role, settingsJsonSchema(role), raw),
            (error: SettingsError) => error.problems.some((p) => p.path.split(/[.[]/)[0] === key),
            `the runtime took ${key}`,
          );
        }
      });

    it("good but unusual values pass: spaces in paths, Unicode in tags, an encoded ? in a URL's path", () => {
      const flows = flowsAgentSettings.parse({
        ...base["flows-agent"],
        httpsProxy: "http://10.0.0.5:3128",
        registryMirror: "https://mirror.internal/v2/%3Fodd%0B",
        mountsDir: "/var/lib/my mounts",
        metadataTags: { team: "équipe ✓ — ops" },
        extraDockerParams: ["--label=a=b"],
      });
      assert.equal(flows.registryMirror, "https://mirror.internal/v2/%3Fodd%0B");
      assert.ok(launcherSettings.safeParse({ ...base.launcher, extraMounts: ["/srv/my cache:/cache:ro"] }).success);
      assert.equal(NO_CONTROL_ERROR.includes("control character"), true);
    });

    it("a URL setting with a query or fragment is refused (the agent drops it, and a token there would be readable)", () => {
      const cases: [RoleName, string, unknown][] = [
        ["flows-agent", "httpsProxy", "http://proxy.corp:3128/?token=abc"],
        ["flows-agent", "registryMirror", "https://mirror.internal#x"],
        ["flows-agent", "gatewayEndpoint", "https://gw.corp/?key=1"],
        ["launcher", "vcsAgents", [{ name: "git", baseEndpoint: "https://git.corp/?t=1" }]],
        ["vcs-agent", "targetBaseEndpoint", "https://git.corp/?private_token=x"],
        ["vcs-agent", "targetBaseEndpoint", "https://git.corp/?"],
      ];
      for (const [role, key, value] of cases) {
        const parsed = schemas[role].safeParse({ ...base[role], [key]: value });
        assert.ok(!parsed.success, `${key} took ${JSON.stringify(value)}`);
        assert.ok(
          parsed.error.issues.some((i) => i.path[0] === key && /no query .* or fragment/.test(i.message)),
          key,
        );
      }
    });
  });
});
