import type { Role } from "../runtime/runtime";
import type { RoleName } from "../config/roles";

/**
 * A role whose agent is not in this build yet: the runtime still reads the configuration,
 * fetches the credentials and validates every setting, then stops with a clear error
 * instead of pretending to connect.
 */
export function unavailableRole(name: RoleName, issue: string): Role {
  return {
    name,
    start() {
      throw new Error(`the ${name} agent is not part of this build yet (tracked in ${issue}); its configuration is valid`);
    },
  };
}
