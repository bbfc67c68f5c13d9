import type { RoleName } from "./roles";
import { VCS_VENDORS } from "./vcs-agent";
import { FLOWS_EXECUTORS } from "./flows-agent";

/**
 * What a runtime bundle serves. The full bundle (build/bundles/ROLE.js: Kubernetes, tests, by
 * hand) serves every setting. EC2's user-data, where every byte counts, gets a variant that
 * serves one platform and, where the role has them, one executor or one VCS vendor: the
 * component knows which from the pool's settings. scripts/bundle.mjs fixes BUILT_FOR to the
 * variant's values, the minifier leaves out the code they exclude, and the variant's settings
 * schema allows only its own executor or vendor, so a mismatch is a clear settings error.
 */
export interface BundleVariant {
  platform?: "ec2";
  executor?: (typeof FLOWS_EXECUTORS)[number];
  vendor?: (typeof VCS_VENDORS)[number];
}

/**
 * {} here, and in the full bundle: every path is open. (In a bundle this module is that one constant: no zod.)
 * Read its fields by name only (BUILT_FOR.executor): a dynamic read keeps the minifier from folding them.
 */
export const BUILT_FOR: BundleVariant = {};

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
