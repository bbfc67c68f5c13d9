// Entry point of the vcs-agent runtime bundle (build/bundles/vcs-agent.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { parseFlags } from "../config/env";
import { vcsAgentRole } from "../vcs-agent/agent";

void runRole(vcsAgentRole, settingsJsonSchema("vcs-agent"), { parseFlags });
