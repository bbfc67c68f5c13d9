import type { RoleName } from "./roles";

/**
 * The file a component writes beside the runtime on each instance (AGENTPOOLS_CONFIG).
 * It holds only non-secret values: the role's settings, as the component's zod schema
 * checked them, and where to find the pool's AWS resources. Credentials come from Secrets Manager.
 */
export interface InstanceConfig {
  role: RoleName;
  /** The pool's name, for log lines. */
  pool: string;
  /**
   * Non-secret settings by name (the role's schema keys), with their types: an EC2 bundle takes them as they are,
   * without reading text or checking values again; a full bundle checks them, with its environment's variables over them.
   */
  settings: Record<string, unknown>;
  /** How long a drain may take before the runtime gives up and exits. */
  drainTimeoutSeconds: number;
  aws?: {
    /** Secrets Manager secret holding a JSON object of the secret variables. */
    secretArn: string;
    autoScalingGroupName: string;
    launchHookName: string;
    terminationHookName: string;
    /** How often a draining instance records a heartbeat on the termination hook: a third of the hook's timeout. */
    heartbeatSeconds: number;
    /** How often the runtime writes its metrics (agent/config/metrics.ts). */
    metricsSeconds: number;
    /** Disconnected from the gateway this long, the instance asks Auto Scaling to replace it. */
    unhealthyAfterSeconds: number;
    /** The longest one busy stretch keeps the instance protected from scale-in (a stuck agent lets go). */
    protectSeconds: number;
    /** How long protection stays on after the agent was last busy (0: lifted with its last run). */
    lingerSeconds: number;
    /** How often IMDS is asked whether the instance is being terminated, warmed or interrupted (LIFECYCLE_POLL_SECONDS if absent). */
    lifecyclePollSeconds?: number;
    /** How often scale-in protection is checked against the agent's work between its own changes (PROTECTION_POLL_SECONDS if absent). */
    protectionPollSeconds?: number;
  };
}

/**
 * The runtime's polls on AWS, when the configuration leaves them out (the components do: a
 * test sets them to milliseconds). IMDS answers on the instance itself; a termination is seen
 * within one poll, and the drain has the hook's timeout.
 */
export const LIFECYCLE_POLL_SECONDS = 5;
export const PROTECTION_POLL_SECONDS = 1;

/**
 * The termination hook's heartbeat timeout, for a drain of this length. AWS takes 30 to 7200
 * seconds; a draining runtime records a heartbeat every third of it, so a drain may outlast
 * it (up to 100 timeouts, or 48 hours), while an instance whose runtime is gone is let go
 * within ten minutes. The component sets the hook and the runtime renews it by this one rule.
 */
export const terminationHeartbeatTimeout = (drainTimeoutSeconds: number) => Math.min(drainTimeoutSeconds + 60, 600);

export const CONFIG_PATH_VARIABLE = "AGENTPOOLS_CONFIG";
