// Loaded first by mocha (.mocharc.json): each test process reuses V8's compiled code of the
// modules it loads (Pulumi's providers are large) from the last run, kept in Node's cache
// under the temporary directory, instead of compiling them again. This process only: the
// agents and runtimes the tests start compile their code as they would on an instance.
import { enableCompileCache } from "node:module";

enableCompileCache();
