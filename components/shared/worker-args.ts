import type { z } from "zod";
import { durationMs } from "../../agent/config/fields";
import { runPolicy } from "../../agent/config/run-policy";
import { MAX_DRAIN_SECONDS } from "./pool-args";

/**
 * What the AWS and Kubernetes worker pools add to the launcher's settings, and check alike:
 * the run initialization policy given as an object (checked by the launcher's own schema)
 * and written where the launcher reads it, the Docker executor only, and a drain long enough
 * for a run to finish.
 */
export const RUN_INITIALIZATION_POLICY_FILE = "run-initialization-policy.json";

export const workerPoolExtras = {
  /** The policy itself; the pool writes it as JSON and points SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY at it. */
  runInitializationPolicy: runPolicy.optional(),
};

interface LauncherArgs {
  executor: string;
  runTimeout: string;
  drainTimeoutSeconds: number;
  runInitializationPolicy?: unknown;
  runInitializationPolicyFile?: string;
}

export function checkWorkerArgs(args: LauncherArgs, ctx: z.RefinementCtx): void {
  if (args.executor !== "docker") {
    const message =
      'must be "docker" in a pool: the process executor runs jobs beside the launcher, for development only';
    ctx.addIssue({ code: "custom", path: ["executor"], input: args.executor, message });
  }
  // A scale-in or a node drain stops the launcher after the drain: a run allowed to last longer would be killed.
  if (durationMs(args.runTimeout) / 1000 > args.drainTimeoutSeconds && args.drainTimeoutSeconds < MAX_DRAIN_SECONDS) {
    const message = `is shorter than runTimeout (${args.runTimeout}): a scale-in or node drain would kill a run that may still finish`;
    ctx.addIssue({ code: "custom", path: ["drainTimeoutSeconds"], input: args.drainTimeoutSeconds, message });
  }
  if (args.runInitializationPolicy !== undefined && args.runInitializationPolicyFile !== undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["runInitializationPolicyFile"],
      input: args.runInitializationPolicyFile,
      message:
        "give either runInitializationPolicy (the policy) or runInitializationPolicyFile (a path the launcher can read), not both",
    });
  }
}

/** A policy given as an object is read by the launcher from `path`. */
export function pointAtPolicy<T extends LauncherArgs>(args: T, path: string): T {
  return args.runInitializationPolicy === undefined ? args : { ...args, runInitializationPolicyFile: path };
}

export const policyFileContent = (policy: unknown) => JSON.stringify(policy, null, 1) + "\n";
