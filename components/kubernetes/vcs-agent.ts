import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { vcsAgentSettings } from "../../agent/config/vcs-agent";
import { KubernetesAgent, type PodSecurityLevel, portOf, validateWorkload, workloadShape } from "./workload";

export const kubernetesVcsAgentArgs = z.strictObject({
  ...vcsAgentSettings.omit({ token: true }).shape,
  ...workloadShape("vcs-agent", {
    replicas: 2,
    resources: { requests: { cpu: "100m", memory: "96Mi" }, limits: { memory: "192Mi" } },
    drainTimeoutSeconds: 60,
  }),
});

export type KubernetesVcsAgentArgs = z.input<typeof kubernetesVcsAgentArgs> & {
  /** SPACELIFT_VCS_AGENT_POOL_TOKEN: a Pulumi secret. Leave out with existingSecret. */
  token?: pulumi.Input<string>;
};

/** VCS agents as a Deployment in a cluster you already have. */
export class KubernetesVcsAgent extends KubernetesAgent {
  /** The Pod Security Standard level its pods meet: its namespace may enforce no stricter one. */
  static readonly podSecurityLevel: PodSecurityLevel = "restricted";

  constructor(name: string, args: KubernetesVcsAgentArgs, opts?: pulumi.ComponentResourceOptions) {
    const {
      args: parsed,
      secretEnv,
      settingsEnv,
    } = validateWorkload("kubernetes.VcsAgent", name, "vcs-agent", kubernetesVcsAgentArgs, args);
    // The gateway (HTTPS, named in the token) and the VCS; the proxy when there is one.
    const egressPorts = [
      ...new Set([443, portOf(parsed.targetBaseEndpoint), ...(parsed.httpsProxy ? [portOf(parsed.httpsProxy)] : [])]),
    ];
    super(
      "agentpools:kubernetes:VcsAgent",
      name,
      {
        component: "VcsAgent",
        role: "vcs-agent",
        podSecurityLevel: KubernetesVcsAgent.podSecurityLevel,
        args: parsed,
        settingsEnv,
        secretEnv,
        egressPorts,
      },
      opts,
    );
  }
}
