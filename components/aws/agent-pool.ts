import * as pulumi from "@pulumi/pulumi";
import type { z } from "zod";
import { plainSettings } from "../../agent/config/env";
import type { RoleName } from "../../agent/config/roles";
import { settingsJsonSchema } from "../../agent/config/settings-schema";
import { validatePool, type PoolPlacement } from "./pool-args";
import {
  checkUserDataSize,
  configDelivery,
  createPool,
  type CoreArgs,
  type PoolOutputs,
  type PoolSpec,
} from "./pool-core";

type KindExtras = Omit<PoolSpec, "component" | "role" | "core" | "settings" | "secretEnv" | "vpcId" | "subnetIds">;

/**
 * Validate a pool's arguments and work out everything its resources need, including a
 * user-data size check, without creating anything. Throws on bad input.
 */
export function preparePool<S extends z.ZodType<CoreArgs>>(
  component: string,
  role: RoleName,
  name: string,
  schema: S,
  args: PoolPlacement,
  extras: (parsed: z.output<S>) => KindExtras,
): PoolSpec {
  const { args: parsed, secretEnv } = validatePool(component, name, role, schema, args);
  const spec: PoolSpec = {
    component,
    role,
    core: parsed,
    settings: plainSettings(settingsJsonSchema(role), parsed as Record<string, unknown>),
    secretEnv,
    vpcId: args.vpcId,
    subnetIds: args.subnetIds,
    ...extras(parsed),
  };
  spec.configDelivery = configDelivery(name, spec);
  checkUserDataSize(name, spec);
  return spec;
}

/** The common shape of the three AWS pools: an Auto Scaling group of agents and what it needs. */
export abstract class AgentPool extends pulumi.ComponentResource implements PoolOutputs {
  /** The Auto Scaling group running the agents. */
  readonly autoScalingGroupName: pulumi.Output<string>;
  /** The instance role (read the secret, write the logs, complete lifecycle actions). */
  readonly roleArn: pulumi.Output<string>;
  /** The Secrets Manager secret holding the agents' credentials. */
  readonly secretArn: pulumi.Output<string>;
  /** The CloudWatch log group the agents write to, one stream per instance. */
  readonly logGroupName: pulumi.Output<string>;
  /** The agents' security group: no inbound rules. */
  readonly securityGroupId: pulumi.Output<string>;
  readonly launchTemplateId: pulumi.Output<string>;
  /** The pool's CloudWatch dashboard: agents, busy share, demand, boot phases, errors, scaling. */
  readonly dashboardName: pulumi.Output<string>;

  protected constructor(type: string, name: string, spec: PoolSpec, opts?: pulumi.ComponentResourceOptions) {
    super(type, name, {}, opts);
    const outputs = createPool(this, name, spec);
    this.autoScalingGroupName = outputs.autoScalingGroupName;
    this.roleArn = outputs.roleArn;
    this.secretArn = outputs.secretArn;
    this.logGroupName = outputs.logGroupName;
    this.securityGroupId = outputs.securityGroupId;
    this.launchTemplateId = outputs.launchTemplateId;
    this.dashboardName = outputs.dashboardName;
    this.registerOutputs(outputs);
  }
}
