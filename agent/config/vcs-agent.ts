import { z } from "zod";
import { metadataTags, proxySettings, regexSource, setting, httpUrl } from "./fields";

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
  parallelism: setting(z.int().min(1).max(64).default(4), {
    env: "SPACELIFT_VCS_AGENT_PARALLELISM",
    flag: "--parallelism",
  }),
  debugPrintAll: setting(z.boolean().default(false), {
    env: "SPACELIFT_VCS_AGENT_DEBUG_PRINT_ALL",
    flag: "--debug-print-all",
  }),
  ...proxySettings,
  metadataTags: setting(metadataTags, { env: "SPACELIFT_METADATA_", encoding: "map" }),
});

export type VcsAgentSettings = z.output<typeof vcsAgentSettings>;
