import { chmodSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { awsClient, instanceMetadata, type AwsClient, type InstanceMetadata } from "./aws";
import { watchAgent } from "./watch";
import { interruption, protectWhileBusy, reportBoot, whileWarmed } from "./scaling";
import { createLogger, type Logger } from "../../lib/log";
import { sleep } from "./http";
import { envToRawSettings, secretSettings, type Env, type SettingsSchema } from "../config/env";
import { servedSettings, validateSettings } from "../config/validate";
import {
  CONFIG_PATH_VARIABLE,
  LIFECYCLE_POLL_SECONDS,
  PROTECTION_POLL_SECONDS,
  type InstanceConfig,
} from "../config/instance";
import { BUILT_FOR } from "../config/built-for";
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
  /** The share of its capacity in use (0 to 1; true is 1): a run, requests, Flows runs. */
  busy?(): number | boolean;
}

/**
 * Makes `dir` the agent's own, for files no other uid may replace: created if missing, made 0755 where the agent owns
 * it (a volume's root, which the kubelet makes 0777, or 2777 with an fsGroup), and refused when any directory from it
 * up to / is a link, another uid's, or writable by group or others without the sticky bit (where another uid could
 * rename it and plant its own). Only a root agent checks: only it starts processes under other uids (a Flows agent's
 * runtimes); a non-root agent's container holds no uid but its own.
 */
export function ownDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (process.getuid?.() !== 0) return;
  if (lstatSync(dir).uid === 0) chmodSync(dir, 0o755);
  for (let at = path.resolve(dir); ; at = path.dirname(at)) {
    const stat = lstatSync(at);
    if (stat.isSymbolicLink() || stat.uid !== 0 || ((stat.mode & 0o022) !== 0 && (stat.mode & 0o1000) === 0))
      throw new Error(
        `AGENTPOOLS_STATUS_DIR=${dir}: ${at} (mode ${(stat.mode & 0o7777).toString(8)}, uid ${stat.uid}) lets other users replace what it holds: give the status files a directory of their own`,
      );
    if (at === path.dirname(at)) return;
  }
}

/**
 * Status files for probes (Kubernetes exec probes). Liveness, "the process works":
 * `heartbeat` is rewritten every few seconds while the event loop turns, from the runtime's
 * start to its exit, also while it waits for a gateway that is down or drains. Readiness,
 * "connected": `ready` exists only while `ready()` says so. `update` applies a change at once.
 * A write that fails throws nowhere: the heartbeat goes stale, so the probe fails (the kubelet's verdict, not ours).
 */
export function writeStatusFiles(dir: string, ready: () => boolean, intervalMs = 5000) {
  ownDirectory(dir);
  const unready = () => {
    try {
      rmSync(path.join(dir, "ready"), { force: true });
    } catch {
      // The directory is gone or not ours: not ready either way.
    }
  };
  const update = () => {
    try {
      writeFileSync(path.join(dir, "heartbeat"), `${Date.now()}\n`);
      if (ready()) writeFileSync(path.join(dir, "ready"), "");
      else unready();
    } catch {
      unready();
    }
  };
  update();
  const timer = setInterval(update, intervalMs);
  return {
    update,
    stop: () => {
      clearInterval(timer);
      unready();
    },
  };
}

export interface RoleContext {
  log: Logger;
  /** The environment the settings were read from (a launcher passes some of it to runs); process.env if not given. */
  env?: Env;
  /** Say busy() may have changed: settles once the instance's scale-in protection matches it (on AWS). */
  busyChanged?: () => Promise<void>;
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

/**
 * The start-up path every role shares: read the instance configuration, fetch the pool's
 * credentials with the instance role, tag the agent with instance metadata, validate the
 * settings, start the agent, complete the launch hook once it is connected, and on SIGTERM
 * or Auto Scaling termination drain it and complete the termination hook.
 */
export async function runRole<S>(role: Role<S>, schema: SettingsSchema, options?: RunOptions): Promise<number> {
  const processEnv = options?.env ?? process.env;
  const log = createLogger(role.name);
  const startedAt = Date.now();
  let guard: ReturnType<typeof protectWhileBusy> | undefined;
  // Ready once the agent is connected, and while it stays so; never again once draining.
  let agent: RunningAgent | undefined;
  let serving = false;
  let status: ReturnType<typeof writeStatusFiles> | undefined;
  let code = 0;

  try {
    const statusDir = processEnv.AGENTPOOLS_STATUS_DIR;
    // Probe files are Kubernetes': an EC2 bundle leaves them out.
    if (BUILT_FOR.platform !== "ec2" && statusDir)
      status = writeStatusFiles(statusDir, () => serving && (agent?.connected?.() ?? true), options?.statusIntervalMs);
    const configPath = processEnv[CONFIG_PATH_VARIABLE];
    const config: InstanceConfig | undefined = configPath && JSON.parse(readFileSync(configPath, "utf8"));
    // On EC2 the component writes the file beside the role's own bundle: it is that role's.
    if (BUILT_FOR.platform !== "ec2" && config && config.role !== role.name)
      throw new Error(`${configPath} is for role ${config.role}, not ${role.name}`);
    // What the role reads from its environment (a launcher passes some of it to runs), and the secret settings.
    const env: Env = { ...processEnv };
    let tags: Record<string, string> | undefined;
    const hooks = config?.aws;
    const pollMs = (hooks?.lifecyclePollSeconds ?? LIFECYCLE_POLL_SECONDS) * 1000;
    const secrets = secretSettings(schema);

    let client: AwsClient | undefined;
    let imds: InstanceMetadata | undefined;
    let instanceId = "";
    let launchedAt = "";
    if (hooks) {
      imds = instanceMetadata(processEnv);
      const identity = await imds.identity();
      instanceId = identity.instanceId;
      launchedAt = identity.pendingTime;
      // The partition's DNS suffix, as the instance knows it: the AWS APIs are at SERVICE.REGION.SUFFIX.
      client = awsClient(
        identity.region,
        (await imds.get("/latest/meta-data/services/domain")).trim(),
        imds.credentials,
        processEnv,
      );
      const { SecretString } = await client.json("secretsmanager", "secretsmanager.GetSecretValue", {
        SecretId: hooks.secretArn,
      });
      // Never JSON.parse's own message: it quotes the text it could not read, the secret's first characters.
      let secret: Record<string, unknown> | undefined;
      try {
        secret = JSON.parse(SecretString as string);
      } catch {
        // Said below.
      }
      if (!secret || typeof secret !== "object") throw new Error(`secret ${hooks.secretArn} is not a JSON object`);
      for (const { env: name } of secrets) if (typeof secret[name] === "string") env[name] = secret[name] as string;
      tags = {
        instance_id: identity.instanceId,
        availability_zone: identity.availabilityZone,
        instance_type: identity.instanceType,
      };
    }

    for (const { env: name } of secrets) if (env[name]) log.redact(env[name]);
    const argv = BUILT_FOR.platform === "ec2" ? [] : (options?.argv ?? process.argv.slice(2));
    // EC2's unit starts the runtime with no argument (userdata.ts): nothing else gives it one.
    if (BUILT_FOR.platform !== "ec2" && argv[0] && !options?.parseFlags)
      throw new Error(`unknown flag ${JSON.stringify(argv[0])}`);
    // EC2: the file's settings as the component checked them. Elsewhere: the file's, under the variables of the
    // process (an operator overrides one setting on a box; Kubernetes gives them all so) and the flags, checked here.
    const raw =
      BUILT_FOR.platform === "ec2"
        ? { ...config?.settings }
        : { ...config?.settings, ...envToRawSettings(schema, { ...env, ...options?.parseFlags?.(schema, argv) }) };
    // The instance's identity as metadata tags (every role's setting of that name), under those the pool sets.
    if (tags) raw.metadataTags = { ...tags, ...(raw.metadataTags as object) };
    const settings =
      BUILT_FOR.platform === "ec2"
        ? servedSettings<S>(role.name, schema, raw, env)
        : validateSettings<S>(role.name, schema, raw);

    /** Complete this instance's lifecycle action on `hook` (true if there was one), or (complete false) record a heartbeat on it. */
    const completeHook = async (hook: string, complete = true) => {
      try {
        const params = {
          AutoScalingGroupName: hooks!.autoScalingGroupName,
          LifecycleHookName: hook,
          InstanceId: instanceId,
        };
        await client!.query(
          complete ? "CompleteLifecycleAction" : "RecordLifecycleActionHeartbeat",
          complete ? { ...params, LifecycleActionResult: "CONTINUE" } : params,
        );
        if (complete) log.info("lifecycle action completed", { hook });
        return true;
      } catch (error) {
        // (A restarted runtime finds the launch action long completed: "No active Lifecycle Action".)
        log.warn("could not complete lifecycle action", { hook, error: (error as Error).message });
        return false;
      }
    };
    /** Until Auto Scaling terminates the instance, or (notices) EC2 says it will be interrupted or rebalanced. */
    const terminating = async (notices: boolean): Promise<{ reason: string; at?: number }> => {
      for (;;) {
        const state = await imds!.targetLifecycleState();
        if (state === "Terminated" || state?.startsWith("Warmed:Terminated"))
          return { reason: "autoscaling termination" };
        const notice = notices && (await interruption(imds!));
        if (notice) return notice;
        await sleep(pollMs);
      }
    };
    if (hooks) {
      // In a warm pool: ready (secret read, settings valid), unconnected until put in service.
      await whileWarmed(imds!, () => completeHook(hooks.launchHookName), pollMs);
      const set = (on: boolean) =>
        client!.query("SetInstanceProtection", {
          AutoScalingGroupName: hooks.autoScalingGroupName,
          "InstanceIds.member.1": instanceId,
          ProtectedFromScaleIn: `${on}`,
        });
      // From before the agent connects: it may take work at once.
      guard = protectWhileBusy(
        () => agent?.busy?.() ?? 0,
        set,
        log,
        hooks.protectSeconds * 1000,
        hooks.lingerSeconds * 1000,
        (hooks.protectionPollSeconds ?? PROTECTION_POLL_SECONDS) * 1000,
      );
    }
    agent = await role.start(settings, { log, env, busyChanged: () => guard?.sync() ?? Promise.resolve() });
    const crashed = agent.stopped.then(
      () => "agent stopped",
      (error: Error) => `agent failed: ${error.message}`,
    );
    const first = await Promise.race([agent.ready.then(() => ""), crashed]);
    if (first) throw new Error(first);
    log.info("agent ready", { pool: config?.pool });
    serving = true;
    status?.update();
    if (hooks && (await completeHook(hooks.launchHookName)))
      reportBoot(hooks.autoScalingGroupName, Date.parse(launchedAt), startedAt, log);
    const watch =
      hooks &&
      watchAgent(
        agent,
        hooks.autoScalingGroupName,
        log,
        hooks.metricsSeconds * 1000,
        hooks.unhealthyAfterSeconds * 1000,
        () => client!.query("SetInstanceHealth", { InstanceId: instanceId, HealthStatus: "Unhealthy" }),
      );

    const stopSignal = options?.stopSignal ?? stopSignals();
    const asReason = (reason: string) => ({ reason, at: 0 });
    const notice = await Promise.race([
      stopSignal.then(asReason),
      ...(imds ? [terminating(true)] : []),
      crashed.then(asReason),
    ]);
    const reason = notice.reason;
    if (reason.startsWith("agent")) throw new Error(reason);

    // A spot interruption leaves two minutes: what does not finish by then stays queued for others.
    const drainSeconds = Math.min(
      config?.drainTimeoutSeconds ?? 300,
      notice.at ? (notice.at - Date.now()) / 1000 - 15 : Infinity,
    );
    log.info("draining", { reason, timeoutSeconds: drainSeconds });
    serving = false;
    status?.update();
    watch?.drain();
    const hooked = hooks && reason === "autoscaling termination";
    // The termination hook holds the instance one heartbeat timeout at a time: a longer drain renews it.
    const heartbeats = hooked
      ? setInterval(() => completeHook(hooks.terminationHookName, false), hooks.heartbeatSeconds * 1000)
      : undefined;
    await agent.drain(Date.now() + drainSeconds * 1000);
    clearInterval(heartbeats);
    await guard?.stop(!hooked);
    watch?.stop();
    log.info("drained");
    // Drained for a notice: Auto Scaling terminates the instance next (capacity rebalancing), or EC2 does.
    if (
      hooks &&
      /spot|rebalance/.test(reason) &&
      !(await Promise.race([stopSignal, terminating(false).then(() => "")]))
    )
      await completeHook(hooks.terminationHookName);
    else if (hooked) await completeHook(hooks.terminationHookName);
  } catch (error) {
    // (Protection stays as it was: the restarted runtime lifts it.)
    void guard?.stop(false);
    log.error((error as Error).message);
    code = 1;
  }
  status?.stop();
  (options?.exit ?? process.exit)(code);
  return code;
}
