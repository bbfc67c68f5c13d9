import type { RoleName } from "./roles";
import { VCS_VENDORS } from "./vcs-agent";
import { FLOWS_EXECUTORS } from "./flows-agent";
import type { BundleVariant } from "./built-for";

export type { BundleVariant } from "./built-for";

/** The EC2 variants of each role. A worker pool runs the Docker executor only. */
export const EC2_VARIANTS: Record<RoleName, BundleVariant[]> = {
  launcher: [{ platform: "ec2", executor: "docker" }],
  "vcs-agent": VCS_VENDORS.map((vendor) => ({ platform: "ec2", vendor })),
  "flows-agent": FLOWS_EXECUTORS.map((executor) => ({ platform: "ec2", executor })),
};

/** The bundle's file name in build/bundles/: ROLE.js, or ROLE.ec2-VALUE.js for a variant. */
/** The Flows runtimes' own bundle (the runner alone), beside the flows-agent's full bundle where it is shipped. */
export const FLOWS_RUNNER_FILE = "flows-runner.js";

export const bundleFile = (role: RoleName, variant: BundleVariant = {}) =>
  [role, [variant.platform, variant.executor, variant.vendor].filter(Boolean).join("-"), "js"]
    .filter(Boolean)
    .join(".");

/** The EC2 variant that serves these (validated) settings; the executor is Docker unless they say otherwise. */
export function ec2Variant(role: RoleName, settings: { executor?: string; vendor?: string }): BundleVariant {
  const { executor = "docker", vendor } = settings;
  const variant = EC2_VARIANTS[role].find(
    (v) => (!v.executor || v.executor === executor) && (!v.vendor || v.vendor === vendor),
  );
  if (!variant) throw new Error(`no EC2 bundle of the ${role} serves executor ${settings.executor}`);
  return variant;
}
