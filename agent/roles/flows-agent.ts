// Entry point of the flows-agent runtime bundle (build/bundles/flows-agent.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { unavailableRole } from "./pending";

void runRole(unavailableRole("flows-agent", "issue #4"), settingsJsonSchema("flows-agent"));
