// Entry point of the flows-agent runtime bundle (build/bundles/flows-agent.js). The same
// file is each runtime's entry when started with --flows-runner.
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { flowsAgentRole } from "../flows-agent/agent";
import { runRunner } from "../flows-agent/runner";

if (process.argv.includes("--flows-runner")) {
  void runRunner();
} else {
  const bundle = process.argv[1];
  void runRole(
    flowsAgentRole({ path: bundle, args: ["--flows-runner"], readable: [bundle] }),
    settingsJsonSchema("flows-agent"),
  );
}
