import { z } from "zod";
import { httpUrl } from "../../agent/config/fields";
import { caBundleProblems } from "./ca-bundle";
import { hasUrlCredentials } from "./redact";

/**
 * The arguments every pool has on both platforms, checked alike: the AWS pools and the
 * Kubernetes workloads spread `sharedPoolShape` into their schemas (beside the role's own
 * settings from agent/config/), so a value one platform refuses the other refuses with the
 * same message. test/contract.test.ts holds both to it.
 */

/**
 * One or more PEM certificates, trusted by the agent (and, on instances, system-wide): each
 * parsed as X.509, text between them allowed (the cacert.pem layout), nothing else PEM, and
 * never echoed (components/shared/ca-bundle.ts).
 */
export const pemCertificates = z.string().superRefine((text, ctx) => {
  for (const message of caBundleProblems(text))
    ctx.addIssue({ code: "custom", message, input: `${Buffer.byteLength(text)} bytes of PEM` });
});

/** A proxy URL is rendered in plain configuration (user-data, a pod's spec): credentials in it would be readable there. */
// Read as a URL reads it (hasUrlCredentials): `http:///user:pass@host` has no "@" right after "//" but credentials all the same.
export const proxyWithoutCredentials = httpUrl.refine((url) => !hasUrlCredentials(url), {
  error: "must not contain credentials: they would be readable in the pool's configuration (user-data, the pod spec)",
});

/** The longest drain: an Auto Scaling lifecycle hook waits at most 7200 s, and a pod's grace period follows the same figure. */
export const MAX_DRAIN_SECONDS = 7200;

export function sharedPoolShape(defaults: { drainTimeoutSeconds: number }) {
  return {
    customCaCertificates: pemCertificates.optional(),
    /** How long an agent told to stop may finish its work before it is stopped. */
    drainTimeoutSeconds: z.int().min(30).max(MAX_DRAIN_SECONDS).default(defaults.drainTimeoutSeconds),
    httpsProxy: proxyWithoutCredentials.optional(),
  };
}
