// The hostile corpus against the process executor, isolation "user" (see flows-hostile.ts).
import { executorSuite, hostileRuns } from "./flows-hostile";

hostileRuns(1, (h) => executorSuite(h, "user"));
