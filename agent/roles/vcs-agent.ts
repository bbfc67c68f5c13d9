// Entry point of the vcs-agent runtime bundle (build/bundles/vcs-agent.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { unavailableRole } from "./pending";

void runRole(unavailableRole("vcs-agent", "issue #3"), settingsJsonSchema("vcs-agent"));
