import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { checkProcessExecutor, flowsAgentSettings, RUNTIME_ISOLATIONS } from "../../agent/config/flows-agent";
import { KubernetesAgent, type PodSecurityLevel, validateWorkload, workloadShape } from "./workload";

export const kubernetesFlowsAgentArgs = z
  .strictObject({
    ...flowsAgentSettings.omit({ poolToken: true }).shape,
    // In a pod there is no Docker engine to start sibling containers: each runtime is a
    // separate Node.js process in the pod, under the process executor's limits.
    executor: z
      .literal("process", {
        error:
          'must be "process" on Kubernetes: the Docker executor needs a Docker engine (use the AWS FlowsAgentPool for gVisor-sandboxed containers)',
      })
      .default("process"),
    // Each runtime under a uid of its own; a pod at the baseline level cannot create the user
    // namespaces bubblewrap needs, and one that could not switch users must refuse to start.
    runtimeIsolation: z.enum(RUNTIME_ISOLATIONS).default("user"),
    ...workloadShape("flows-agent", {
      replicas: 2,
      resources: { requests: { cpu: "500m", memory: "512Mi" }, limits: { memory: "2Gi" } },
      drainTimeoutSeconds: 300,
    }),
  })
  // A pod's runtimes are processes: the Docker executor's settings would be ignored, so they are refused, as on EC2.
  .superRefine(checkProcessExecutor);

export type KubernetesFlowsAgentArgs = z.input<typeof kubernetesFlowsAgentArgs> & {
  /** FLOWS_AGENT_POOL_TOKEN: a Pulumi secret. Leave out with existingSecret. */
  poolToken?: pulumi.Input<string>;
};

/** Flows agents as a Deployment: user code runs in separate processes inside each pod. */
export class KubernetesFlowsAgent extends KubernetesAgent {
  /** The Pod Security Standard level its pods meet: its namespace may enforce no stricter one. */
  static readonly podSecurityLevel: PodSecurityLevel = "baseline";

  constructor(name: string, args: KubernetesFlowsAgentArgs, opts?: pulumi.ComponentResourceOptions) {
    const {
      args: parsed,
      secretEnv,
      settingsEnv,
    } = validateWorkload("kubernetes.FlowsAgent", name, "flows-agent", kubernetesFlowsAgentArgs, args);
    super(
      "agentpools:kubernetes:FlowsAgent",
      name,
      {
        component: "FlowsAgent",
        role: "flows-agent",
        podSecurityLevel: KubernetesFlowsAgent.podSecurityLevel,
        args: parsed,
        settingsEnv,
        secretEnv,
        // Flow code reaches private resources on any port: egress ports stay open unless narrowed.
        egressPorts: undefined,
        // Root with CAP_SETUID, CAP_SETGID and CAP_KILL only (no file access beyond its own), so each runtime runs
        // as a uid of its own and the agent can end it: the baseline level, not restricted.
        agentUser: {
          runAsNonRoot: false,
          runAsUser: 0,
          runAsGroup: 0,
          capabilities: { drop: ["ALL"], add: ["SETUID", "SETGID", "KILL"] },
        },
        // A SysV shared memory segment goes once no process has it attached: a runtime leaves none behind in the pod.
        sysctls: [{ name: "kernel.shm_rmid_forced", value: "1" }],
        tmp: false,
        extraVolumes: [{ name: "runtimes", emptyDir: { sizeLimit: "2Gi" } }],
        extraMounts: [{ name: "runtimes", mountPath: parsed.mountsDir }],
      },
      opts,
    );
  }
}
