import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { flowsAgentSettings, RUNTIME_ISOLATIONS } from "../../agent/config/flows-agent";
import { AgentPool, preparePool } from "./agent-pool";
import { checkCoreRelations, poolCoreShape, type PoolPlacement } from "./pool-args";

/** Flows agents start Node.js runtimes all day: c7i.xlarge, as the reference module picks. */
export const flowsAgentPoolArgs = z
  .strictObject({
    ...flowsAgentSettings.omit({ poolToken: true }).shape,
    // On an instance, process runtimes get namespaces (the boot script installs bubblewrap): a
    // host without them must refuse to start rather than run them less isolated.
    runtimeIsolation: z.enum(RUNTIME_ISOLATIONS).default("namespaces"),
    ...poolCoreShape({ instanceType: "c7i.xlarge", rootVolumeSizeGiB: 30, drainTimeoutSeconds: 300 }),
  })
  .superRefine(checkCoreRelations);

export type FlowsAgentPoolArgs = z.input<typeof flowsAgentPoolArgs> &
  PoolPlacement & {
    /** FLOWS_AGENT_POOL_TOKEN: a Pulumi secret. Leave out when existingSecretArn holds it. */
    poolToken?: pulumi.Input<string>;
  };

/** Flows agents that run flow blocks' and apps' JavaScript inside your network. */
export class FlowsAgentPool extends AgentPool {
  constructor(name: string, args: FlowsAgentPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super(
      "agentpools:aws:FlowsAgentPool",
      name,
      preparePool("FlowsAgentPool", "flows-agent", name, flowsAgentPoolArgs, args, (parsed) => ({
        docker: parsed.executor === "docker",
        gvisor: parsed.executor === "docker" && parsed.gvisor,
        registryMirror: parsed.registryMirror,
        noProxy: parsed.noProxy,
        runtimeSandbox: parsed.executor === "process" ? { uids: parsed.runtimeUids } : undefined,
      })),
      opts,
    );
  }
}
