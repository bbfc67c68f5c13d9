// A runtime's entry when the agent runs unbundled (tests); the bundle uses its own file with --flows-runner.
import { runRunner } from "./runner";

void runRunner();
