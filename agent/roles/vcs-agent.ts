// Entry point of the vcs-agent runtime bundle (build/bundles/vcs-agent.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { parseFlags } from "../config/env";
import { BUILT_FOR } from "../config/built-for";
import { vcsAgentRole } from "../vcs-agent/agent";

// On EC2 the settings come from the instance's configuration file, never from flags.
void runRole(vcsAgentRole, settingsJsonSchema("vcs-agent"), {
  parseFlags: BUILT_FOR.platform === "ec2" ? undefined : parseFlags,
});
