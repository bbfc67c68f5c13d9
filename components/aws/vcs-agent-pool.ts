import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { vcsAgentSettings } from "../../agent/config/vcs-agent";
import { AgentPool, preparePool } from "./agent-pool";
import { checkCoreRelations, poolCoreShape, type PoolPlacement } from "./pool-args";

/** A VCS agent is light: a small compute-optimized type is plenty. */
export const vcsAgentPoolArgs = z
  .strictObject({
    ...vcsAgentSettings.omit({ token: true }).shape,
    ...poolCoreShape({ instanceType: "c7i.large", rootVolumeSizeGiB: 20, drainTimeoutSeconds: 120 }),
  })
  .superRefine(checkCoreRelations);

export type VcsAgentPoolArgs = z.input<typeof vcsAgentPoolArgs> &
  PoolPlacement & {
    /** SPACELIFT_VCS_AGENT_POOL_TOKEN: a Pulumi secret. Leave out when existingSecretArn holds it. */
    token?: pulumi.Input<string>;
  };

/** What a VCS agent pool's instances get besides the common: nothing but its proxy exceptions. */
export const vcsAgentPoolKind = (parsed: z.output<typeof vcsAgentPoolArgs>) => ({
  docker: false,
  gvisor: false,
  noProxy: parsed.noProxy,
});

/** VCS agents that let the service reach a Git server only your network can see. */
export class VcsAgentPool extends AgentPool {
  constructor(name: string, args: VcsAgentPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super(
      "agentpools:aws:VcsAgentPool",
      name,
      preparePool("VcsAgentPool", "vcs-agent", name, vcsAgentPoolArgs, args, vcsAgentPoolKind),
      opts,
    );
  }
}
