// A burst as a CI system makes one: 50 `git clone`s at once through one VCS agent with its
// default settings (parallelism 4) and a gateway with its defaults (a 60 s queue of 1,000).
// Prints how many succeeded (git does not retry a 503: each failure is a failed job), the
// p50/p95 time to clone, and the p95 wait: the time to clone beyond an unloaded clone's.
// Run: npm run bench:burst [-- --clones 50]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { git, LocalVcs } from "../devkit/local-vcs";
import { percentile } from "../devkit/helpers";
import { cloneSeconds, startVcsPath } from "./vcs-processes";

const CLONES = Number(process.argv[process.argv.indexOf("--clones") + 1] || 50) || 50;

async function main(): Promise<void> {
  const root = mkdtempSync(path.join(tmpdir(), "agentpools-bench-burst-"));
  // A small repository with some history, as an infrastructure repository is.
  const repositories = new LocalVcs(root);
  repositories.createRepository("bench/infra.git", {
    "main.tf": 'resource "null_resource" "a" {}\n',
    "modules/vpc/main.tf": "# vpc\n",
  });
  for (let i = 0; i < 20; i++)
    repositories.commit("bench/infra.git", { [`env/${i}.tfvars`]: `region = "eu-west-${i % 3}"\n` }, `change ${i}`);
  git(["-C", path.join(root, "bench/infra.git"), "repack", "-a", "-d", "--quiet"]);
  const stack = await startVcsPath(root);
  try {
    const url = `${stack.gatewayBase}/bench/infra.git`;
    const alone: number[] = [];
    for (let i = 0; i < 5; i++) alone.push(await cloneSeconds(url, stack.service.key));
    const unloaded = percentile(alone, 50);
    const started = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: CLONES }, () =>
        cloneSeconds(url, stack.service.key).then(
          (seconds) => ({ ok: true, seconds }),
          (error: Error) => ({ ok: false, seconds: NaN, error: error.message }),
        ),
      ),
    );
    const wall = (performance.now() - started) / 1000;
    const done = outcomes.filter((o) => o.ok).map((o) => o.seconds);
    const waits = done.map((seconds) => Math.max(0, seconds - unloaded));
    const ms = (seconds: number) => `${(seconds * 1000).toFixed(0)} ms`;
    console.log(`\n${CLONES} concurrent git clones through one default agent (parallelism 4) and a default gateway:`);
    console.log(`  succeeded ${done.length} of ${CLONES}   (all in ${wall.toFixed(1)} s)`);
    if (done.length > 0)
      console.log(
        `  time to clone p50 ${ms(percentile(done, 50))}, p95 ${ms(percentile(done, 95))}; an unloaded clone ${ms(unloaded)}`,
      );
    if (done.length > 0)
      console.log(
        `  wait beyond an unloaded clone: p50 ${ms(percentile(waits, 50))}, p95 ${ms(percentile(waits, 95))}`,
      );
    const failures = outcomes.filter((o) => !o.ok) as { error: string }[];
    if (failures.length > 0)
      console.log(
        `  failures: ${[...new Set(failures.map((f) => f.error.split("\n").find((l) => /fatal|error/i.test(l)) ?? f.error))].join("; ")}`,
      );
  } finally {
    stack.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
