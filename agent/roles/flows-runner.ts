// Entry point of the Flows runtime bundle (build/bundles/flows-runner.js): the runner alone, so a runtime starts
// without loading the agent's HTTP, TLS and AWS code it never uses (about half the CPU of a start). EC2's user-data
// carries one bundle per pool: there the Flows agent's own bundle is the runner (flows-agent.ts, --flows-runner).
import { runRunner } from "../flows-agent/runner";

void runRunner();
