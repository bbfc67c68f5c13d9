// Entry point of the flows-agent runtime bundle (build/bundles/flows-agent.js). Runtimes start on the runner's own
// bundle where one lies beside it (flows-runner.js); else (EC2, whose user-data carries one bundle) on this file,
// with --flows-runner.
import { existsSync } from "node:fs";
import path from "node:path";
import { runRole } from "../runtime/runtime";
import { settingsJsonSchema } from "../config/settings-schema";
import { BUILT_FOR } from "../config/built-for";
import { FLOWS_RUNNER_FILE } from "../config/variants";
import { flowsAgentRole, type Runner } from "../flows-agent/agent";
import { runRunner } from "../flows-agent/runner";

if (process.argv.includes("--flows-runner")) {
  void runRunner();
} else {
  const bundle = process.argv[1];
  const own = BUILT_FOR.platform === "ec2" ? undefined : path.join(path.dirname(bundle), FLOWS_RUNNER_FILE);
  const runner: Runner =
    own && existsSync(own)
      ? { path: own, args: [], readable: [own] }
      : { path: bundle, args: ["--flows-runner"], readable: [bundle] };
  void runRole(flowsAgentRole(runner), settingsJsonSchema("flows-agent"));
}
