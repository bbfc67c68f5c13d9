import { flowsAgentSettings } from "./flows-agent";
import { launcherSettings } from "./launcher";
import { vcsAgentSettings } from "./vcs-agent";

export const ROLES = ["launcher", "vcs-agent", "flows-agent"] as const;
export type RoleName = (typeof ROLES)[number];

/** The one settings schema of each runtime role. */
export const roleSettings = {
  launcher: launcherSettings,
  "vcs-agent": vcsAgentSettings,
  "flows-agent": flowsAgentSettings,
} as const;
