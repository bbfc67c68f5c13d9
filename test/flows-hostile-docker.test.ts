// The hostile corpus against the Docker executor (a stand-in CLI) (see flows-hostile.ts).
import { executorSuite, hostileRuns } from "./flows-hostile";

hostileRuns(2, (h) => executorSuite(h, "docker"));
