import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { launcherSettings } from "../../agent/config/launcher";
import { AgentPool, preparePool } from "./agent-pool";
import { checkCoreRelations, poolCoreShape, type PoolPlacement } from "./pool-args";
import { CONFIG_DIR } from "./userdata";
import {
  checkWorkerArgs,
  pointAtPolicy,
  policyFileContent,
  RUN_INITIALIZATION_POLICY_FILE,
  workerPoolExtras,
} from "../shared/worker-args";

export const RUN_INITIALIZATION_POLICY_PATH = `${CONFIG_DIR}/${RUN_INITIALIZATION_POLICY_FILE}`;

/** Runs are Terraform and friends in containers: memory matters more than burst. */
export const workerPoolArgs = z
  .strictObject({
    ...launcherSettings.omit({ token: true, poolPrivateKey: true }).shape,
    ...poolCoreShape({ instanceType: "m7i.large", rootVolumeSizeGiB: 50, drainTimeoutSeconds: 4500 }),
    ...workerPoolExtras,
  })
  .superRefine((args, ctx) => {
    checkCoreRelations(args, ctx);
    checkWorkerArgs(args, ctx);
    if (args.workerNetwork === "host") {
      ctx.addIssue({
        code: "custom",
        path: ["workerNetwork"],
        input: args.workerNetwork,
        message:
          'must not be "host" on EC2: a run on the host\'s network reaches the instance metadata service and, with the instance role, the pool\'s credentials; use "bridge" (the default) or a Docker network of your own',
      });
    }
  })
  .transform((args) => pointAtPolicy(args, RUN_INITIALIZATION_POLICY_PATH));

export type WorkerPoolArgs = z.input<typeof workerPoolArgs> &
  PoolPlacement & {
    /** SPACELIFT_TOKEN: a Pulumi secret. Leave out when existingSecretArn holds it. */
    token?: pulumi.Input<string>;
    /** SPACELIFT_POOL_PRIVATE_KEY (base64 of the key file): a Pulumi secret. */
    poolPrivateKey?: pulumi.Input<string>;
  };

/** What a worker pool's instances get besides the common: Docker, gVisor if asked, the run policy. */
export const workerPoolKind = (parsed: z.output<typeof workerPoolArgs>) => ({
  docker: true,
  gvisor: parsed.workerRuntime === "runsc",
  noProxy: parsed.noProxy,
  extraFiles: parsed.runInitializationPolicy
    ? [{ path: RUN_INITIALIZATION_POLICY_PATH, content: policyFileContent(parsed.runInitializationPolicy) }]
    : [],
});

/** Private workers: the launcher takes runs from the service and runs each in a container. */
export class WorkerPool extends AgentPool {
  constructor(name: string, args: WorkerPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super(
      "agentpools:aws:WorkerPool",
      name,
      preparePool("WorkerPool", "launcher", name, workerPoolArgs, args, workerPoolKind),
      opts,
    );
  }
}
