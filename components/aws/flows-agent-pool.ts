import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { flowsAgentSettings } from "../../agent/config/flows-agent";
import { AgentPool, preparePool } from "./agent-pool";
import { checkCoreRelations, poolCoreShape, type PoolPlacement } from "./pool-args";

/** Flows agents start Node.js runtimes all day: c7i.xlarge, as the reference module picks. */
export const flowsAgentPoolArgs = z
  .strictObject({
    ...flowsAgentSettings.omit({ poolToken: true }).shape,
    ...poolCoreShape({ instanceType: "c7i.xlarge", rootVolumeSizeGiB: 30, drainTimeoutSeconds: 300 }),
  })
  .superRefine((args, ctx) => {
    checkCoreRelations(args, ctx);
    if (args.executor === "process") {
      ctx.addIssue({
        code: "custom",
        path: ["executor"],
        input: args.executor,
        message: 'must be "docker" on EC2: the process executor runs flow code on the instance itself, where it reaches the instance metadata service and, with the instance role, the pool\'s secret; the Docker executor runs each flow in its own container under gVisor',
      });
    }
  });

export type FlowsAgentPoolArgs = z.input<typeof flowsAgentPoolArgs> &
  PoolPlacement & {
    /** FLOWS_AGENT_POOL_TOKEN: a Pulumi secret. Leave out when existingSecretArn holds it. */
    poolToken?: pulumi.Input<string>;
  };

/** What a Flows pool's instances get besides the common: Docker, gVisor unless turned off, the mirror. */
export const flowsAgentPoolKind = (parsed: z.output<typeof flowsAgentPoolArgs>) => ({
  docker: parsed.executor === "docker",
  gvisor: parsed.executor === "docker" && parsed.gvisor,
  registryMirror: parsed.registryMirror,
  noProxy: parsed.noProxy,
});

/** Flows agents that run flow blocks' and apps' JavaScript inside your network. */
export class FlowsAgentPool extends AgentPool {
  constructor(name: string, args: FlowsAgentPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super("agentpools:aws:FlowsAgentPool", name, preparePool("FlowsAgentPool", "flows-agent", name, flowsAgentPoolArgs, args, flowsAgentPoolKind), opts);
  }
}
