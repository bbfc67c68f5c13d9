import { z } from "zod";
import { MAX_STATE_BYTES } from "../../protocol/worker";
import { absolutePath, CONTROL, duration, envVarName, httpUrl, metadataTags, proxySettings, setting } from "./fields";

/** `/host/path:/container/path`, optionally `:ro` or `:rw`; no `..` segment, nothing Docker's --mount would read as syntax. */
const MOUNT_PATH = String.raw`\/[^:,"=${CONTROL}]*`;
export const MOUNT_PATTERN = new RegExp(String.raw`^(?!.*(^|\/)\.\.(\/|:|$))${MOUNT_PATH}:${MOUNT_PATH}(:ro|:rw)?$`);

/** The launcher's own credentials: passing them on would hand the pool to every run. */
const CREDENTIAL_VARIABLES = ["SPACELIFT_TOKEN", "SPACELIFT_POOL_PRIVATE_KEY"];
const passedVariables = z
  .array(
    envVarName.refine((name) => !CREDENTIAL_VARIABLES.includes(name), {
      error: "is the launcher's own credential and is never passed to runs",
    }),
  )
  .default([]);

const base64PrivateKey = z
  .string()
  .regex(/^[A-Za-z0-9+/]+={0,2}$/, { error: "must be the private key file encoded as one line of base64" })
  .refine(
    (text) =>
      !/^[A-Za-z0-9+/]+={0,2}$/.test(text) || Buffer.from(text, "base64").toString("utf8").includes("PRIVATE KEY-----"),
    {
      error: "must decode to a PEM private key (base64 of the whole spacelift.key file)",
    },
  );

const dockerName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, { error: "must be a Docker name (letters, digits, _ . -)" });

/** The worker launcher's settings (reference 003, configuration options). */
export const launcherSettings = z.strictObject({
  token: setting(z.string().min(1, { error: "is required" }), { env: "SPACELIFT_TOKEN", secret: true }),
  poolPrivateKey: setting(base64PrivateKey, { env: "SPACELIFT_POOL_PRIVATE_KEY", secret: true }),
  dockerConfigDir: setting(absolutePath.optional(), { env: "SPACELIFT_DOCKER_CONFIG_DIR" }),
  maskedEnvVars: setting(passedVariables, { env: "SPACELIFT_MASK_ENVS" }),
  whitelistedEnvVars: setting(passedVariables, { env: "SPACELIFT_WHITELIST_ENVS" }),
  workerNetwork: setting(dockerName.default("bridge"), { env: "SPACELIFT_WORKER_NETWORK" }),
  extraMounts: setting(
    z
      .array(
        z.string().regex(MOUNT_PATTERN, {
          error:
            'must be "/host/path:/container/path" (optionally ":ro"), absolute, without "..", the characters , " = or control characters',
        }),
      )
      .default([]),
    { env: "SPACELIFT_WORKER_EXTRA_MOUNTS" },
  ),
  workerRuntime: setting(dockerName.optional(), { env: "SPACELIFT_WORKER_RUNTIME" }),
  logsTimeout: setting(duration.default("7m"), { env: "SPACELIFT_LAUNCHER_LOGS_TIMEOUT" }),
  runTimeout: setting(duration.default("70m"), { env: "SPACELIFT_LAUNCHER_RUN_TIMEOUT" }),
  runInitializationPolicyFile: setting(absolutePath.optional(), {
    env: "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
  }),
  /** Not in the reference: "process" runs on this host without a container (development and tests only). */
  executor: setting(z.enum(["docker", "process"]).default("docker"), { env: "AGENTPOOLS_WORKER_EXECUTOR" }),
  /**
   * Not in the reference: the most bytes (as sealed) of the state a run starts from that the launcher downloads; a
   * larger one fails the run. A download also ends when nothing comes for the logs timeout.
   */
  maxStateBytes: setting(z.int().min(1).default(MAX_STATE_BYTES), { env: "AGENTPOOLS_MAX_STATE_BYTES" }),
  /** Where each run's workspace is made (and removed once the gateway has its result). */
  workDirectory: setting(absolutePath.default("/var/lib/agentpools/runs"), { env: "AGENTPOOLS_WORK_DIR" }),
  vcsAgents: setting(
    z
      .array(
        z.strictObject({
          name: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, { error: "must be a VCS agent pool name" }),
          baseEndpoint: httpUrl,
        }),
      )
      .default([]),
    {
      env: "SPACELIFT_PRIVATEVCS_MAPPING_",
      encoding: "indexed",
      fields: { name: "NAME", baseEndpoint: "BASE_ENDPOINT" },
    },
  ),
  ...proxySettings,
  metadataTags: setting(metadataTags, { env: "SPACELIFT_METADATA_", encoding: "map" }),
});

export type LauncherSettings = z.output<typeof launcherSettings>;
