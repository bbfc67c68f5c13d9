// Prints the gzipped user-data size of each pool kind, with its default and its largest
// configuration (every argument set, at realistic lengths; its configuration files in the pool's SSM
// parameter when they do not fit, column "config"), against EC2's 16,384 bytes; and
// how many real CA certificates (each with its own RSA 2048 key, as corporate roots are) fit
// beside each: inline in user-data (the default delivery), or from an SSM parameter
// (customCaCertificatesDelivery "ssmParameter"), where user-data carries only the fetch.
// Run: npm run bench:userdata
import { gzipSync } from "node:zlib";
import { caCertificates } from "../devkit/certificates";
import { preparePool } from "../components/aws/agent-pool";
import { runtimeBundle } from "../components/shared/bundles";
import { ec2Variant } from "../agent/config/variants";
import { checkUserDataSize } from "../components/aws/pool-core";
import { packBundle, USER_DATA_BUDGET, USER_DATA_LIMIT, UserDataTooLargeError } from "../components/aws/userdata";
import { flowsAgentPoolArgs, flowsAgentPoolKind } from "../components/aws/flows-agent-pool";
import { vcsAgentPoolArgs, vcsAgentPoolKind } from "../components/aws/vcs-agent-pool";
import { workerPoolArgs, workerPoolKind } from "../components/aws/worker-pool";
import { LARGEST, flowsArgs, vcsArgs, workerArgs } from "../devkit/fixtures";

const kinds = [
  {
    component: "WorkerPool",
    role: "launcher",
    schema: workerPoolArgs,
    base: workerArgs(),
    largest: LARGEST.worker,
    kind: workerPoolKind,
  },
  {
    component: "VcsAgentPool",
    role: "vcs-agent",
    schema: vcsAgentPoolArgs,
    base: vcsArgs(),
    largest: LARGEST.vcs,
    kind: vcsAgentPoolKind,
  },
  {
    component: "FlowsAgentPool",
    role: "flows-agent",
    schema: flowsAgentPoolArgs,
    base: flowsArgs(),
    largest: LARGEST.flows,
    kind: flowsAgentPoolKind,
  },
  // The process executor's EC2 bundle carries the runtimes' sandbox instead of Docker's launcher.
  {
    component: "FlowsAgentPool",
    label: "FlowsAgentPool/p",
    role: "flows-agent",
    schema: flowsAgentPoolArgs,
    base: flowsArgs({ executor: "process" }),
    largest: LARGEST.flowsProcess,
    kind: flowsAgentPoolKind,
  },
] as const;

const BUDGET = USER_DATA_BUDGET;

const pad = (text: string | number, width: number) => String(text).padStart(width);
console.log(
  `user-data, gzipped bytes (limit ${USER_DATA_LIMIT}, budget ${BUDGET}: 75%); AWS identifiers at their longest; ` +
    `"of limit" and "headroom" (to the limit, and to the budget) for the larger of default and largest; ` +
    `"largest/SSM": the largest with its configuration in its parameter; bundle: the largest's EC2 variant`,
);
console.log(
  `${"component".padEnd(17)}${pad("bundle br (gz)", 16)}${pad("default", 9)}${pad("largest", 9)}${pad("of limit", 10)}${pad("headroom", 10)}${pad("to 75%", 8)}${pad("config", 8)}${pad("largest/SSM", 13)}${pad("real CAs inline: default / largest", 36)}${pad("from SSM: CAs / largest", 25)}`,
);
async function main(): Promise<void> {
  const certificates = await caCertificates(20);
  for (const k of kinds) {
    const prepare = (args: object) =>
      preparePool(k.component, k.role, "pool", k.schema as never, args as never, k.kind as never);
    const size = (args: object) => checkUserDataSize("pool", prepare(args));
    // Over the limit, the size it would have.
    const sizeOf = (args: object) => {
      try {
        return size(args);
      } catch (error) {
        if (error instanceof UserDataTooLargeError) return error.size;
        throw error;
      }
    };
    // The bundle the pool ships (its EC2 variant) as it travels: Brotli, as user-data carries it (gzip alone in brackets).
    const shipped = prepare(k.largest).core as { executor?: string; vendor?: string };
    const code = runtimeBundle(k.role, ec2Variant(k.role, shipped));
    const bundle = `${Buffer.from(packBundle(code), "base64").length} (${gzipSync(code, { level: 9 }).length})`;
    const largest = sizeOf(k.largest);
    const worst = Math.max(largest, size(k.base));
    // Where the largest configuration's files go: user-data, or the pool's config parameter when they do not fit.
    const delivery = prepare(k.largest).configDelivery === "ssmParameter" ? "SSM" : "inline";
    const largestFromParameter = checkUserDataSize("pool", { ...prepare(k.largest), configDelivery: "ssmParameter" });
    // The largest configuration with its certificates in SSM: user-data carries one fetch line, whatever they weigh.
    const fromSsm = sizeOf({ ...k.largest, customCaCertificatesDelivery: "ssmParameter" });
    const certificatesThatFit = (args: object, delivery = "userData") => {
      let bundleText = "";
      for (let count = 0; count < 20; count++) {
        bundleText += certificates[count];
        try {
          size({ ...args, customCaCertificates: bundleText, customCaCertificatesDelivery: delivery });
        } catch {
          return count;
        }
      }
      return 20;
    };
    console.log(
      `${("label" in k ? k.label : k.component).padEnd(17)}${pad(bundle, 16)}${pad(size(k.base), 9)}${pad(largest, 9)}${pad(((worst / USER_DATA_LIMIT) * 100).toFixed(1) + "%", 10)}${pad(USER_DATA_LIMIT - worst, 10)}${pad(BUDGET - worst, 8)}${pad(delivery, 8)}${pad(largestFromParameter, 13)}` +
        `${pad(`${certificatesThatFit(k.base)} / ${certificatesThatFit(k.largest)}`, 36)}${pad(`${certificatesThatFit(k.largest, "ssmParameter")} / ${fromSsm}`, 25)}`,
    );
  }
}

void main();
