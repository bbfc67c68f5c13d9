import { z } from "zod";
import { FLOWS_RUN_TIMEOUT_DEFAULT, FLOWS_MAX_RUN_TIMEOUT_MS } from "../../protocol/flows";
import { durationMs } from "./duration";
import {
  absolutePath,
  CONTROL,
  duration,
  gatewayUrl,
  httpUrl,
  imageReference,
  metadataTags,
  proxySettings,
  setting,
} from "./fields";

export const FLOWS_EXECUTORS = ["docker", "process"] as const;
/** How runtimes of the process executor are kept from the agent and each other (see agent/flows-agent/sandbox.ts). */
export const RUNTIME_ISOLATIONS = ["auto", "namespaces", "user", "none"] as const;

/**
 * Extra `docker run` parameters a pool may add to each runtime container. An allowlist:
 * anything that could undo the sandbox (--privileged, --cap-add, --security-opt, host
 * namespaces, devices) is refused rather than filtered.
 */
export const DOCKER_EXTRA_PARAM_PATTERN = new RegExp(
  `^--(add-host|dns|dns-search|dns-option|label|ulimit|cpus|memory|memory-swap|pids-limit|shm-size|tmpfs)=[^\\s,${CONTROL}]+$`,
);

const NOBODY = 65534;

/** The Flows agent's settings (reference 004). */
export const flowsAgentSettings = z.strictObject({
  poolId: setting(z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, { error: "must be the pool ID from the pool page" }), {
    env: "FLOWS_AGENT_POOL_ID",
  }),
  poolToken: setting(z.string().min(1, { error: "is required" }), { env: "FLOWS_AGENT_POOL_TOKEN", secret: true }),
  gatewayEndpoint: setting(gatewayUrl, { env: "FLOWS_GATEWAY_ENDPOINT" }),
  backendEndpoint: setting(httpUrl, { env: "FLOWS_ENDPOINT" }),
  executor: setting(z.enum(FLOWS_EXECUTORS).default("docker"), { env: "FLOWS_EXECUTOR" }),
  mountsDir: setting(absolutePath.default("/var/lib/agentpools/flows-mounts"), {
    env: "FLOWS_DOCKER_MOUNTS_TEMPDIR",
  }),
  runtimeImage: setting(imageReference.default("node:24-alpine"), { env: "FLOWS_RUNTIME_IMAGE" }),
  gvisor: setting(z.boolean().default(true), { env: "FLOWS_GVISOR" }),
  extraDockerParams: setting(
    z
      .array(
        z.string().regex(DOCKER_EXTRA_PARAM_PATTERN, {
          error:
            "must be --NAME=VALUE with NAME one of add-host, dns, dns-search, dns-option, label, ulimit, cpus, memory, memory-swap, pids-limit, shm-size, tmpfs, and a VALUE without spaces, commas or control characters",
        }),
      )
      .default([]),
    { env: "FLOWS_DOCKER_EXTRA_PARAMS" },
  ),
  runtimePoolSize: setting(z.int().min(1).max(64).default(4), { env: "FLOWS_RUNTIME_POOL_SIZE" }),
  runtimeMemoryMb: setting(z.int().min(64).max(16384).default(256), { env: "FLOWS_RUNTIME_MEMORY_MB" }),
  /** Not in the reference: each runtime's scratch space, a tmpfs of this size (counted in its memory). */
  runtimeDiskMb: setting(z.int().min(1).max(65536).default(64), { env: "FLOWS_RUNTIME_DISK_MB" }),
  /**
   * Not in the reference: each runtime's open file limit (RLIMIT_NOFILE). Sockets and pipes hold kernel memory that
   * the memory watchdog does not see (a loopback TCP connection several MB): the number of them is what bounds it.
   */
  runtimeOpenFiles: setting(z.int().min(32).max(65536).default(64), { env: "FLOWS_RUNTIME_OPEN_FILES" }),
  /**
   * Not in the reference: "auto" takes the strongest this host allows (namespaces, then a user
   * of its own, then none, each step down logged as an error); a named level refuses to start
   * without it.
   */
  runtimeIsolation: setting(z.enum(RUNTIME_ISOLATIONS).default("auto"), { env: "FLOWS_RUNTIME_ISOLATION" }),
  /** Not in the reference: the uids runtimes run as, one each while it lives ("first-last"); never the agent's. */
  runtimeUids: setting(
    z
      .string()
      .regex(/^[1-9][0-9]{3,9}(-[1-9][0-9]{3,9})?$/, {
        error: 'must be a uid range "first-last" (or one uid) of 1000 or more',
      })
      .refine(
        (text) => {
          const [first, last = first] = text.split("-").map(Number);
          return first <= last && last < 2 ** 32 - 1 && !(first <= NOBODY && NOBODY <= last);
        },
        {
          error: "must run from a lower to a higher uid, below 4294967295, without 65534 (nobody, which daemons share)",
        },
      )
      .default("1900000000-1900000255"),
    { env: "FLOWS_RUNTIME_UIDS" },
  ),
  /** A run's timeout when the caller gives none. */
  defaultRunTimeout: setting(
    duration
      .refine((text) => durationMs(text) >= 1 && durationMs(text) <= FLOWS_MAX_RUN_TIMEOUT_MS, {
        error: `must be from 1ms to ${FLOWS_MAX_RUN_TIMEOUT_MS / 60_000}m`,
      })
      .default(FLOWS_RUN_TIMEOUT_DEFAULT),
    { env: "FLOWS_RUN_TIMEOUT" },
  ),
  registryMirror: setting(httpUrl.optional(), { env: "FLOWS_REGISTRY_MIRROR" }),
  /** The Docker network runtime containers join ("none" cuts them off entirely). */
  runtimeNetwork: setting(
    z
      .string()
      .regex(/^(?!host$)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, {
        error: 'must be a Docker network name other than "host"',
      })
      .default("bridge"),
    { env: "FLOWS_DOCKER_NETWORK" },
  ),
  ...proxySettings,
  metadataTags: setting(metadataTags, { env: "FLOWS_METADATA_", encoding: "map" }),
});

export type FlowsAgentSettings = z.output<typeof flowsAgentSettings>;

/** Settings only the Docker executor reads (a runtime container's image, runtime, flags, registry and network). */
export const DOCKER_ONLY_SETTINGS = [
  "runtimeImage",
  "gvisor",
  "extraDockerParams",
  "registryMirror",
  "runtimeNetwork",
] as const satisfies (keyof FlowsAgentSettings)[];

/**
 * A pool of the process executor refuses what it would ignore: a Docker-only setting other than its default (the user
 * meant it to apply). Also checked before anything exists, since a runtime needs one uid each and as many spare: a
 * uid range of fewer than twice runtimePoolSize uids (the process runtime would refuse to start).
 */
export function checkProcessExecutor(args: Omit<FlowsAgentSettings, "poolToken">, ctx: z.RefinementCtx): void {
  if (args.executor !== "process") return;
  for (const key of DOCKER_ONLY_SETTINGS) {
    const fallback = flowsAgentSettings.shape[key].parse(undefined);
    if (JSON.stringify(args[key]) !== JSON.stringify(fallback))
      ctx.addIssue({
        code: "custom",
        path: [key],
        input: args[key],
        message: 'is read by the Docker executor only: leave it out with executor "process"',
      });
  }
  const [first, last = first] = args.runtimeUids.split("-").map(Number);
  if (last - first + 1 < 2 * args.runtimePoolSize)
    ctx.addIssue({
      code: "custom",
      path: ["runtimeUids"],
      input: args.runtimeUids,
      message: `must hold at least twice runtimePoolSize (${args.runtimePoolSize}) uids: one per runtime and one per spare`,
    });
}
