import type { z } from "zod";
import { runPolicy } from "../../agent/config/run-policy";

/**
 * What the AWS and Kubernetes worker pools add to the launcher's settings, and check alike:
 * the run initialization policy given as an object (checked by the launcher's own schema)
 * and written where the launcher reads it, and the Docker executor only.
 */
export const RUN_INITIALIZATION_POLICY_FILE = "run-initialization-policy.json";

export const workerPoolExtras = {
  /** The policy itself; the pool writes it as JSON and points SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY at it. */
  runInitializationPolicy: runPolicy.optional(),
};

interface LauncherArgs {
  executor: string;
  runInitializationPolicy?: unknown;
  runInitializationPolicyFile?: string;
}

export function checkWorkerArgs(args: LauncherArgs, ctx: z.RefinementCtx, where: string): void {
  if (args.executor !== "docker") {
    ctx.addIssue({ code: "custom", path: ["executor"], input: args.executor, message: `must be "docker" ${where}: the process executor runs jobs beside the launcher, for development only` });
  }
  if (args.runInitializationPolicy !== undefined && args.runInitializationPolicyFile !== undefined) {
    ctx.addIssue({ code: "custom", path: ["runInitializationPolicyFile"], input: args.runInitializationPolicyFile, message: "give either runInitializationPolicy (the policy) or runInitializationPolicyFile (a path the launcher can read), not both" });
  }
}

/** A policy given as an object is read by the launcher from `path`. */
export function pointAtPolicy<T extends LauncherArgs>(args: T, path: string): T {
  return args.runInitializationPolicy === undefined ? args : { ...args, runInitializationPolicyFile: path };
}

export const policyFileContent = (policy: unknown) => JSON.stringify(policy, null, 1) + "\n";
