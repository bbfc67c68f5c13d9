// Entry point of the launcher runtime bundle (build/bundles/launcher.js).
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { unavailableRole } from "./pending";

void runRole(unavailableRole("launcher", "issue #5"), settingsJsonSchema("launcher"));
