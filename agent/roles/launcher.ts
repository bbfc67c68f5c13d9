// Entry point of the launcher runtime bundle (build/bundles/launcher.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { launcherRole } from "../launcher/launcher";

void runRole(launcherRole(), settingsJsonSchema("launcher"));
