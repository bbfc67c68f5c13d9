import { createHash } from "node:crypto";
import { brotliCompressSync, brotliDecompressSync, constants, gunzipSync, gzipSync } from "node:zlib";
import type { InstanceConfig } from "../../agent/config/instance";
import type { RoleName } from "../../agent/config/roles";
import { RUNTIME_NODE_FLAGS } from "../shared/bundles";

/** EC2's limit on user-data, applied to the gzipped bytes before base64. */
export const USER_DATA_LIMIT = 16_384;

export const INSTALL_DIR = "/opt/agentpools";
export const CONFIG_DIR = "/etc/agentpools";
export const CA_BUNDLE_PATH = "/etc/pki/ca-trust/source/anchors/agentpools.pem";


export interface UserDataFile {
  path: string;
  content: string;
  permissions: string;
  /** cloud-init's write_files encoding: "b64" for binary content. */
  encoding?: "b64";
}

export interface UserDataSpec {
  /** The pool's name, for error messages. */
  pool: string;
  role: RoleName;
  /** The role's bundled runtime (build/bundles/<role>.js). */
  bundle: string;
  /** The non-secret instance configuration the runtime reads at start. */
  config: InstanceConfig;
  nodeMajor: number;
  /** Install and start Docker (the launcher, the Flows Docker executor). */
  docker: boolean;
  /** Install gVisor's runsc and register it with Docker as "runsc". */
  gvisor: boolean;
  registryMirror?: string;
  /** PEM certificates to trust, system-wide and in Node, carried in user-data... */
  caCertificates?: string;
  /** ...or read at boot from this SSM parameter (String) with the instance role. */
  caCertificatesParameter?: { name: string; region: string };
  /** Proxy for dnf, Docker and the runtime's own connections. */
  httpsProxy?: string;
  noProxy?: string;
  /** Further files, such as a run initialization policy. */
  extraFiles?: UserDataFile[];
  /** systemd's stop timeout: the drain plus a margin. */
  stopTimeoutSeconds: number;
  /**
   * Flows runtimes as processes (the process executor): bubblewrap and setpriv installed, the
   * agent given CAP_SETUID and CAP_SETGID (to start each runtime under one of these uids), and
   * those uids kept from the instance metadata service (its credentials are the pool's).
   */
  runtimeSandbox?: { uids: string };
}

export class UserDataTooLargeError extends Error {
  constructor(
    readonly pool: string,
    readonly size: number,
  ) {
    super(`pool "${pool}": user-data is ${size} bytes gzipped, over EC2's limit of ${USER_DATA_LIMIT}; shorten the configuration (policies and custom CA certificates count in full; customCaCertificatesDelivery "ssmParameter" takes the certificates out of user-data)`);
    this.name = "UserDataTooLargeError";
  }
}

const shellQuote = (text: string) => `'${text.replace(/'/g, `'"'"'`)}'`;
const trustsCustomCas = (spec: UserDataSpec) => Boolean(spec.caCertificates || spec.caCertificatesParameter);
/** One `Environment=` assignment, quoted for systemd (and % escaped, which systemd expands). */
const systemdEnv = (name: string, value: string) => `Environment="${`${name}=${value}`.replace(/[\\"]/g, "\\$&").replace(/%/g, "%%")}"`;

export const unitName = (role: RoleName) => `agentpools-${role}.service`;
export const configPath = (role: RoleName) => `${CONFIG_DIR}/${role}.json`;
export const bundlePath = (role: RoleName) => `${INSTALL_DIR}/${role}.js`;

/**
 * The bundle travels Brotli-compressed (about 10% smaller than inside gzip alone: the margin
 * that keeps the largest pools under the 16 KB limit) and the boot script unpacks it with
 * the Node.js it has just installed. Deterministic: the same bundle gives the same bytes.
 */
export const packBundle = (bundle: string) =>
  brotliCompressSync(Buffer.from(bundle, "utf8"), { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_LGWIN]: 22 } }).toString("base64");
const unpackCommand = (spec: Pick<UserDataSpec, "nodeMajor" | "role">) =>
  `/usr/bin/node-${spec.nodeMajor} -e 'const fs=require("fs");fs.writeFileSync(process.argv[2],require("zlib").brotliDecompressSync(fs.readFileSync(process.argv[1])))' ${bundlePath(spec.role)}.br ${bundlePath(spec.role)}`;

/** The systemd unit: restart on failure, SIGTERM to stop, time enough to drain, and a narrow sandbox. */
export function renderUnit(spec: UserDataSpec): string {
  const noProxy = spec.httpsProxy ? [spec.noProxy, "169.254.169.254"].filter(Boolean).join(",") : undefined;
  return [
    "[Unit]",
    `Description=agentpools ${spec.role} for pool ${spec.pool}`,
    "Wants=network-online.target",
    `After=network-online.target${spec.docker ? " docker.service" : ""}`,
    ...(spec.docker ? ["Requires=docker.service"] : []),
    "",
    "[Service]",
    "User=agentpools",
    "Group=agentpools",
    // Access to the Docker socket is root-equivalent: only roles that start containers get it.
    ...(spec.docker ? ["SupplementaryGroups=docker"] : []),
    systemdEnv("AGENTPOOLS_CONFIG", configPath(spec.role)),
    ...(trustsCustomCas(spec) ? [systemdEnv("NODE_EXTRA_CA_CERTS", CA_BUNDLE_PATH)] : []),
    ...(spec.httpsProxy ? [systemdEnv("NODE_USE_ENV_PROXY", "1"), systemdEnv("HTTPS_PROXY", spec.httpsProxy), systemdEnv("NO_PROXY", noProxy as string)] : []),
    // "+": with full privileges, before the agent, whatever state the instance was rebooted into.
    ...(spec.runtimeSandbox ? [`ExecStartPre=+/usr/sbin/nft -f ${IMDS_RULES_PATH}`] : []),
    `ExecStart=/usr/bin/node-${spec.nodeMajor} ${[...RUNTIME_NODE_FLAGS, bundlePath(spec.role)].join(" ")}`,
    "Restart=on-failure",
    "RestartSec=5",
    "KillMode=mixed",
    "KillSignal=SIGTERM",
    `TimeoutStopSec=${spec.stopTimeoutSeconds}`,
    "StateDirectory=agentpools",
    "NoNewPrivileges=true",
    "ProtectSystem=strict",
    "ProtectHome=true",
    "PrivateTmp=true",
    "PrivateDevices=true",
    "ProtectKernelTunables=true",
    "ProtectKernelModules=true",
    "ProtectControlGroups=true",
    "RestrictSUIDSGID=true",
    // The two capabilities a runtime's own uid takes (ambient: the agent is not root), and no other.
    ...(spec.runtimeSandbox ? ["AmbientCapabilities=CAP_SETUID CAP_SETGID", "CapabilityBoundingSet=CAP_SETUID CAP_SETGID"] : []),
    "",
    "[Install]",
    "WantedBy=multi-user.target",
    "",
  ].join("\n");
}

export const IMDS_RULES_PATH = `${CONFIG_DIR}/runtimes.nft`;

/**
 * nftables rules that refuse the instance metadata service (IPv4 and IPv6) to the runtimes'
 * uids: a runtime shares the instance's network, and the service would give it the instance
 * role's credentials, which read the pool's secret. Re-applied on every start (create, delete,
 * create: idempotent).
 */
export const imdsRules = (uids: string) =>
  `table inet agentpools\ndelete table inet agentpools\ntable inet agentpools {\n chain output {\n  type filter hook output priority 0;\n  meta skuid ${uids} ip daddr 169.254.169.254 reject\n  meta skuid ${uids} ip6 daddr fd00:ec2::254 reject\n }\n}\n`;

/** Docker's daemon.json: gVisor's runtime, the registry mirror and the proxy. */
export function renderDockerDaemonConfig(spec: UserDataSpec): string | undefined {
  if (!spec.docker) return undefined;
  const config: Record<string, unknown> = { "log-driver": "journald", "live-restore": true };
  if (spec.gvisor) config.runtimes = { runsc: { path: "/usr/local/bin/runsc" } };
  if (spec.registryMirror) config["registry-mirrors"] = [spec.registryMirror];
  if (spec.httpsProxy) config.proxies = { "https-proxy": spec.httpsProxy, ...(spec.noProxy ? { "no-proxy": spec.noProxy } : {}) };
  return JSON.stringify(config, null, 2) + "\n";
}

/** The files cloud-init writes before the script runs. */
export function renderFiles(spec: UserDataSpec): UserDataFile[] {
  const files: UserDataFile[] = [
    { path: `${bundlePath(spec.role)}.br`, content: packBundle(spec.bundle), permissions: "0644", encoding: "b64" },
    { path: configPath(spec.role), content: JSON.stringify(spec.config, null, 1) + "\n", permissions: "0644" },
    { path: `/etc/systemd/system/${unitName(spec.role)}`, content: renderUnit(spec), permissions: "0644" },
  ];
  const daemon = renderDockerDaemonConfig(spec);
  if (daemon) files.push({ path: "/etc/docker/daemon.json", content: daemon, permissions: "0644" });
  if (spec.caCertificates) files.push({ path: CA_BUNDLE_PATH, content: spec.caCertificates, permissions: "0644" });
  if (spec.runtimeSandbox) files.push({ path: IMDS_RULES_PATH, content: imdsRules(spec.runtimeSandbox.uids), permissions: "0644" });
  return [...files, ...(spec.extraFiles ?? [])];
}

/**
 * Trust the custom CAs before anything goes out: dnf and Docker may pass a TLS-inspecting
 * proxy. A parameter is read with the AWS CLI that Amazon Linux 2023 ships, straight to SSM
 * (no proxy, no custom CA yet): the VPC needs an ssm endpoint or a direct route.
 */
function caTrustCommands(spec: UserDataSpec): string[] {
  if (!trustsCustomCas(spec)) return [];
  const parameter = spec.caCertificatesParameter;
  return [
    ...(parameter
      ? [`aws ssm get-parameter --region ${shellQuote(parameter.region)} --name ${shellQuote(parameter.name)} --query Parameter.Value --output text > ${CA_BUNDLE_PATH}`]
      : []),
    "update-ca-trust extract",
  ];
}

/** The boot script: CA trust, packages, the service user, gVisor, then the service. */
export function renderScript(spec: UserDataSpec): string {
  const packages = [`nodejs${spec.nodeMajor}`, ...(spec.docker ? ["docker"] : []), ...(spec.runtimeSandbox ? ["bubblewrap", "util-linux", "nftables"] : [])];
  const lines = [
    "#!/bin/bash",
    `# agentpools: prepare this instance for the ${spec.role} of pool ${spec.pool} and start it.`,
    "set -euo pipefail",
    ...caTrustCommands(spec),
    ...(spec.httpsProxy ? [`echo proxy=${shellQuote(spec.httpsProxy)} >> /etc/dnf/dnf.conf`] : []),
    `dnf install -y ${packages.join(" ")}`,
    unpackCommand(spec),
    "id agentpools >/dev/null 2>&1 || useradd --system --home-dir /var/lib/agentpools --shell /sbin/nologin agentpools",
  ];
  if (spec.gvisor) {
    lines.push(
      "# gVisor is not packaged for Amazon Linux: fetch the release binary and check its digest.",
      `runsc_url="https://storage.googleapis.com/gvisor/releases/release/latest/$(uname -m)"`,
      "tmp=$(mktemp -d) && cd \"$tmp\"",
      `curl -fsSL${spec.httpsProxy ? ` --proxy ${shellQuote(spec.httpsProxy)}` : ""} -O "$runsc_url/runsc" -O "$runsc_url/runsc.sha512"`,
      "sha512sum -c runsc.sha512",
      "install -m 0755 runsc /usr/local/bin/runsc",
      "cd / && rm -rf \"$tmp\"",
    );
  }
  if (spec.docker) lines.push("systemctl enable --now docker");
  lines.push("systemctl daemon-reload", `systemctl enable --now ${unitName(spec.role)}`, "");
  return lines.join("\n");
}

/**
 * Render a pool's user-data: cloud-init multipart content (a cloud-config that writes the
 * files, then a shell script), gzipped. Pure and deterministic: the same spec gives the
 * same bytes, so an unchanged stack makes no new launch template version.
 */
export function renderUserData(spec: UserDataSpec): Buffer {
  // JSON is YAML, and cloud-init reads it as such; it needs no YAML library to write or read back.
  const cloudConfig = "#cloud-config\n" + JSON.stringify({ write_files: renderFiles(spec).map((f) => ({ ...f, owner: "root:root" })) });
  const parts = [
    { contentType: "text/cloud-config", body: cloudConfig },
    { contentType: "text/x-shellscript", body: renderScript(spec) },
  ];
  const boundary = "agentpools-" + createHash("sha256").update(parts.map((p) => p.body).join("\0")).digest("hex").slice(0, 32);
  const mime = [
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    "MIME-Version: 1.0",
    "",
    ...parts.flatMap((part) => [
      `--${boundary}`,
      `Content-Type: ${part.contentType}; charset="us-ascii"`,
      "MIME-Version: 1.0",
      "Content-Transfer-Encoding: 7bit",
      "",
      part.body,
    ]),
    `--${boundary}--`,
    "",
  ].join("\n");

  const gzipped = gzipSync(Buffer.from(mime, "utf8"), { level: 9 });
  gzipped[9] = 3; // the header's OS byte: always "Unix", so a stack rendered on macOS gives the same bytes
  if (gzipped.length > USER_DATA_LIMIT) throw new UserDataTooLargeError(spec.pool, gzipped.length);
  return gzipped;
}

export interface DecodedUserData {
  parts: { contentType: string; body: string }[];
  files: Map<string, UserDataFile>;
  script: string;
}

/** Read rendered user-data back (gunzip, split the multipart, parse the cloud-config). */
export function decodeUserData(data: Buffer | string): DecodedUserData {
  const text = gunzipSync(typeof data === "string" ? Buffer.from(data, "base64") : data).toString("utf8");
  const boundary = /boundary="([^"]+)"/.exec(text)?.[1];
  if (!boundary) throw new Error("user-data is not multipart");
  const parts = text
    .split(`\n--${boundary}`)
    .slice(1)
    .filter((chunk) => !chunk.startsWith("--"))
    .map((chunk) => {
      const split = chunk.indexOf("\n\n");
      return { contentType: /Content-Type: ([^;\n]+)/.exec(chunk.slice(0, split))?.[1] ?? "", body: chunk.slice(split + 2) };
    });
  const cloudConfig = parts.find((p) => p.contentType === "text/cloud-config");
  if (!cloudConfig?.body.startsWith("#cloud-config\n")) throw new Error("user-data has no cloud-config part");
  const { write_files } = JSON.parse(cloudConfig.body.slice("#cloud-config\n".length)) as { write_files: (UserDataFile & { owner: string })[] };
  const script = parts.find((p) => p.contentType === "text/x-shellscript")?.body ?? "";
  const files = new Map(write_files.map(({ path, content, permissions, encoding }) => [path, { path, content, permissions, ...(encoding ? { encoding } : {}) }]));
  // As on the instance: the script unpacks the bundle it names.
  for (const [path, file] of [...files]) {
    if (path.endsWith(".br") && file.encoding === "b64" && script.includes(`${path} ${path.slice(0, -3)}`)) {
      files.set(path.slice(0, -3), { path: path.slice(0, -3), content: brotliDecompressSync(Buffer.from(file.content, "base64")).toString("utf8"), permissions: file.permissions });
    }
  }
  return { parts, files, script };
}
