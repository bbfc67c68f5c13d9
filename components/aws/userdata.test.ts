import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { brotliCompressSync, brotliDecompressSync, constants, gunzipSync } from "node:zlib";
import { statSync } from "node:fs";
import {
  BROTLI_PARAMS,
  bundlePath,
  configFiles,
  decodeUserData,
  GVISOR,
  renderConfigParameterValue,
  renderScript,
  renderUserData,
  packBundle,
  unpackFiles,
  USER_DATA_LIMIT,
  UserDataTooLargeError,
  type UserDataSpec,
} from "./userdata";
import { CA_EC } from "../../devkit/fixtures";
import { scratchDir } from "../../devkit/helpers";
import { runtimeBundle } from "../shared/bundles";
import { ec2Variant } from "../../agent/config/variants";

function spec(overrides: Partial<UserDataSpec> = {}): UserDataSpec {
  return {
    pool: "build",
    role: "launcher",
    bundle: '"use strict";var a="it\'s $HOME `x` \\"quoted\\" \\0";console.log(a);\n',
    config: {
      role: "launcher",
      pool: "build",
      settings: { workerNetwork: "bridge", maskedEnvVars: ["A", "B"] },
      drainTimeoutSeconds: 600,
      aws: {
        secretArn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf",
        autoScalingGroupName: "agentpools-build-1a2b3c4d",
        launchHookName: "agent-connected",
        terminationHookName: "agent-drained",
        heartbeatSeconds: 200,
        metricsSeconds: 60,
        unhealthyAfterSeconds: 600,
        protectSeconds: 4500,
        lingerSeconds: 0,
      },
    },
    nodeMajor: 24,
    docker: true,
    gvisor: true,
    architecture: "x86_64",
    region: "eu-west-1",
    logGroupName: "/agentpools/agentpools-build-1a2b3c4d",
    registryMirror: "https://mirror.internal",
    caCertificates: CA_EC,
    httpsProxy: "http://proxy.internal:3128",
    noProxy: ".internal,.eu-west-1.amazonaws.com",
    extraFiles: [{ path: "/etc/agentpools/policy", content: "allow everything 'quoted' %d\nEOF\n" }],
    stopTimeoutSeconds: 630,
    ...overrides,
  };
}

/** Stand-in commands on PATH for running pieces of the boot script here: each records its arguments. */
function standIns(scripts: Record<string, string>) {
  const dir = scratchDir("bin-");
  for (const [name, body] of Object.entries(scripts)) {
    writeFileSync(path.join(dir, name), `#!/bin/bash\nprintf '%s\\n' "$*" >> '${dir}/${name}.calls'\n${body}\n`, {
      mode: 0o755,
    });
  }
  const calls = (name: string) =>
    existsSync(path.join(dir, `${name}.calls`))
      ? readFileSync(path.join(dir, `${name}.calls`), "utf8")
          .trim()
          .split("\n")
      : [];
  return { dir, calls };
}

/**
 * Run the script's preamble (retry, the failure trap) and then `lines`, as cloud-init would
 * run them, with stand-ins first on PATH and the instance ID cloud-init keeps in a scratch file.
 */
function runBootPiece(script: string, lines: string[], bin: string) {
  const all = script.split("\n");
  const preamble = all.slice(1, all.findIndex((l) => l.startsWith("trap ")) + 1).join("\n");
  const idFile = path.join(scratchDir("cloud-"), "instance-id");
  writeFileSync(idFile, "i-0123456789abcdef0\n");
  const text = `${preamble}\n${lines.join("\n")}\n`.replace("/var/lib/cloud/data/instance-id", idFile);
  // A piece that fails runs the trap: never this machine's own poweroff.
  if (!existsSync(path.join(bin, "poweroff")))
    writeFileSync(path.join(bin, "poweroff"), "#!/bin/sh\n", { mode: 0o755 });
  // No stdin: bash started with a socket for stdin (Node's pipes) and no SHLVL takes itself for an ssh session and
  // reads the user's ~/.bashrc, whatever that runs (on a developer's machine, pyenv's set-up: ten processes a run).
  return spawnSync("/bin/bash", ["-c", text], {
    env: { PATH: `${bin}:${process.env.PATH}` },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/**
 * The script's own umask and `br` function, run with this machine's node, then a move to a scratch root (the script's
 * is /) and the bundle's folder made there, as the script makes it.
 */
const localUnpack = (lines: string[], root: string) =>
  [
    lines.find((l) => l.startsWith("umask ")),
    (lines.find((l) => l.startsWith("br() {")) as string).replace("node-24", JSON.stringify(process.execPath)),
    `cd ${root}`,
    // (The bundle's folder, when the bundle travels alone.)
    lines.find((l) => l.startsWith("mkdir -p ./")) ?? "",
  ].join("\n");

describe("user-data", () => {
  it("is a gzipped bash script that writes its own files and decodes back to exactly what was rendered", () => {
    const input = spec();
    const gzipped = renderUserData(input);
    const decoded = decodeUserData(gzipped);
    assert.match(gunzipSync(gzipped).toString("utf8"), /^#!\/bin\/bash\n/);
    // Its parts refer back to the text before them: another gunzip (gzip's own) reads the same script.
    assert.equal(execFileSync("gzip", ["-dc"], { input: gzipped }).toString("utf8"), renderScript(input));
    assert.equal(decoded.files.get("/opt/agentpools/launcher.js")?.content, input.bundle);
    assert.deepEqual(JSON.parse(decoded.files.get("/etc/agentpools/launcher.json")?.content as string), input.config);
    assert.equal(decoded.files.get("/etc/agentpools/policy")?.content, "allow everything 'quoted' %d\nEOF\n");
    assert.equal(decoded.files.get("/etc/pki/ca-trust/source/anchors/agentpools.pem")?.content, CA_EC);
    assert.deepEqual(JSON.parse(decoded.files.get("/etc/docker/daemon.json")?.content as string), {
      "log-driver": "none",
      "live-restore": true,
      runtimes: { runsc: { path: "/usr/local/bin/runsc" } },
      "registry-mirrors": ["https://mirror.internal"],
      proxies: { "https-proxy": "http://proxy.internal:3128", "no-proxy": ".internal,.eu-west-1.amazonaws.com" },
    });
  });

  it("writes the CA certificates with the shell as given, whatever lines they hold", () => {
    const awkward = `${CA_EC}EOF\nEOF_\n`;
    const script = decodeUserData(renderUserData(spec({ caCertificates: awkward }))).script;
    const lines = script.split("\n");
    const start = lines.findIndex((l) => l.startsWith("cat > /etc/pki/ca-trust/source/anchors/agentpools.pem"));
    const dir = scratchDir("ca-");
    const piece = lines
      .slice(start, lines.indexOf(lines[start].split("'")[1], start + 1) + 1)
      .join("\n")
      .replace("/etc/pki/ca-trust/source/anchors", dir);
    execFileSync("/bin/bash", ["-c", piece]);
    assert.equal(readFileSync(path.join(dir, "agentpools.pem"), "utf8"), awkward);
  });

  it("unpacks its archive with the boot script's own commands, every file byte for byte", () => {
    const input = spec();
    const decoded = decodeUserData(renderUserData(input));
    const lines = decoded.script.split("\n");
    const unpack = lines.findIndex((l) => /^base64 -d<<<'[A-Za-z0-9+/=]+'\|br\|bash$/.test(l));
    assert.ok(unpack > lines.findIndex((l) => l.startsWith("retry dnf install")), "after Node.js is installed");
    assert.ok(unpack > lines.indexOf("cd /"), "under /");
    assert.ok(unpack < lines.findIndex((l) => l.startsWith("systemctl")), "before the services start");
    // Run that very line here, with this machine's node and a scratch root, under a strict umask at boot.
    const root = scratchDir("root-");
    execFileSync("/bin/bash", ["-c", `set -o pipefail\numask 077\n${localUnpack(lines, root)}\n${lines[unpack]}`]);
    for (const file of decoded.files.values()) {
      if (file.path === "/etc/pki/ca-trust/source/anchors/agentpools.pem") continue; // written by the shell, tested above
      assert.equal(readFileSync(path.join(root, file.path), "utf8"), file.content, file.path);
      assert.equal(statSync(path.join(root, file.path)).mode & 0o777, 0o644, file.path);
    }
    assert.equal(readFileSync(path.join(root, "/opt/agentpools/launcher.js"), "utf8"), input.bundle);
  });

  it("with a config parameter: reads it at its pinned version, unpacks exactly the files user-data would have carried, before the services start", () => {
    const parameter = { name: "/agentpools/agentpools-build-1a2b3c4d/config", version: 7 };
    const input = spec({ configParameter: parameter });
    const value = renderConfigParameterValue(input);
    const inlineScript = decodeUserData(renderUserData(spec())).script;
    const inline = decodeUserData(renderUserData(spec())).files;
    const decoded = decodeUserData(renderUserData(input));
    // Out of user-data, into the value, byte for byte the files the inline path writes (so a pool's settings are the same either way).
    const moved = configFiles(input);
    assert.deepEqual(moved.map((f) => f.path).sort(), [
      "/etc/agentpools/boot.sh",
      "/etc/agentpools/cloudwatch-agent.json",
      "/etc/agentpools/launcher.json",
      "/etc/agentpools/policy",
      "/etc/docker/daemon.json",
      "/etc/logrotate.d/agentpools",
      "/etc/systemd/system/agentpools-launcher.service",
    ]);
    for (const file of moved) assert.ok(!decoded.files.has(file.path), `${file.path} still in user-data`);
    // The rest of the boot script with them: the inline script's tail (after its archive), word for word.
    const asInline = (path: string) =>
      path === "/etc/agentpools/boot.sh"
        ? inlineScript.slice(inlineScript.indexOf("'|br|bash\n") + 10)
        : inline.get(path)?.content;
    assert.deepEqual(
      unpackFiles(value).map((f) => f.content),
      moved.map((f) => asInline(f.path)),
    );
    // The whole script as it runs is the inline one's, with the two lines that read the parameter, and the bundle
    // decompressed alone (its folder made first) where the inline script unpacks the archive that holds it.
    const runs = (script: string) =>
      script
        .replace(/<<<'[A-Za-z0-9+/=]+'\|br( >\S+|\|bash)\n/, "<<<''|br ...\n")
        .split("\n")
        .filter((l) => !/agentpools-config|^mkdir -p \.\/opt\/agentpools$/.test(l));
    assert.deepEqual(
      runs(decodeUserData(renderUserData(input), value).script),
      runs(decodeUserData(renderUserData(spec())).script),
    );
    // The script's own lines, with an AWS CLI stand-in that answers only the pinned version, as SSM would.
    const lines = decoded.script.split("\n");
    const fetch = lines.findIndex((l) => l.includes("aws ssm get-parameter --name") && l.includes("/config:"));
    assert.equal(
      lines[fetch],
      `retry aws ssm get-parameter --name '${parameter.name}:7' --query Parameter.Value --output text >/run/agentpools-config`,
    );
    const whole = decodeUserData(renderUserData(input), value).script.split("\n");
    assert.ok(
      whole.indexOf(lines[fetch]) < whole.findIndex((l) => l.startsWith("systemctl")),
      "before the services start",
    );
    const root = scratchDir("root-");
    const stored = path.join(root, "value");
    writeFileSync(stored, value);
    const bin = standIns({ aws: `[ "$4" = '${parameter.name}:7' ] && cat '${stored}'` });
    // A strict umask at boot must not leave the files unreadable to the service user.
    const bundleLine = lines.find((l) =>
      /^base64 -d<<<'[A-Za-z0-9+/=]+'\|br >\.\/opt\/agentpools\/launcher\.js$/.test(l),
    );
    assert.ok(bundleLine, "the bundle alone, straight to its file");
    const piece = ["umask 077", localUnpack(lines, root), bundleLine, ...lines.slice(fetch, fetch + 2)].map((l) =>
      l.replaceAll("/run/", `${root}/`),
    );
    const run = runBootPiece(decoded.script, piece, bin.dir);
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(bin.calls("aws"), [
      `ssm get-parameter --name ${parameter.name}:7 --query Parameter.Value --output text`,
    ]);
    for (const file of [...moved, { path: "/opt/agentpools/launcher.js", content: input.bundle }]) {
      assert.equal(readFileSync(path.join(root, file.path), "utf8"), file.content, file.path);
      assert.equal(statSync(path.join(root, file.path)).mode & 0o777, 0o644, file.path);
    }
  });

  it("runs the role as a systemd service that restarts on failure, powers off when it keeps failing, and stops with SIGTERM in time to drain", () => {
    const unit = decodeUserData(renderUserData(spec())).files.get("/etc/systemd/system/agentpools-launcher.service")
      ?.content as string;
    for (const line of [
      "ExecStart=/usr/bin/node-24 --disable-sigusr1 --max-semi-space-size=1 --no-concurrent-recompilation /opt/agentpools/launcher.js",
      "Restart=on-failure",
      "StartLimitBurst=10",
      "FailureAction=poweroff",
      "KillSignal=SIGTERM",
      "TimeoutStopSec=630",
      "User=agentpools",
      "NoNewPrivileges=true",
      "SupplementaryGroups=docker",
      'Environment="AGENTPOOLS_CONFIG=/etc/agentpools/launcher.json"',
      'Environment="NODE_EXTRA_CA_CERTS=/etc/pki/ca-trust/source/anchors/agentpools.pem"',
      'Environment="NO_PROXY=.internal,.eu-west-1.amazonaws.com,169.254.169.254"',
      // An http:// gateway goes through the pool's proxy too (Node reads HTTP_PROXY for it).
      'Environment="HTTPS_PROXY=http://proxy.internal:3128"',
      'Environment="HTTP_PROXY=http://proxy.internal:3128"',
    ]) {
      assert.ok(unit.split("\n").includes(line), `unit lacks ${line}`);
    }
    const vcsUnit = decodeUserData(renderUserData(spec({ role: "vcs-agent", docker: false, gvisor: false }))).files.get(
      "/etc/systemd/system/agentpools-vcs-agent.service",
    )?.content as string;
    assert.ok(!vcsUnit.includes("docker"), "a role without containers gets no Docker access");
  });

  it('a pool whose noProxy holds "*" gives the runtime NO_PROXY=* alone: every reader of it on the instance goes direct', () => {
    const unit = (noProxy: string) =>
      decodeUserData(renderUserData(spec({ noProxy }))).files.get("/etc/systemd/system/agentpools-launcher.service")
        ?.content as string;
    assert.ok(unit("*").split("\n").includes('Environment="NO_PROXY=*"'));
    assert.ok(unit(".internal,*:443,*").split("\n").includes('Environment="NO_PROXY=*"'));
    assert.ok(unit(".internal,*.corp").split("\n").includes('Environment="NO_PROXY=.internal,*.corp,169.254.169.254"'));
  });

  it("installs Node.js, Docker and gVisor's pinned release checked against the digest it carries, then starts the services", () => {
    const script = decodeUserData(renderUserData(spec())).script;
    assert.match(script, /^retry dnf install -y nodejs24 amazon-cloudwatch-agent docker$/m);
    assert.match(
      script,
      new RegExp(
        `^retry curl -fsSL --proxy 'http://proxy.internal:3128' -o /tmp/runsc https://storage.googleapis.com/gvisor/releases/release/${GVISOR.release}/x86_64/runsc$`,
        "m",
      ),
    );
    assert.ok(!script.includes("latest"), "never the moving release/latest");
    assert.match(script, /systemctl enable --now docker agentpools-launcher.service\n$/);
    assert.match(script, /echo proxy='http:\/\/proxy.internal:3128' >> \/etc\/dnf\/dnf.conf/);
    const arm = decodeUserData(renderUserData(spec({ architecture: "arm64" }))).script;
    assert.ok(
      arm.includes(`/aarch64/runsc`) && arm.includes(GVISOR.sha512.aarch64),
      "Graviton instances get the arm64 binary and its digest",
    );
    const plain = decodeUserData(
      renderUserData(spec({ docker: false, gvisor: false, httpsProxy: undefined, caCertificates: undefined })),
    ).script;
    assert.doesNotMatch(plain.replace(/^base64 .*$/m, ""), /docker|runsc|proxy|update-ca-trust/);
  });

  it("the Flows process executor's instance: bubblewrap, setpriv and nftables, three capabilities, the metadata service refused to the runtimes' uids", () => {
    const decoded = decodeUserData(
      renderUserData(
        spec({ role: "flows-agent", docker: false, gvisor: false, runtimeSandbox: { uids: "1900000000-1900000255" } }),
      ),
    );
    assert.match(
      decoded.script,
      /^retry dnf install -y nodejs24 amazon-cloudwatch-agent bubblewrap util-linux nftables$/m,
    );
    const unit = (decoded.files.get("/etc/systemd/system/agentpools-flows-agent.service")?.content as string).split(
      "\n",
    );
    for (const line of [
      "ExecStartPre=+/usr/sbin/nft -f /etc/agentpools/runtimes.nft",
      "AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL",
      "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL",
      "User=agentpools",
      "NoNewPrivileges=true",
    ]) {
      assert.ok(unit.includes(line), `unit lacks ${line}`);
    }
    assert.ok(
      unit.indexOf("ExecStartPre=+/usr/sbin/nft -f /etc/agentpools/runtimes.nft") <
        unit.findIndex((line) => line.startsWith("ExecStart=")),
      "the rules before the agent",
    );
    const rules = decoded.files.get("/etc/agentpools/runtimes.nft")?.content as string;
    // Idempotent on every start: made, deleted, made again; both addresses of the service, only for the runtimes' uids.
    assert.match(rules, /^table inet agentpools\ndelete table inet agentpools\ntable inet agentpools \{/);
    assert.match(rules, /type filter hook output priority 0;/);
    assert.match(rules, /meta skuid 1900000000-1900000255 ip daddr 169\.254\.169\.254 reject/);
    assert.match(rules, /meta skuid 1900000000-1900000255 ip6 daddr fd00:ec2::254 reject/);
    // Without the process executor: none of it.
    const docker = decodeUserData(renderUserData(spec({ role: "flows-agent" })));
    assert.ok(
      !docker.files.has("/etc/agentpools/runtimes.nft") &&
        !/bubblewrap|CAP_|nft/.test(docker.script + [...docker.files.values()].map((f) => f.content).join("")),
    );
  });

  it("the launcher's unit keeps CAP_DAC_OVERRIDE and CAP_FOWNER, ambient and bounding, as systemd takes them; no other role any", () => {
    // capabilities(7)'s names; systemd refuses an unknown one, and a service of its own user gets ambient ones only
    // within its bounding set (systemd.exec(5)), whatever NoNewPrivileges says.
    const known = /^CAP_(CHOWN|DAC_OVERRIDE|DAC_READ_SEARCH|FOWNER|FSETID|KILL|SETGID|SETUID|SETPCAP|SYS_ADMIN)$/;
    const unitOf = (overrides: Partial<UserDataSpec>) => {
      const decoded = decodeUserData(renderUserData(spec(overrides)));
      const role = overrides.role ?? "launcher";
      return (decoded.files.get(`/etc/systemd/system/agentpools-${role}.service`)?.content as string).split("\n");
    };
    const capabilities = (unit: string[], key: string) =>
      unit.filter((line) => line.startsWith(`${key}=`)).flatMap((line) => line.slice(key.length + 1).split(" "));
    const launcher = unitOf({});
    const ambient = capabilities(launcher, "AmbientCapabilities");
    assert.deepEqual(ambient, ["CAP_DAC_OVERRIDE", "CAP_FOWNER"]);
    assert.deepEqual(
      capabilities(launcher, "CapabilityBoundingSet"),
      ambient,
      "the bounding set is those two, no more",
    );
    assert.ok(ambient.every((name) => known.test(name)));
    for (const line of ["User=agentpools", "NoNewPrivileges=true", "ProtectSystem=strict", "ProtectHome=true"])
      assert.ok(launcher.includes(line), `the launcher's unit lacks ${line}`);
    for (const role of ["vcs-agent", "flows-agent"] as const) {
      const unit = unitOf({ role, docker: false, gvisor: false, config: { ...spec().config, role } });
      assert.deepEqual(capabilities(unit, "AmbientCapabilities"), [], `${role}: none`);
    }
  });

  it("refuses a gVisor binary that is not the pinned release, byte for byte", () => {
    const script = decodeUserData(renderUserData(spec())).script;
    const check = script.split("\n").find((l) => l.includes("sha512sum -c")) as string;
    const dir = scratchDir("runsc-");
    const binary = path.join(dir, "runsc");
    writeFileSync(binary, "a runsc that is not the release");
    const run = (line: string) =>
      spawnSync("/bin/bash", ["-c", line.replace("/tmp/runsc", binary)], { encoding: "utf8" });
    assert.notEqual(run(check).status, 0, "a substituted binary fails the check");
    // The check passes exactly when the digest matches: the same line with this file's digest.
    const digest = createHash("sha512").update(readFileSync(binary)).digest("hex");
    assert.equal(run(check.replace(GVISOR.sha512.x86_64, digest)).status, 0);
  });

  it("keeps nothing of a run's output on the host: Docker's logging driver is none", () => {
    const daemon = JSON.parse(
      decodeUserData(renderUserData(spec())).files.get("/etc/docker/daemon.json")?.content as string,
    );
    assert.equal(daemon["log-driver"], "none");
  });

  it("the CloudWatch agent reaches AWS as the runtime does: through the proxy only with awsApisViaProxy; the log file kept small", () => {
    const files = (extra: Partial<UserDataSpec>) => decodeUserData(renderUserData(spec(extra))).files;
    const proxied = files({ awsApisViaProxy: true }).get("/opt/aws/amazon-cloudwatch-agent/etc/common-config.toml");
    assert.equal(
      proxied?.content,
      '[proxy]\nhttps_proxy = "http://proxy.internal:3128"\nno_proxy = "169.254.169.254"\n',
      "its proxy in its own file (its unit does not see the runtime's environment), the metadata service around it",
    );
    assert.ok(!files({}).has("/opt/aws/amazon-cloudwatch-agent/etc/common-config.toml"), "else straight to AWS");
    // Cut in place (the unit holds the file open), the pattern covering the file the unit writes.
    const rotation = files({}).get("/etc/logrotate.d/agentpools")?.content ?? "";
    const unit = files({}).get("/etc/systemd/system/agentpools-launcher.service")?.content ?? "";
    const [, logFile] = /^StandardOutput=append:(.+)$/m.exec(unit) ?? [];
    const [pattern] = rotation.split(" ");
    assert.ok(logFile && path.matchesGlob(logFile, pattern), `${pattern} covers ${logFile}`);
    assert.match(rotation, /^ copytruncate$/m);
    assert.match(rotation, /^ size 64M$/m);
  });

  it("trusts the custom CAs before the first download, whether carried inline or read from SSM", () => {
    const inline = decodeUserData(renderUserData(spec())).script.split("\n");
    assert.ok(
      inline.indexOf("update-ca-trust extract") < inline.findIndex((l) => l.startsWith("retry dnf install")),
      "dnf may pass a TLS-inspecting proxy",
    );

    const fromSsm = decodeUserData(
      renderUserData(
        spec({ caCertificates: undefined, caCertificatesParameter: { name: "/agentpools/g/ca-certificates" } }),
      ),
    );
    assert.ok(!fromSsm.files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"));
    assert.match(
      fromSsm.files.get("/etc/systemd/system/agentpools-launcher.service")?.content as string,
      /NODE_EXTRA_CA_CERTS=\/etc\/pki\/ca-trust\/source\/anchors\/agentpools.pem/,
    );
    const lines = fromSsm.script.split("\n");
    const fetch = lines.find((l) => l.startsWith("retry aws ssm get-parameter")) as string;
    assert.ok(lines.indexOf(fetch) < lines.indexOf("update-ca-trust extract"));
    // Run that very line with a stand-in AWS CLI: it must ask for exactly this parameter, in the pool's region, and write its value where Node and update-ca-trust look.
    const aws = standIns({
      aws: `echo "$AWS_DEFAULT_REGION" > '${scratchDir("r-")}/region'; cat <<'EOF'\n${CA_EC.trim()}\nEOF`,
    });
    const dir = scratchDir("ca-fetch-");
    const result = runBootPiece(fromSsm.script, [fetch.replace("/etc/pki/ca-trust/source/anchors", dir)], aws.dir);
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(aws.calls("aws"), [
      "ssm get-parameter --name /agentpools/g/ca-certificates --query Parameter.Value --output text",
    ]);
    assert.equal(readFileSync(path.join(dir, "agentpools.pem"), "utf8"), CA_EC);
    assert.match(fromSsm.script, /^export AWS_DEFAULT_REGION=eu-west-1$/m);
  });

  describe("a boot step that fails", () => {
    const script = decodeUserData(renderUserData(spec())).script;
    const dnfLine = script.split("\n").find((l) => l.startsWith("retry dnf install")) as string;

    it("is tried again with growing pauses, and a success carries on without a word to AWS", () => {
      const bin = standIns({ dnf: `[ $(wc -l < "$0.calls") -ge 3 ]`, sleep: "", aws: "", poweroff: "" });
      const result = runBootPiece(script, [dnfLine, "echo carried on"], bin.dir);
      assert.equal(result.status, 0, result.stderr);
      assert.equal(result.stdout.trim(), "carried on");
      assert.equal(bin.calls("dnf").length, 3);
      assert.deepEqual(bin.calls("sleep"), ["3", "12"]);
      assert.deepEqual(bin.calls("aws"), []);
    });

    it("for good: says why in the pool's log group and powers off (terminating the instance), so the group replaces it at once", () => {
      const bin = standIns({ dnf: "exit 1", sleep: "", aws: "", poweroff: "" });
      const result = runBootPiece(script, [dnfLine, "echo never reached"], bin.dir);
      assert.equal(result.status, 1);
      assert.ok(!result.stdout.includes("never reached"));
      assert.equal(bin.calls("dnf").length, 5, "five attempts");
      assert.deepEqual(bin.calls("sleep"), ["3", "12", "27", "48"]);
      const [log, ...rest] = bin.calls("aws");
      assert.deepEqual(rest, []);
      assert.match(
        log,
        /^logs put-log-events --log-group-name \/agentpools\/agentpools-build-1a2b3c4d --log-stream-name boot --log-events timestamp=[0-9]{13},message="i-0123456789abcdef0: boot failed: dnf install -y nodejs24 amazon-cloudwatch-agent docker"$/,
      );
      assert.equal(bin.calls("poweroff").length, 1);
    });

    it("and the log group cannot be reached: the instance powers off all the same", () => {
      const bin = standIns({ dnf: "exit 1", sleep: "", aws: "exit 255", poweroff: "" });
      const result = runBootPiece(script, [dnfLine], bin.dir);
      assert.equal(result.status, 1);
      assert.equal(bin.calls("poweroff").length, 1);
    });

    it("a gVisor download that does not match its digest is a failure of its own", () => {
      const bin = standIns({ curl: 'echo tampered > "${@: -2:1}"', sleep: "", aws: "", poweroff: "", install: "" });
      const lines = script.split("\n").filter((l) => l.includes("/tmp/runsc"));
      const dir = scratchDir("dl-");
      const result = runBootPiece(
        script,
        lines.map((l) => l.replaceAll("/tmp/runsc", `${dir}/runsc`)),
        bin.dir,
      );
      assert.equal(result.status, 1);
      assert.match(bin.calls("aws")[0], /boot failed: sha512sum -c"$/);
      assert.deepEqual(bin.calls("install"), [], "never installed");
    });
  });

  it("refuses a value with a line break bound for the unit or the boot script: it would be a directive of its own", () => {
    for (const httpsProxy of [
      "http://proxy.internal:3128/\nExecStartPre=+/bin/sh -c id\nUser=root",
      "http://p:3128/\r",
      "http://p/\0",
    ])
      assert.throws(() => renderUserData(spec({ httpsProxy })), /(httpsProxy|HTTPS_PROXY) must be one line/);
  });

  it("refuses a file with a NUL byte: bash would drop it as it reads, and a line 'EOF\\0' would end the heredoc", () => {
    const caCertificates = `${CA_EC}\nEOF\0\necho ran > /tmp/pwned\n`;
    assert.throws(
      () => renderUserData(spec({ caCertificates })),
      /holds a NUL byte: it cannot travel in the boot script/,
    );
  });

  it("gives the same bytes for the same inputs, with a fixed gzip header", () => {
    const a = renderUserData(spec());
    const b = renderUserData(spec());
    assert.ok(a.equals(b));
    assert.equal(a.readUInt32LE(4), 0, "no modification time");
    assert.equal(a[9], 3, "OS byte is Unix");
    assert.ok(!a.equals(renderUserData(spec({ stopTimeoutSeconds: 631 }))));
  });

  it("carries a bundle travelling alone as the smallest of Brotli's distance parameters, which decodes to it", () => {
    const bundle = runtimeBundle("launcher", ec2Variant("launcher", {}));
    const packed = Buffer.from(packBundle(bundle), "base64");
    assert.equal(brotliDecompressSync(packed).toString("utf8"), bundle);
    // Each parameter set, compressed here: the bundle's bytes are the smallest of them (Brotli's default first).
    const sizes = Array.from(
      { length: 16 },
      (_, direct) =>
        brotliCompressSync(Buffer.from(bundle), {
          params: { ...BROTLI_PARAMS, [constants.BROTLI_PARAM_NPOSTFIX]: 0, [constants.BROTLI_PARAM_NDIRECT]: direct },
        }).length,
    );
    assert.equal(packed.length, Math.min(...sizes));
    // And user-data decodes back to the bundle it was given.
    const alone = spec({
      bundle,
      configParameter: { name: "/agentpools/agentpools-build-1a2b3c4d/config", version: 3 },
    });
    assert.equal(decodeUserData(renderUserData(alone)).files.get(bundlePath("launcher"))?.content, bundle);
  });

  it("refuses user-data over 16,384 gzipped bytes, naming the pool and the size", () => {
    const noise = `${randomBytes(24_000).toString("base64")}\n`; // incompressible past the limit
    assert.throws(
      () => renderUserData(spec({ pool: "noisy", extraFiles: [{ path: "/etc/agentpools/noise", content: noise }] })),
      (e: UserDataTooLargeError) =>
        e instanceof UserDataTooLargeError &&
        e.pool === "noisy" &&
        e.size > USER_DATA_LIMIT &&
        e.message.includes(`${e.size} bytes`) &&
        e.message.includes('"noisy"'),
    );
  });
});
