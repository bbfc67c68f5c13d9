import type { RoleName } from "../../agent/config/roles";
import { decodeToken } from "../../protocol/token";

/**
 * The shape a pool's credential has, checked where a component takes it, and never echoed:
 * the VCS agent's and the launcher's are tokens of this project's gateway ("ap1." and
 * base64url naming the gateway and the pool; a worker pool's also carries its certificate),
 * the Flows agent's is the pool's bare secret. A line break pasted along, or a token of
 * another pool kind, is refused here rather than by an agent at boot. Only the shape: the
 * secret inside is the gateway's to judge. Undefined when the credential looks right.
 */
export function poolTokenProblem(role: RoleName, key: string, token: string): string | undefined {
  const pasted = /\s/.test(token) ? "holds spaces or line breaks (pasted along with it?)" : undefined;
  if (role === "flows-agent" && key === "poolToken") {
    if (token.startsWith("ap1."))
      return "is an \"ap1.\" token, a VCS or worker pool's: a Flows pool's token is the bare secret its gateway printed";
    return pasted ?? (token.length < 16 ? "is shorter than any Flows pool token (16 characters or more)" : undefined);
  }
  if (key !== "token" || role === "flows-agent") return undefined;
  const expected = `the ${role === "launcher" ? "worker" : "VCS agent"} pool's token as the gateway printed it ("ap1." and base64url)`;
  if (pasted) return `${pasted}: give ${expected}`;
  let certificate: string | undefined;
  try {
    certificate = decodeToken(token).certificate;
  } catch (error) {
    // A gateway in plain http:// over a network: said as it is (the token's secret is not in it).
    return /its gateway .*/.exec((error as Error).message)?.[0] ?? `is not ${expected}`;
  }
  if (role === "launcher" && !certificate)
    return `is a VCS agent pool's token: a worker pool's token carries its certificate; give ${expected}`;
  if (role === "vcs-agent" && certificate)
    return `is a worker pool's token (it carries a certificate), which belongs to a WorkerPool; give ${expected}`;
  return undefined;
}
