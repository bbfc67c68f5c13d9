import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { checkProcessExecutor, flowsAgentSettings, RUNTIME_ISOLATIONS } from "../../agent/config/flows-agent";
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
  .superRefine((args, ctx) => {
    checkCoreRelations(args, ctx);
    checkProcessExecutor(args, ctx);
    // Uids others on an Amazon Linux instance may hold: its login users (1000-60000: ec2-user is 1000, the SSM agent
    // adds ssm-user at its first session, after the agent's start-up check), systemd's dynamic service users
    // (61184-65519), nobody, and ec2-user's subordinate uids (useradd gives it 100000-165535, for rootless
    // containers). A runtime under one could signal its processes and read its files.
    const [first, last = first] = args.runtimeUids.split("-").map(Number);
    if ((first <= 65535 && last >= 1000) || (first <= 165535 && last >= 100000))
      ctx.addIssue({
        code: "custom",
        path: ["runtimeUids"],
        input: args.runtimeUids,
        message:
          "must not overlap 1000-65535 (Amazon Linux's login users, ec2-user is 1000; systemd's dynamic users) or 100000-165535 (ec2-user's subordinate uids)",
      });
    // Flow code on the instance itself: only as uids the instance metadata service (the instance role, the pool's
    // secret) refuses, in bubblewrap's namespaces; a weaker level, or "auto" that may step down to one, is refused.
    if (args.executor === "process" && args.runtimeIsolation !== "namespaces") {
      ctx.addIssue({
        code: "custom",
        path: ["runtimeIsolation"],
        input: args.runtimeIsolation,
        message:
          'must be "namespaces" for the process executor on EC2: a weaker level runs flow code on the instance with less than a kernel sandbox between it and the agent, and "none" reaches the instance metadata service and, with the instance role, the pool\'s secret; the Docker executor (the default) runs each flow in its own container under gVisor',
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
  runtimeSandbox: parsed.executor === "process" ? { uids: parsed.runtimeUids } : undefined,
});

/** Flows agents that run flow blocks' and apps' JavaScript inside your network. */
export class FlowsAgentPool extends AgentPool {
  constructor(name: string, args: FlowsAgentPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super(
      "agentpools:aws:FlowsAgentPool",
      name,
      preparePool("FlowsAgentPool", "flows-agent", name, flowsAgentPoolArgs, args, flowsAgentPoolKind),
      opts,
    );
  }
}
