import type { FLOWS_EXECUTORS } from "./flows-agent";
import type { VCS_VENDORS } from "./vcs-agent";
import type { RoleName } from "./roles";

/**
 * What a runtime bundle serves. The full bundle (build/bundles/ROLE.js: Kubernetes, tests, by
 * hand) serves every setting. EC2's user-data, where every byte counts, gets a variant that
 * serves one platform and, where the role has them, one executor or one VCS vendor: the
 * component picks it by the arguments it renders the instance file from (variants.ts, pool-core.ts), so the two
 * always match. scripts/bundle.mjs fixes BUILT_FOR to the variant's values, and the minifier leaves out the code they
 * exclude.
 */
export interface BundleVariant {
  platform?: "ec2";
  executor?: (typeof FLOWS_EXECUTORS)[number];
  vendor?: (typeof VCS_VENDORS)[number];
}

/** A bundle is one role's (the Flows runtimes' own: the runner's): code only another role runs folds out of it. */
export type BuiltFor = BundleVariant & { role?: RoleName | "flows-runner" };

/**
 * {} here (unbundled): every path is open; a full bundle's names its role alone. Read its fields by name only
 * (BUILT_FOR.executor): a dynamic
 * read keeps the minifier from folding them. A module without imports (its types only), so the Flows runner, which
 * runs unbundled in tests under Node's permission model, reads this file alone.
 */
export const BUILT_FOR: BuiltFor = {};
