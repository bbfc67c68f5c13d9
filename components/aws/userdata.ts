import { brotliCompressSync, brotliDecompressSync, constants, crc32, deflateRawSync, gunzipSync } from "node:zlib";
import type { InstanceConfig } from "../../agent/config/instance";
import type { RoleName } from "../../agent/config/roles";
import path from "node:path";
import { RUNTIME_NODE_FLAGS } from "../shared/bundles";

/** EC2's limit on user-data, applied to the gzipped bytes before base64. */
export const USER_DATA_LIMIT = 16_384;
/** Three quarters of the limit: what a pool's user-data should stay within, so the runtime has room to grow. */
export const USER_DATA_BUDGET = USER_DATA_LIMIT * 0.75;

export const INSTALL_DIR = "/opt/agentpools";
export const CONFIG_DIR = "/etc/agentpools";
export const CA_BUNDLE_PATH = "/etc/pki/ca-trust/source/anchors/agentpools.pem";

/**
 * gVisor is not packaged for Amazon Linux: its release binary is pinned, with the SHA-512
 * gVisor publishes beside it (runsc.sha512), carried here so a changed or substituted binary
 * is refused. To move to a newer release, take both digests from that release's
 * runsc.sha512 files (storage.googleapis.com/gvisor/releases/release/<release>/<arch>/).
 */
export const GVISOR = {
  release: "20260105.0",
  sha512: {
    x86_64:
      "15c8adabc9f1006d469177b0ec3962d4993e01c85be17d381a4979029eacc7db37ef354e3eafd279573135a1adf81baffc5c19f2bbfac932c79386f6ac74e52f",
    aarch64:
      "cc98ad73e8d181f4738c97883180bc76cf8b2eb773c11f3a44f1636d0b0e00f2ee9228e4eecd414f94d6410f4877e6c93260b8070130fba767583026115d1038",
  },
} as const;
export const gvisorUrl = (arch: keyof typeof GVISOR.sha512) =>
  `https://storage.googleapis.com/gvisor/releases/release/${GVISOR.release}/${arch}/runsc`;

/** The log stream of every pool's log group where boot scripts report a failure (made with the group). */
export const BOOT_LOG_STREAM = "boot";

/** Boot steps that reach the network are tried this often, with growing pauses (3, 12, 27, 48 s). */
export const BOOT_ATTEMPTS = 5;

/** A file an instance gets (text, root's, mode 0644). */
export interface UserDataFile {
  path: string;
  content: string;
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
  /** The instances' architecture, for the gVisor binary. */
  architecture: "x86_64" | "arm64";
  /** The pool's region, for the AWS CLI calls of the boot script. */
  region: string;
  /** The pool's log group: the CloudWatch agent ships the runtime's log there, and a boot that fails says why in it. */
  logGroupName: string;
  registryMirror?: string;
  /** PEM certificates to trust, system-wide and in Node, carried in user-data... */
  caCertificates?: string;
  /** ...or read at boot from this SSM parameter (String) with the instance role. */
  caCertificatesParameter?: { name: string };
  /**
   * The role's configuration and the files beside it (configFiles) read at boot from this SSM
   * parameter (String: their archive, as packFiles makes it), at this version, instead of
   * travelling in user-data.
   */
  configParameter?: { name: string; version: number };
  /** Proxy for dnf, Docker and the runtime's own connections. */
  httpsProxy?: string;
  /** What goes around the proxy (the instance metadata service is always added for the runtime). */
  noProxy?: string;
  /** The AWS APIs are reached through the proxy too (else directly: VPC endpoints or a route). */
  awsApisViaProxy?: boolean;
  /** Further files, such as a run initialization policy. */
  extraFiles?: UserDataFile[];
  /** systemd's stop timeout: the drain plus a margin. */
  stopTimeoutSeconds: number;
  /**
   * Flows runtimes as processes (the process executor): bubblewrap and setpriv installed, the
   * agent given CAP_SETUID, CAP_SETGID and CAP_KILL (to start each runtime under one of these
   * uids, and end it), and
   * those uids kept from the instance metadata service (its credentials are the pool's).
   */
  runtimeSandbox?: { uids: string };
}

export class UserDataTooLargeError extends Error {
  constructor(
    readonly pool: string,
    readonly size: number,
    configInParameter = false,
  ) {
    super(
      `pool "${pool}": user-data is ${size} bytes gzipped, over EC2's limit of ${USER_DATA_LIMIT}${configInParameter ? ", even with the role's configuration in an SSM parameter" : ""}; ` +
        'shorten the configuration (custom CA certificates count in full; customCaCertificatesDelivery "ssmParameter" takes them out of user-data)',
    );
    this.name = "UserDataTooLargeError";
  }
}

const shellQuote = (text: string) => `'${text.replace(/'/g, `'"'"'`)}'`;
const trustsCustomCas = (spec: UserDataSpec) => Boolean(spec.caCertificates || spec.caCertificatesParameter);
/** A value bound for a line of the unit or the boot script: a line break there would start a directive of its own. */
function oneLine(name: string, value: string): string {
  if (/[\r\n\0]/.test(value)) throw new Error(`${name} must be one line: it holds a line break or a NUL`);
  return value;
}
/** One `Environment=` assignment, quoted for systemd (and % escaped, which systemd expands). */
const systemdEnv = (name: string, value: string) =>
  `Environment="${`${name}=${oneLine(name, value)}`.replace(/[\\"]/g, "\\$&").replace(/%/g, "%%")}"`;

export const unitName = (role: RoleName) => `agentpools-${role}.service`;
/** The runtime's log on the instance (its unit's output), in a directory root's alone. */
export const RUNTIME_LOG_DIR = "/var/log/agentpools";
export const runtimeLogPath = (role: RoleName) => `${RUNTIME_LOG_DIR}/${role}.log`;
export const configPath = (role: RoleName) => `${CONFIG_DIR}/${role}.json`;
export const bundlePath = (role: RoleName) => `${INSTALL_DIR}/${role}.js`;

/** Where the boot script puts the configuration's archive (base64) it reads from SSM (spec.configParameter). */
export const CONFIG_ARCHIVE_PATH = "/run/agentpools-config";

/** Brotli at its best, as user-data carries the archive: the same text always gives the same bytes. */
export const BROTLI_PARAMS = { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_LGWIN]: 22 };

/** Where compressed texts are kept, for a text compressed again (about 70 ms of CPU each). */
export interface CompressedTexts {
  get(text: string): Buffer | undefined;
  set(text: string, packed: Buffer): void;
}
const recent = new Map<string, Buffer>();
/**
 * By default the last few used: a pool renders its worst case twice (configDelivery, checkUserDataSize), and every
 * pool of a kind carries the same bundle. The tests keep every one on disk between runs (devkit/brotli-cache.ts).
 */
export const compressedTexts: CompressedTexts = {
  get(text) {
    const packed = recent.get(text);
    // Used again: the last to go.
    if (packed) {
      recent.delete(text);
      recent.set(text, packed);
    }
    return packed;
  },
  set(text, packed) {
    recent.set(text, packed);
    if (recent.size > 8) recent.delete(recent.keys().next().value as string);
  },
};
/**
 * Brotli's distance parameters a bundle travelling alone is also compressed with (postfix 0, 0 to 15 direct codes;
 * the first, 0, is Brotli's default), the smallest result kept (the first of equals: the same text, the same bytes).
 * Any decoder reads each. Which one wins moves as chaotically as the code does: one of them is 10 to 60 bytes smaller
 * than the default (the launcher's bundle: 11897 -> 11837). Some 0.7 s of CPU, once per bundle (compressedTexts).
 */
const DISTANCE_PARAMS = Array.from({ length: 16 }, (_, direct) => ({
  [constants.BROTLI_PARAM_NPOSTFIX]: 0,
  [constants.BROTLI_PARAM_NDIRECT]: direct,
}));
/** Where compressedTexts keeps a text compressed with each of DISTANCE_PARAMS (not its plain compression's key). */
const SMALLEST_OF = `\0brotli NPOSTFIX 0, NDIRECT 0-15\0`;
const brotli = (data: string, search = false) => {
  const key = search ? SMALLEST_OF + data : data;
  let packed = compressedTexts.get(key);
  if (!packed) {
    const bytes = Buffer.from(data, "utf8");
    for (const distance of search ? DISTANCE_PARAMS : [{}]) {
      const tried = brotliCompressSync(bytes, { params: { ...BROTLI_PARAMS, ...distance } });
      if (!packed || tried.length < packed.length) packed = tried;
    }
    compressedTexts.set(key, packed as Buffer);
  }
  return packed as Buffer;
};
/** A bundle as user-data carries it when it travels alone (base64): the smallest of DISTANCE_PARAMS' compressions. */
export const packBundle = (bundle: string) => brotli(bundle, true).toString("base64");

/**
 * The files not needed before packages are installed travel as one Brotli archive (the bundle
 * alone when it is the only one: brFunction): a shell script that makes their folders and
 * writes each file with a heredoc, under the working directory (the boot script's is /; the
 * tests give a scratch one). Every file is
 * text ending in a newline (a heredoc's last line ends in one), 0644, root's. Brotli packs them
 * together smaller than gzip does apart, the margin that keeps the largest pools under the
 * 16 KB limit; Node.js, just installed, only decompresses (what a decoder of our own format
 * would cost in the boot script is more than the heredocs cost in the archive).
 * Deterministic: the same files give the same bytes.
 */
export function packFiles(files: UserDataFile[]): string {
  for (const file of files) {
    if (!file.content.endsWith("\n")) throw new Error(`${file.path} must end with a newline to travel in user-data`);
  }
  const folders = [...new Set(files.map((file) => `.${path.posix.dirname(file.path)}`))];
  const script = [
    "set -e",
    `mkdir -p ${folders.join(" ")}`,
    ...files.flatMap((file) => writeFile({ path: `.${file.path}`, content: file.content })),
    "",
  ];
  return brotli(script.join("\n")).toString("base64");
}
const unbrotli = (packed: string) => brotliDecompressSync(Buffer.from(packed, "base64")).toString("utf8");
/** The files of an archive packFiles made, in order. */
export function unpackFiles(archive: string): UserDataFile[] {
  return heredocFiles(unbrotli(archive)).map((file) => ({
    path: file.path.slice(1),
    content: file.content,
  }));
}
/** The files a script writes with writeFile's heredocs, in order. */
const heredocFiles = (script: string): UserDataFile[] =>
  [...script.matchAll(/^cat > (\S+) <<'(\w+)'\n([\s\S]*?)\n\2$/gm)].map(([, path, , content]) => ({
    path,
    content: content + "\n",
  }));
/**
 * `br`: Brotli's decompressor, Node.js's (`node -e` has the built-in modules as globals, as its REPL does), found on
 * the PATH as the script's other commands are (dnf puts it in /usr/bin).
 * Archives go on to bash (`base64 -d ... | br | bash`), user-data's and the config parameter's alike; a bundle
 * travelling alone straight to its file (`base64 -d ... | br > file`: no heredoc around it, whose text costs more at
 * the start of a Brotli stream than in the script).
 */
const brFunction = (spec: Pick<UserDataSpec, "nodeMajor">) =>
  `br() { node-${spec.nodeMajor} -e 'process.stdout.write(zlib.brotliDecompressSync(fs.readFileSync(0)))'; }`;
/** Files the script writes as they are: the ones needed before Node.js is installed. */
const EARLY_FILES = [CA_BUNDLE_PATH];

/** The systemd unit: restart on failure, SIGTERM to stop, time enough to drain, and a narrow sandbox. */
/**
 * NO_PROXY of the runtime: the pool's list and the instance metadata service, which is never reached through a proxy.
 * A "*" in the list is the whole value: Node's own WebSocket (undici) reads "*" only so, and Node's http agent alike.
 */
function unitNoProxy(spec: UserDataSpec): string | undefined {
  if (!spec.httpsProxy) return undefined;
  const entries = [...(spec.noProxy?.split(",") ?? []), "169.254.169.254"];
  return entries.includes("*") ? "*" : [...new Set(entries)].join(",");
}

/**
 * The capabilities a role's agent keeps. A Flows agent with its runtime sandbox: giving each runtime a uid of its own,
 * and ending it. A launcher: removing whatever a run left in its workspace (a container's root made it: a 0700
 * directory, a sticky one, files of any mode), which its uid alone cannot. Both let it read and remove any file it
 * sees, but it sees little (ProtectSystem=strict: /var/lib/agentpools and its own /tmp are all it can write), and the
 * docker group it is in is root already.
 */
export function unitCapabilities(spec: Pick<UserDataSpec, "role" | "runtimeSandbox">): string | undefined {
  if (spec.runtimeSandbox) return "CAP_SETUID CAP_SETGID CAP_KILL";
  return spec.role === "launcher" ? "CAP_DAC_OVERRIDE CAP_FOWNER" : undefined;
}

export function renderUnit(spec: UserDataSpec): string {
  const noProxy = unitNoProxy(spec);
  const capabilities = unitCapabilities(spec);
  return [
    "[Unit]",
    `Description=agentpools ${spec.role} for pool ${spec.pool}`,
    "Wants=network-online.target",
    // The CloudWatch agent ships the unit's output: it starts first, and stops after, with the last lines sent.
    `After=network-online.target${spec.docker ? " docker.service" : ""} ${CLOUDWATCH_AGENT_UNIT}`,
    ...(spec.docker ? ["Requires=docker.service"] : []),
    // A runtime that keeps failing is given up on, and its instance with it: powered off, the
    // instance terminates and Auto Scaling starts another (a restart loop would hold capacity).
    "StartLimitIntervalSec=900",
    "StartLimitBurst=10",
    "FailureAction=poweroff",
    "",
    "[Service]",
    "User=agentpools",
    "Group=agentpools",
    // Access to the Docker socket is root-equivalent: only roles that start containers get it.
    ...(spec.docker ? ["SupplementaryGroups=docker"] : []),
    systemdEnv("AGENTPOOLS_CONFIG", configPath(spec.role)),
    ...(trustsCustomCas(spec) ? [systemdEnv("NODE_EXTRA_CA_CERTS", CA_BUNDLE_PATH)] : []),
    ...(spec.httpsProxy
      ? [
          systemdEnv("NODE_USE_ENV_PROXY", "1"),
          systemdEnv("HTTPS_PROXY", spec.httpsProxy),
          // Node takes HTTP_PROXY for an http:// gateway: without it, that one would go around the pool's proxy.
          systemdEnv("HTTP_PROXY", spec.httpsProxy),
          systemdEnv("NO_PROXY", noProxy as string),
        ]
      : []),
    // "+": with full privileges, before the agent, whatever state the instance was rebooted into.
    ...(spec.runtimeSandbox ? [`ExecStartPre=+/usr/sbin/nft -f ${IMDS_RULES_PATH}`] : []),
    `ExecStart=/usr/bin/node-${spec.nodeMajor} ${[...RUNTIME_NODE_FLAGS, bundlePath(spec.role)].join(" ")}`,
    // Opened by systemd (root) before the agent starts: stdout and stderr alike, a crash's trace included.
    `StandardOutput=append:${runtimeLogPath(spec.role)}`,
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
    // Ambient (the agent is not root), and no others: see unitCapabilities.
    ...(capabilities ? [`AmbientCapabilities=${capabilities}`, `CapabilityBoundingSet=${capabilities}`] : []),
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
  // Runs' output is streamed by the agent (which masks secrets in it) over the attached
  // client; a logging driver would keep it raw on the host after --rm, so none keeps anything.
  const config: Record<string, unknown> = { "log-driver": "none", "live-restore": true };
  if (spec.gvisor) config.runtimes = { runsc: { path: "/usr/local/bin/runsc" } };
  if (spec.registryMirror) config["registry-mirrors"] = [spec.registryMirror];
  if (spec.httpsProxy)
    config.proxies = { "https-proxy": spec.httpsProxy, ...(spec.noProxy ? { "no-proxy": spec.noProxy } : {}) };
  return JSON.stringify(config) + "\n";
}

const CLOUDWATCH_AGENT_DIR = "/opt/aws/amazon-cloudwatch-agent";
const CLOUDWATCH_AGENT_UNIT = "amazon-cloudwatch-agent.service";
export const CLOUDWATCH_AGENT_CONFIG_PATH = `${CONFIG_DIR}/cloudwatch-agent.json`;
/** Where the CloudWatch agent reads its proxy (its own unit does not see the runtime's environment). */
export const CLOUDWATCH_AGENT_PROXY_PATH = `${CLOUDWATCH_AGENT_DIR}/etc/common-config.toml`;

/**
 * The CloudWatch agent's configuration: the runtime's log file to the pool's log group, one stream per instance named
 * by its ID. Its metric lines (embedded metric format) become metrics as CloudWatch Logs takes them in.
 */
export function renderCloudWatchAgentConfig(spec: Pick<UserDataSpec, "role" | "logGroupName">): string {
  const file = {
    file_path: runtimeLogPath(spec.role),
    log_group_name: spec.logGroupName,
    log_stream_name: "{instance_id}",
  };
  return JSON.stringify({ logs: { logs_collected: { files: { collect_list: [file] } } } }) + "\n";
}

/**
 * The runtime's log kept small on a long-lived instance (its lines are in CloudWatch): cut in place, the file the unit
 * holds open, which the CloudWatch agent then reads again from its start. Amazon Linux's logrotate timer runs it daily.
 */
export const RUNTIME_LOG_ROTATION = `${RUNTIME_LOG_DIR}/*.log {\n size 64M\n rotate 1\n copytruncate\n missingok\n}\n`;

/** The CloudWatch agent's proxy, when the AWS APIs are reached through it (TOML: a JSON string is a valid basic one). */
export const renderCloudWatchAgentProxy = (proxy: string) =>
  `[proxy]\nhttps_proxy = ${JSON.stringify(oneLine("httpsProxy", proxy))}\nno_proxy = "169.254.169.254"\n`;

/** Every file an instance gets, as it will be on disk. */
export function renderFiles(spec: UserDataSpec): UserDataFile[] {
  return [
    { path: bundlePath(spec.role), content: spec.bundle },
    ...(spec.configParameter ? [] : configFiles(spec)),
    ...(spec.caCertificates ? [{ path: CA_BUNDLE_PATH, content: spec.caCertificates }] : []),
  ];
}

/**
 * The files that say how this pool's runtime runs: the role's configuration, its systemd unit,
 * Docker's daemon.json, the runtimes' nftables rules, a run initialization policy. They travel
 * in user-data, or together in the config parameter (spec.configParameter) with the rest of the boot script.
 */
export function configFiles(spec: UserDataSpec): UserDataFile[] {
  const files: UserDataFile[] = [
    { path: configPath(spec.role), content: JSON.stringify(spec.config) + "\n" },
    { path: `/etc/systemd/system/${unitName(spec.role)}`, content: renderUnit(spec) },
  ];
  files.push(
    { path: CLOUDWATCH_AGENT_CONFIG_PATH, content: renderCloudWatchAgentConfig(spec) },
    { path: "/etc/logrotate.d/agentpools", content: RUNTIME_LOG_ROTATION },
  );
  if (spec.httpsProxy && spec.awsApisViaProxy)
    files.push({ path: CLOUDWATCH_AGENT_PROXY_PATH, content: renderCloudWatchAgentProxy(spec.httpsProxy) });
  const daemon = renderDockerDaemonConfig(spec);
  if (daemon) files.push({ path: "/etc/docker/daemon.json", content: daemon });
  if (spec.runtimeSandbox) files.push({ path: IMDS_RULES_PATH, content: imdsRules(spec.runtimeSandbox.uids) });
  // With the files, in the parameter: the rest of the boot script (no more power over the instance than the unit has).
  if (spec.configParameter) files.push({ path: BOOT_REST_PATH, content: bootRest(spec) });
  return [...files, ...(spec.extraFiles ?? [])];
}

/** The value of the config parameter: configFiles as one archive (base64 text, which SSM's String type holds). */
export const renderConfigParameterValue = (spec: UserDataSpec): string => packFiles(configFiles(spec));

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
      ? [
          `retry${awsProxy(spec) ? ` env${awsProxy(spec)}` : ""} aws ssm get-parameter --name ${shellQuote(parameter.name)} --query Parameter.Value --output text > ${CA_BUNDLE_PATH}`,
        ]
      : []),
    "update-ca-trust extract",
  ];
}

/**
 * The configuration from its parameter, at the version this user-data was rendered with (an
 * instance of an older launch template reads its own), unpacked as user-data's archive is.
 */
function configFetchCommands(spec: UserDataSpec): string[] {
  const parameter = spec.configParameter;
  if (!parameter) return [];
  return [
    `retry${awsProxy(spec) ? ` env${awsProxy(spec)}` : ""} aws ssm get-parameter --name ${shellQuote(`${parameter.name}:${parameter.version}`)} --query Parameter.Value --output text >${CONFIG_ARCHIVE_PATH}`,
    `base64 -d ${CONFIG_ARCHIVE_PATH}|br|bash`,
  ];
}

/** For the AWS CLI, when AWS is reached through the proxy: the proxy settings, else none (straight to AWS). */
const awsProxy = (spec: UserDataSpec) =>
  spec.httpsProxy && spec.awsApisViaProxy ? ` HTTPS_PROXY=${shellQuote(spec.httpsProxy)} NO_PROXY=169.254.169.254` : "";

/**
 * The start of the boot script: `retry` for the steps that reach the network, and a trap
 * that, should any step fail for good, says why in the pool's log group (its "boot" stream,
 * with the AWS CLI: Node.js may be what failed to install) and powers the instance off,
 * which terminates it: Auto Scaling replaces it at once instead of after the launch hook's
 * timeout.
 */
export function bootPreamble(spec: UserDataSpec): string[] {
  const aws = spec.config.aws;
  return [
    "set -euo pipefail",
    // Files 0644 and folders 0755, whatever the boot's umask: the service user reads them.
    "umask 022",
    `export AWS_DEFAULT_REGION=${spec.region}`,
    // The last attempt fails the call; the trap reports the command (which $BASH_COMMAND, unexpanded, would not).
    `retry() { for n in ${Array.from({ length: BOOT_ATTEMPTS - 1 }, (_, i) => i + 1).join(" ")}; do "$@" && return; sleep $((3*n*n)); done; "$@" || { why="$*"; return 1; }; }`,
    ...(aws
      ? [
          "abandon() {",
          "  trap - ERR; set +e",
          ...(awsProxy(spec) ? [`  export${awsProxy(spec)}`] : []),
          // The instance's ID as cloud-init keeps it.
          `  aws logs put-log-events --log-group-name ${spec.logGroupName} --log-stream-name ${BOOT_LOG_STREAM} --log-events "timestamp=$(date +%s000),message=\\"$(</var/lib/cloud/data/instance-id): boot failed: \${1//\\"/}\\""`,
          // The launch template terminates an instance that powers off: the group replaces it at once.
          "  poweroff",
          "  exit 1",
          "}",
          `trap 'abandon "\${why:-$BASH_COMMAND}"' ERR`,
        ]
      : []),
  ];
}

/** A file written by the script itself: a heredoc with a delimiter its content does not hold. */
function writeFile(file: UserDataFile): string[] {
  // Bash drops NUL bytes as it reads a script: a line "EOF\0" would be the delimiter to it, not to the check below.
  if (file.content.includes("\0"))
    throw new Error(`${file.path} holds a NUL byte: it cannot travel in the boot script`);
  let delimiter = "EOF";
  while (file.content.split("\n").includes(delimiter)) delimiter += "_";
  return [`cat > ${file.path} <<'${delimiter}'`, ...file.content.replace(/\n$/, "").split("\n"), delimiter];
}

/** The last part of the boot script when the config parameter holds it (sourced: same shell, same trap). */
export const BOOT_REST_PATH = `${CONFIG_DIR}/boot.sh`;

/** After the archive is unpacked: the configuration from its parameter, if it is there, then the rest. */
const bootTail = (spec: UserDataSpec): string =>
  spec.configParameter ? [...configFetchCommands(spec), `. ${BOOT_REST_PATH}`, ""].join("\n") : bootRest(spec);

/** The service user, gVisor, then the services. */
function bootRest(spec: UserDataSpec): string {
  const lines = ["id agentpools &>/dev/null || useradd -r -d /var/lib/agentpools -s /sbin/nologin agentpools"];
  if (spec.gvisor) {
    const arch = spec.architecture === "arm64" ? "aarch64" : "x86_64";
    lines.push(
      `retry curl -fsSL${spec.httpsProxy ? ` --proxy ${shellQuote(spec.httpsProxy)}` : ""} -o /tmp/runsc ${gvisorUrl(arch)}`,
      `echo '${GVISOR.sha512[arch]}  /tmp/runsc' | sha512sum -c`,
      "install -m 0755 /tmp/runsc /usr/local/bin/runsc",
    );
  }
  lines.push(
    `install -d -m 0700 ${RUNTIME_LOG_DIR}`,
    // Its configuration, then the agent enabled and started (-s): before the runtime writes a line.
    `${CLOUDWATCH_AGENT_DIR}/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c file:${CLOUDWATCH_AGENT_CONFIG_PATH}`,
    "systemctl daemon-reload",
    `systemctl enable --now ${spec.docker ? "docker " : ""}${unitName(spec.role)}`,
    "",
  );
  return lines.join("\n");
}

/**
 * The boot script, in three parts: the text before the archive, the archive (base64), the
 * text after it. The files (the archive, or the bundle alone when the configuration is in its
 * parameter, and what is needed before Node.js: the CA certificates), CA trust, packages, the
 * archive unpacked, then the rest of the script (the service user, gVisor, the services), or
 * its fetch from the config parameter, which holds it.
 */
function scriptParts(spec: UserDataSpec): [string, string, string] {
  const packages = [
    `nodejs${spec.nodeMajor}`,
    "amazon-cloudwatch-agent",
    ...(spec.docker ? ["docker"] : []),
    ...(spec.runtimeSandbox ? ["bubblewrap", "util-linux", "nftables"] : []),
  ];
  const files = renderFiles(spec);
  const bundle = bundlePath(spec.role);
  const archived = files.filter((f) => !EARLY_FILES.includes(f.path));
  // The bundle alone when no other file travels with it (the configuration in its parameter), else all in the archive:
  // the configuration's text compresses better beside the bundle's than in a stream of its own.
  const alone = archived.length === 1;
  const before = [
    "#!/bin/bash",
    ...bootPreamble(spec),
    ...files.filter((f) => EARLY_FILES.includes(f.path)).flatMap(writeFile),
    ...caTrustCommands(spec),
    ...(spec.httpsProxy
      ? [`echo proxy=${shellQuote(oneLine("httpsProxy", spec.httpsProxy))} >> /etc/dnf/dnf.conf`]
      : []),
    `retry dnf install -y ${packages.join(" ")}`,
    brFunction(spec),
    // The files' paths are written under the working directory.
    "cd /",
    ...(alone ? [`mkdir -p .${path.posix.dirname(bundle)}`] : []),
    `base64 -d<<<'`,
  ];
  // The text after the base64, where gzip finds the names it repeats from the text before (gzipParts).
  const after = [alone ? `'|br >.${bundle}` : "'|br|bash", bootTail(spec)];
  return [before.join("\n"), alone ? packBundle(spec.bundle) : packFiles(archived), after.join("\n")];
}

export const renderScript = (spec: UserDataSpec): string => scriptParts(spec).join("");

/**
 * gzip whose parts are compressed each on its own, every part ending its deflate blocks: the
 * archive's base64, which the text around it never matches, then has Huffman codes of its
 * own (some 180 bytes less than one stream). Each part is compressed with the text before it
 * as its dictionary (deflate's 32 KB window): a gunzip has that text behind it as it reads the
 * part, so the text after the archive refers back to the names the text before it holds. Any
 * gunzip reads it as one stream.
 */
function gzipParts(parts: string[]): Buffer {
  const data = Buffer.from(parts.join(""), "utf8");
  const deflated = parts.map((part, i) => {
    const before = Buffer.from(parts.slice(0, i).join(""), "utf8");
    // Huffman codes alone suit base64, where a match costs more than the letters it stands for: the smaller is kept.
    const [best] = [constants.Z_DEFAULT_STRATEGY, constants.Z_HUFFMAN_ONLY]
      .map((strategy) =>
        deflateRawSync(part, {
          level: 9,
          memLevel: 9,
          strategy,
          finishFlush: i === parts.length - 1 ? constants.Z_FINISH : constants.Z_SYNC_FLUSH,
          ...(before.length > 0 && { dictionary: before.subarray(-32_768) }),
        }),
      )
      .sort((a, b) => a.length - b.length);
    return best;
  });
  // Header: deflate, no name or time, maximum compression, "Unix" (the same bytes on any OS the stack is rendered on).
  const header = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc32(data), 0);
  trailer.writeUInt32LE(data.length, 4);
  return Buffer.concat([header, ...deflated, trailer]);
}

/**
 * Render a pool's user-data: one shell script, which cloud-init runs once at the first
 * boot, gzipped. It carries its files itself (no cloud-config, no multipart envelope: some
 * 200 bytes that the largest pools need). Pure and deterministic: the same spec gives the
 * same bytes, so an unchanged stack makes no new launch template version.
 */
export function renderUserData(spec: UserDataSpec): Buffer {
  const gzipped = gzipParts(scriptParts(spec));
  if (gzipped.length > USER_DATA_LIMIT)
    throw new UserDataTooLargeError(spec.pool, gzipped.length, Boolean(spec.configParameter));
  return gzipped;
}

export interface DecodedUserData {
  /** The boot script as it runs: the user-data script with the part it sources from its archive in place. */
  script: string;
  /** Every file the instance gets, by path: those the script writes and those its archive holds. */
  files: Map<string, UserDataFile>;
}

/**
 * Read rendered user-data back: gunzip, then the files as the script writes and unpacks them,
 * and those of the config parameter's value, when the script reads one and it is given.
 */
export function decodeUserData(data: Buffer | string, configParameterValue?: string): DecodedUserData {
  const script = gunzipSync(typeof data === "string" ? Buffer.from(data, "base64") : data).toString("utf8");
  if (!script.startsWith("#!/bin/bash\n")) throw new Error("user-data is not a bash script");
  const files = new Map<string, UserDataFile>();
  for (const file of heredocFiles(script)) files.set(file.path, file);
  // As on the instance (under /): the bundle decompressed to its file, the archive unpacked.
  if (/^cd \/$/m.test(script)) {
    for (const [, packed, target] of script.matchAll(/^base64 -d<<<'([A-Za-z0-9+/=]+)'\|br( >\.\S+|\|bash)$/gm)) {
      if (target === "|bash") for (const file of unpackFiles(packed)) files.set(file.path, file);
      else files.set(target.slice(3), { path: target.slice(3), content: unbrotli(packed) });
    }
  }
  const whole = script;
  if (configParameterValue !== undefined && whole.includes(`\nbase64 -d ${CONFIG_ARCHIVE_PATH}|br|bash\n`)) {
    for (const file of unpackFiles(configParameterValue)) files.set(file.path, file);
    const rest = files.get(BOOT_REST_PATH)?.content;
    if (rest !== undefined) return { script: whole.replace(`. ${BOOT_REST_PATH}\n`, rest), files };
  }
  return { script: whole, files };
}
