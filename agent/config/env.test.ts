import assert from "node:assert/strict";
import { envToRawSettings, parseFlags, secretSettings, settingsToEnv } from "./env";
import { settingsJsonSchema } from "./settings-schema";
import { roleSettings, ROLES } from "./roles";
import { SettingsError, validateSettings } from "./validate";

const KEY = Buffer.from("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n").toString("base64");

/** A full configuration of each role, every optional setting set. */
export const FULL_SETTINGS = {
  launcher: {
    token: "worker-token-0123456789",
    poolPrivateKey: KEY,
    dockerConfigDir: "/var/lib/agentpools/docker",
    maskedEnvVars: ["DB_PASSWORD", "API_KEY"],
    whitelistedEnvVars: ["AWS_REGION"],
    workerNetwork: "runs",
    extraMounts: ["/opt/cache:/cache:ro", "/etc/ssl/certs:/etc/ssl/certs"],
    workerRuntime: "runsc",
    logsTimeout: "10m",
    runTimeout: "2h",
    runInitializationPolicyFile: "/etc/agentpools/policy",
    vcsAgents: [
      { name: "gitlab-internal", baseEndpoint: "https://gitlab.internal.example" },
      { name: "ghe", baseEndpoint: "https://ghe.internal.example/api" },
    ],
    httpsProxy: "http://proxy.internal:3128",
    noProxy: "169.254.169.254,.internal",
    metadataTags: { team: "platform", cost_center: "42" },
  },
  "vcs-agent": {
    token: "vcs-token-0123456789",
    targetBaseEndpoint: "http://169.254.0.10:7990",
    vendor: "bitbucket_datacenter",
    allowedProjects: "^(infra|platform)/.*$",
    parallelism: 8,
    debugPrintAll: true,
    httpsProxy: "http://proxy.internal:3128",
    noProxy: ".internal",
    metadataTags: { instance_id: "i-0123" },
  },
  "flows-agent": {
    poolId: "01HXYZPOOL",
    poolToken: "flows-token-0123456789",
    gatewayEndpoint: "https://gateway.useflows.eu",
    backendEndpoint: "https://useflows.eu",
    executor: "process",
    mountsDir: "/var/lib/agentpools/mounts",
    runtimeImage: "registry.internal/node:24-alpine",
    gvisor: false,
    extraDockerParams: ["--dns=10.0.0.2", "--pids-limit=256"],
    runtimePoolSize: 8,
    runtimeMemoryMb: 512,
    defaultRunTimeout: "30s",
    registryMirror: "https://mirror.internal",
    runtimeNetwork: "flows-runtimes",
    httpsProxy: "http://proxy.internal:3128",
    noProxy: ".internal",
    metadataTags: { zone: "a" },
  },
} as const;

describe("settings as environment variables", () => {
  for (const role of ROLES) {
    it(`${role}: settings -> variables -> settings gives back what went in`, () => {
      const schema = settingsJsonSchema(role);
      const settings = roleSettings[role].parse(FULL_SETTINGS[role]);
      const env = settingsToEnv(schema, settings, { includeSecrets: true });
      const back = validateSettings(role, schema, envToRawSettings(schema, env));
      assert.deepEqual(back, settings);
    });

    it(`${role}: the runtime fills in the same defaults as the zod schema`, () => {
      const schema = settingsJsonSchema(role);
      const required = Object.fromEntries(
        (schema.required ?? []).map((key) => [key, (FULL_SETTINGS[role] as Record<string, unknown>)[key]]),
      );
      const viaZod = roleSettings[role].parse(required);
      const viaRuntime = validateSettings(
        role,
        schema,
        envToRawSettings(schema, settingsToEnv(schema, required, { includeSecrets: true })),
      );
      assert.deepEqual(viaRuntime, viaZod);
    });
  }

  it("uses the reference's variable names", () => {
    const env = settingsToEnv(settingsJsonSchema("launcher"), roleSettings.launcher.parse(FULL_SETTINGS.launcher), {
      includeSecrets: true,
    });
    assert.equal(env.SPACELIFT_MASK_ENVS, "DB_PASSWORD,API_KEY");
    assert.equal(env.SPACELIFT_WORKER_EXTRA_MOUNTS, "/opt/cache:/cache:ro,/etc/ssl/certs:/etc/ssl/certs");
    assert.equal(env.SPACELIFT_LAUNCHER_LOGS_TIMEOUT, "10m");
    assert.equal(env.SPACELIFT_PRIVATEVCS_MAPPING_NAME_1, "ghe");
    assert.equal(env.SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0, "https://gitlab.internal.example");
    assert.equal(env.SPACELIFT_METADATA_team, "platform");
    assert.equal(env.SPACELIFT_POOL_PRIVATE_KEY, KEY);
  });

  it("leaves secrets out unless asked", () => {
    for (const role of ROLES) {
      const schema = settingsJsonSchema(role);
      const env = settingsToEnv(schema, roleSettings[role].parse(FULL_SETTINGS[role]));
      for (const { env: name } of secretSettings(schema))
        assert.equal(env[name], undefined, `${role} rendered ${name}`);
      assert.ok(secretSettings(schema).length > 0);
    }
  });

  it("documented defaults: parallelism 4, allowed projects .*, logs 7m, runs 70m, bridge network, gVisor on", () => {
    const vcs = validateSettings<Record<string, unknown>>("vcs-agent", settingsJsonSchema("vcs-agent"), {
      token: "t",
      targetBaseEndpoint: "http://git",
      vendor: "gitlab",
    });
    assert.equal(vcs.parallelism, 4);
    assert.equal(vcs.allowedProjects, ".*");
    assert.equal(vcs.debugPrintAll, false);
    const launcher = roleSettings.launcher.parse({ token: "t", poolPrivateKey: KEY });
    assert.equal(launcher.logsTimeout, "7m");
    assert.equal(launcher.runTimeout, "70m");
    assert.equal(launcher.workerNetwork, "bridge");
    assert.equal(
      roleSettings["flows-agent"].parse({ ...FULL_SETTINGS["flows-agent"], gvisor: undefined }).gvisor,
      true,
    );
  });

  it("flags win over variables", () => {
    const schema = settingsJsonSchema("vcs-agent");
    const flags = parseFlags(schema, ["--parallelism=9", "--vendor", "github_enterprise", "--debug-print-all"]);
    const raw = envToRawSettings(schema, {
      SPACELIFT_VCS_AGENT_PARALLELISM: "2",
      SPACELIFT_VCS_AGENT_VENDOR: "gitlab",
      ...flags,
    });
    assert.deepEqual(raw, { parallelism: 9, vendor: "github_enterprise", debugPrintAll: true });
    assert.throws(() => parseFlags(schema, ["--paralelism=2"]), /unknown flag "--paralelism=2"/);
    assert.throws(() => parseFlags(schema, ["--vendor"]), /flag --vendor needs a value/);
  });

  it("reports every bad variable by name and value, and never a secret's value", () => {
    const schema = settingsJsonSchema("vcs-agent");
    const env = {
      SPACELIFT_VCS_AGENT_POOL_TOKEN: "",
      SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT: "ftp://git",
      SPACELIFT_VCS_AGENT_VENDOR: "gitea",
      SPACELIFT_VCS_AGENT_PARALLELISM: "0",
      SPACELIFT_VCS_AGENT_ALLOWED_PROJECTS: "(",
      SPACELIFT_VCS_AGENT_DEBUG_PRINT_ALL: "maybe",
    };
    let error: SettingsError | undefined;
    try {
      validateSettings("vcs-agent", schema, envToRawSettings(schema, env));
    } catch (e) {
      error = e as SettingsError;
    }
    assert.ok(error instanceof SettingsError);
    const byVariable = Object.fromEntries(error.problems.map((p) => [p.env, p.message]));
    assert.match(byVariable.SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT, /"ftp:\/\/git" is not allowed: expected an http/);
    assert.match(
      byVariable.SPACELIFT_VCS_AGENT_VENDOR,
      /"gitea" is not allowed: expected one of "azure_devops", "gitlab"/,
    );
    assert.match(byVariable.SPACELIFT_VCS_AGENT_PARALLELISM, /0 is not allowed: expected an integer from 1 to 64/);
    assert.match(
      byVariable.SPACELIFT_VCS_AGENT_ALLOWED_PROJECTS,
      /"\(" is not allowed: expected a valid regular expression/,
    );
    assert.match(byVariable.SPACELIFT_VCS_AGENT_DEBUG_PRINT_ALL, /"maybe" is not allowed: expected true or false/);
    assert.match(byVariable.SPACELIFT_VCS_AGENT_POOL_TOKEN, /secret, not shown/);
  });

  it("checks the items of lists and maps", () => {
    const schema = settingsJsonSchema("launcher");
    const env = {
      SPACELIFT_TOKEN: "t",
      SPACELIFT_POOL_PRIVATE_KEY: KEY,
      SPACELIFT_WORKER_EXTRA_MOUNTS: "/a:/b,relative:/c",
      "SPACELIFT_METADATA_bad-name": "x",
      SPACELIFT_PRIVATEVCS_MAPPING_NAME_0: "ghe",
    };
    assert.throws(
      () => validateSettings("launcher", schema, envToRawSettings(schema, env)),
      (e: SettingsError) =>
        e.problems.some((p) => p.path === "extraMounts[1]" && /"relative:\/c"/.test(p.message)) &&
        e.problems.some((p) => p.path === "metadataTags.bad-name") &&
        e.problems.some((p) => p.path === "vcsAgents[0].baseEndpoint" && p.message === "is required"),
    );
  });
});
