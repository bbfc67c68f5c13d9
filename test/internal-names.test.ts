// The member names the bundles shorten beyond private ones (scripts/internal-names.mjs): a listed name that is also
// data stops the build, and the shipped bundles carry none of them.
import assert from "node:assert/strict";
import path from "node:path";
import { packageRoot, runtimeBundle } from "../components/shared/bundles";
import { EC2_VARIANTS, type BundleVariant } from "../agent/config/variants";
import type { RoleName } from "../agent/config/roles";

interface InternalNames {
  INTERNAL_MEMBERS: string[];
  internalMembers(root: string, reserved?: string[]): string[];
}
const load = async () => (await import(path.join(packageRoot(), "scripts", "internal-names.mjs"))) as InternalNames;

describe("bundles: internal member names", () => {
  it("none of the listed names is a quoted string of the runtime's sources; one that is a settings key stops the build", async () => {
    const { INTERNAL_MEMBERS, internalMembers } = await load();
    assert.deepEqual(internalMembers(packageRoot()), INTERNAL_MEMBERS);
    assert.throws(() => internalMembers(packageRoot(), ["token", "credentials"]), /credentials are data/);
  });

  it("the full bundles and every EC2 variant carry none of them as a member", async () => {
    const { INTERNAL_MEMBERS } = await load();
    for (const [role, variants] of Object.entries(EC2_VARIANTS) as [RoleName, BundleVariant[]][]) {
      for (const variant of [{}, ...variants]) {
        const code = runtimeBundle(role, variant);
        const left = INTERNAL_MEMBERS.filter((name) =>
          new RegExp(`(?:[.{,]|\\b(?:async|get) )${name}\\b(?!")`).test(code),
        );
        assert.deepEqual(left, [], `${role} ${JSON.stringify(variant)}`);
      }
    }
  });
});
