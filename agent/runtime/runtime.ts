import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { awsClient, instanceMetadata, type AwsClient, type InstanceMetadata } from "./aws";
import { logShipper, type LogShipper } from "./cloudwatch";
import { watchAgent } from "./watch";
import { createLogger, type Logger } from "../../lib/log";
import { sleep } from "./http";
import { envToRawSettings, secretSettings, type Env, type SettingsSchema } from "../config/env";
import { validateSettings } from "../config/validate";
import { CONFIG_PATH_VARIABLE, type InstanceConfig } from "../config/instance";
import type { RoleName } from "../config/roles";

/** What a role's agent gives back once started. */
export interface RunningAgent {
  /** Resolves once the agent is connected to its gateway and can take work. */
  ready: Promise<void>;
  /** Settles if the agent stops by itself (a fatal error rejects it). */
  stopped: Promise<void>;
  /** Stop taking work, finish what is in flight, then close; give up at the deadline. */
  drain(deadline: number): Promise<void>;
  /** Whether the agent is connected right now (it may be reconnecting); assumed once ready. */
  connected?(): boolean;
  /** Whether the agent has work in flight (a run, a request). */
  busy?(): boolean;
}

/**
 * Status files for probes (Kubernetes exec probes). Liveness, "the process works":
 * `heartbeat` is rewritten every few seconds while the event loop turns, from the runtime's
 * start to its exit, also while it waits for a gateway that is down or drains. Readiness,
 * "connected": `ready` exists only while `ready()` says so. `update` applies a change at once.
 */
export function writeStatusFiles(dir: string, ready: () => boolean, intervalMs = 5000) {
  mkdirSync(dir, { recursive: true });
  const update = () => {
    writeFileSync(path.join(dir, "heartbeat"), `${Date.now()}\n`);
    if (ready()) writeFileSync(path.join(dir, "ready"), "");
    else rmSync(path.join(dir, "ready"), { force: true });
  };
  update();
  const timer = setInterval(update, intervalMs);
  return {
    update,
    stop: () => {
      clearInterval(timer);
      rmSync(path.join(dir, "ready"), { force: true });
    },
  };
}

export interface RoleContext {
  log: Logger;
  /** The environment the settings were read from (a launcher passes some of it to runs); process.env if not given. */
  env?: Env;
}

export interface Role<S = Record<string, unknown>> {
  name: RoleName;
  start(settings: S, context: RoleContext): Promise<RunningAgent> | RunningAgent;
}

export interface RunOptions {
  env?: Env;
  argv?: string[];
  /** The role's command-line flags (parseFlags): a role without any refuses every argument. */
  parseFlags?(schema: SettingsSchema, argv: string[]): Env;
  /** Settled with the exit code instead of calling process.exit (tests). */
  exit?: (code: number) => void;
  /** How often to ask IMDS whether the Auto Scaling group is terminating this instance. */
  lifecyclePollMs?: number;
  /** How often to ship logs to CloudWatch (5 s). */
  shipIntervalMs?: number;
  /** Resolves when the process is asked to stop (defaults to SIGTERM or SIGINT). */
  stopSignal?: Promise<string>;
  /** How often the probe status files are rewritten. */
  statusIntervalMs?: number;
}

function stopSignals(): Promise<string> {
  return new Promise((resolve) => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) process.once(signal, () => resolve(signal));
  });
}

const METADATA_FROM_IDENTITY = { instance_id: "instanceId", availability_zone: "availabilityZone", instance_type: "instanceType" } as const;

/**
 * The start-up path every role shares: read the instance configuration, fetch the pool's
 * credentials with the instance role, tag the agent with instance metadata, validate the
 * settings, start the agent, complete the launch hook once it is connected, and on SIGTERM
 * or Auto Scaling termination drain it and complete the termination hook.
 */
export async function runRole<S>(role: Role<S>, schema: SettingsSchema, options: RunOptions = {}): Promise<number> {
  const processEnv = options.env ?? process.env;
  const log = createLogger(role.name);
  let shipper: LogShipper | undefined;
  // Ready once the agent is connected, and while it stays so; never again once draining.
  let agent: RunningAgent | undefined;
  let serving = false;
  let status: ReturnType<typeof writeStatusFiles> | undefined;
  let code = 0;

  try {
    const statusDir = processEnv.AGENTPOOLS_STATUS_DIR;
    if (statusDir) status = writeStatusFiles(statusDir, () => serving && (agent?.connected?.() ?? true), options.statusIntervalMs);
    const configPath = processEnv[CONFIG_PATH_VARIABLE];
    const config: InstanceConfig | undefined = configPath && JSON.parse(readFileSync(configPath, "utf8"));
    if (config && config.role !== role.name) throw new Error(`${configPath} is for role ${config.role}, not ${role.name}`);
    // The variables of the process win over the file, so an operator can override one setting on a box.
    const env: Env = { ...config?.env, ...processEnv };
    const hooks = config?.aws;
    const secrets = secretSettings(schema);

    let client: AwsClient | undefined;
    let imds: InstanceMetadata | undefined;
    let instanceId = "";
    if (hooks) {
      imds = instanceMetadata(processEnv);
      const identity = await imds.identity();
      instanceId = identity.instanceId;
      // The partition's DNS suffix, as the instance knows it: the AWS APIs are at SERVICE.REGION.SUFFIX.
      client = awsClient(identity.region, (await imds.get("/latest/meta-data/services/domain")).trim(), imds.credentials, processEnv);
      shipper = logShipper(client, hooks.logGroupName, instanceId, options.shipIntervalMs);
      log.sinks.push(shipper.push);
      shipper.start();

      const secret = JSON.parse(await client.getSecretString(hooks.secretArn));
      for (const { env: name } of secrets) if (typeof secret[name] === "string") env[name] = secret[name];
      const metadataPrefix = Object.values(schema.properties).find((p) => p.encoding === "map")?.env;
      if (metadataPrefix) {
        for (const [tag, field] of Object.entries(METADATA_FROM_IDENTITY)) env[metadataPrefix + tag] ??= identity[field];
      }
    }

    for (const { env: name } of secrets) if (env[name]) log.redact(env[name]);
    const argv = options.argv ?? process.argv.slice(2);
    if (argv[0] && !options.parseFlags) throw new Error(`unknown flag ${JSON.stringify(argv[0])}`);
    const settings = validateSettings<S>(role.name, schema, envToRawSettings(schema, { ...env, ...options.parseFlags?.(schema, argv) }));

    agent = await role.start(settings, { log, env });
    const crashed = agent.stopped.then(
      () => "agent stopped",
      (error: Error) => `agent failed: ${error.message}`,
    );
    const first = await Promise.race([agent.ready.then(() => ""), crashed]);
    if (first) throw new Error(first);
    log.info("agent ready", { pool: config?.pool });
    serving = true;
    status?.update();
    /** Complete this instance's lifecycle action on `hook`, or (complete false) record a heartbeat on it. */
    const completeHook = async (hook: string, complete = true) => {
      try {
        await client!.lifecycleAction(hooks!.autoScalingGroupName, hook, instanceId, complete);
        if (complete) log.info("lifecycle action completed", { hook });
      } catch (error) {
        // A restarted runtime finds the launch action long completed; that is not a failure.
        const message = (error as Error).message;
        if (/No active Lifecycle Action/i.test(message)) log.info("no pending lifecycle action", { hook });
        else log.warn("could not complete lifecycle action", { hook, error: message });
      }
    };
    if (hooks) await completeHook(hooks.launchHookName);
    const watch =
      hooks &&
      watchAgent(agent, hooks.autoScalingGroupName, log, hooks.metricsSeconds * 1000, hooks.unhealthyAfterSeconds * 1000, () =>
        client!.query("SetInstanceHealth", { InstanceId: instanceId, HealthStatus: "Unhealthy" }),
      );

    const terminating = async () => {
      for (;;) {
        const state = await imds!.targetLifecycleState();
        if (state === "Terminated" || state?.startsWith("Warmed:Terminated")) return "autoscaling termination";
        await sleep(options.lifecyclePollMs ?? 5000);
      }
    };
    const reason = await Promise.race([options.stopSignal ?? stopSignals(), ...(imds ? [terminating()] : []), crashed]);
    if (reason.startsWith("agent")) throw new Error(reason);

    const drainSeconds = config?.drainTimeoutSeconds ?? 300;
    log.info("draining", { reason, timeoutSeconds: drainSeconds });
    serving = false;
    status?.update();
    watch?.drain();
    const hooked = hooks && reason === "autoscaling termination";
    // The termination hook holds the instance one heartbeat timeout at a time: a longer drain renews it.
    const heartbeats = hooked ? setInterval(() => completeHook(hooks.terminationHookName, false), hooks.heartbeatSeconds * 1000) : undefined;
    await agent.drain(Date.now() + drainSeconds * 1000);
    clearInterval(heartbeats);
    watch?.stop();
    log.info("drained");
    if (hooked) await completeHook(hooks.terminationHookName);
  } catch (error) {
    log.error((error as Error).message);
    code = 1;
  }
  status?.stop();
  await shipper?.stop();
  (options.exit ?? process.exit)(code);
  return code;
}
