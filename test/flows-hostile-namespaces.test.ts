// The hostile corpus against the process executor, isolation "namespaces" (see flows-hostile.ts).
import { executorSuite, hostileRuns } from "./flows-hostile";

hostileRuns(0, (h) => executorSuite(h, "namespaces"));
