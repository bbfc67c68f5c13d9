import type { RoleName } from "./roles";

/**
 * The file a component writes beside the runtime on each instance (AGENTPOOLS_CONFIG).
 * It holds only non-secret values: the role's settings as environment variables and
 * where to find the pool's AWS resources. Credentials come from Secrets Manager.
 */
export interface InstanceConfig {
  role: RoleName;
  /** The pool's name, for log lines. */
  pool: string;
  /** Non-secret settings, as the role's environment variables. */
  env: Record<string, string>;
  /** How long a drain may take before the runtime gives up and exits. */
  drainTimeoutSeconds: number;
  aws?: {
    /** Secrets Manager secret holding a JSON object of the secret variables. */
    secretArn: string;
    autoScalingGroupName: string;
    launchHookName: string;
    terminationHookName: string;
    logGroupName: string;
  };
}

export const CONFIG_PATH_VARIABLE = "AGENTPOOLS_CONFIG";
