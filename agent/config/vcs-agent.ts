import { z } from "zod";
import { STREAMS } from "../../protocol/vcs";
import { duration, metadataTags, proxySettings, regexSource, setting, httpUrl } from "./fields";

export const VCS_VENDORS = ["azure_devops", "gitlab", "bitbucket_datacenter", "github_enterprise"] as const;

/** The VCS agent's settings (reference 002, the flag and variable table). */
export const vcsAgentSettings = z.strictObject({
  token: setting(z.string().min(1, { error: "is required" }), {
    env: "SPACELIFT_VCS_AGENT_POOL_TOKEN",
    flag: "--token",
    secret: true,
  }),
  targetBaseEndpoint: setting(httpUrl, {
    env: "SPACELIFT_VCS_AGENT_TARGET_BASE_ENDPOINT",
    flag: "--target-base-endpoint",
  }),
  vendor: setting(z.enum(VCS_VENDORS), { env: "SPACELIFT_VCS_AGENT_VENDOR", flag: "--vendor" }),
  allowedProjects: setting(regexSource.default(".*"), {
    env: "SPACELIFT_VCS_AGENT_ALLOWED_PROJECTS",
    flag: "--allowed-projects",
    format: "regex",
  }),
  parallelism: setting(z.int().min(STREAMS.min).max(STREAMS.max).default(STREAMS.default), {
    env: "SPACELIFT_VCS_AGENT_PARALLELISM",
    flag: "--parallelism",
  }),
  /**
   * Not in the reference: how long the VCS may stay silent, before its answer or within a
   * body, before the request fails (504 when nothing was answered yet), so a hung VCS cannot
   * hold a client or a stream forever.
   */
  upstreamTimeout: setting(duration.default("2m"), { env: "AGENTPOOLS_VCS_UPSTREAM_TIMEOUT" }),
  debugPrintAll: setting(z.boolean().default(false), {
    env: "SPACELIFT_VCS_AGENT_DEBUG_PRINT_ALL",
    flag: "--debug-print-all",
  }),
  ...proxySettings,
  metadataTags: setting(metadataTags, { env: "SPACELIFT_METADATA_", encoding: "map" }),
});

export type VcsAgentSettings = z.output<typeof vcsAgentSettings>;
