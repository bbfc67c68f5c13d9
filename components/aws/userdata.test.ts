import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { execSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { gunzipSync } from "node:zlib";
import { decodeUserData, renderUserData, USER_DATA_LIMIT, UserDataTooLargeError, type UserDataSpec } from "./userdata";
import { scratchDir } from "../../devkit/helpers";

const CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2V4YW1wbGU=\n-----END CERTIFICATE-----\n";

function spec(overrides: Partial<UserDataSpec> = {}): UserDataSpec {
  return {
    pool: "build",
    role: "launcher",
    bundle: '"use strict";var a="it\'s $HOME `x` \\"quoted\\"";console.log(a);\n',
    config: {
      role: "launcher",
      pool: "build",
      env: { SPACELIFT_WORKER_NETWORK: "bridge", SPACELIFT_MASK_ENVS: "A,B" },
      drainTimeoutSeconds: 600,
      aws: { secretArn: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x", autoScalingGroupName: "g", launchHookName: "l", terminationHookName: "t", logGroupName: "/agentpools/g" },
    },
    nodeMajor: 24,
    docker: true,
    gvisor: true,
    registryMirror: "https://mirror.internal",
    caCertificates: CERT,
    httpsProxy: "http://proxy.internal:3128",
    noProxy: ".internal",
    extraFiles: [{ path: "/etc/agentpools/policy", content: "allow everything 'quoted' %d\n", permissions: "0644" }],
    stopTimeoutSeconds: 630,
    ...overrides,
  };
}

describe("user-data", () => {
  it("decodes back to exactly the bundle, configuration and files rendered", () => {
    const input = spec();
    const decoded = decodeUserData(renderUserData(input));
    assert.deepEqual(decoded.parts.map((p) => p.contentType), ["text/cloud-config", "text/x-shellscript"]);
    assert.equal(decoded.files.get("/opt/agentpools/launcher.js")?.content, input.bundle);
    assert.deepEqual(JSON.parse(decoded.files.get("/etc/agentpools/launcher.json")?.content as string), input.config);
    assert.equal(decoded.files.get("/etc/agentpools/policy")?.content, "allow everything 'quoted' %d\n");
    assert.equal(decoded.files.get("/etc/pki/ca-trust/source/anchors/agentpools.pem")?.content, CERT);
    assert.deepEqual(JSON.parse(decoded.files.get("/etc/docker/daemon.json")?.content as string), {
      "log-driver": "journald",
      "live-restore": true,
      runtimes: { runsc: { path: "/usr/local/bin/runsc" } },
      "registry-mirrors": ["https://mirror.internal"],
      proxies: { "https-proxy": "http://proxy.internal:3128", "no-proxy": ".internal" },
    });
  });

  it("unpacks the Brotli-packed bundle with the boot script's own command, byte for byte", () => {
    const input = spec();
    const decoded = decodeUserData(renderUserData(input));
    const packed = decoded.files.get("/opt/agentpools/launcher.js.br");
    assert.equal(packed?.encoding, "b64", "cloud-init decodes it to binary");
    const command = decoded.script.split("\n").find((line) => line.includes("brotliDecompressSync")) as string;
    assert.ok(decoded.script.indexOf(command) > decoded.script.indexOf("dnf install"), "after Node.js is installed");
    assert.ok(decoded.script.indexOf(command) < decoded.script.indexOf("systemctl enable --now agentpools"), "before the service starts");
    // Run that very command here, with this machine's node and a scratch directory for /opt/agentpools.
    const dir = scratchDir("unpack-");
    writeFileSync(path.join(dir, "launcher.js.br"), Buffer.from(packed?.content as string, "base64"));
    const local = command.replace("/usr/bin/node-24", JSON.stringify(process.execPath)).replaceAll("/opt/agentpools", dir);
    execSync(local, { shell: "/bin/bash" });
    assert.equal(readFileSync(path.join(dir, "launcher.js"), "utf8"), input.bundle);
  });

  it("runs the role as a systemd service that restarts on failure and stops with SIGTERM in time to drain", () => {
    const unit = decodeUserData(renderUserData(spec())).files.get("/etc/systemd/system/agentpools-launcher.service")?.content as string;
    for (const line of ["ExecStart=/usr/bin/node-24 --max-semi-space-size=1 --no-concurrent-recompilation /opt/agentpools/launcher.js", "Restart=on-failure", "KillSignal=SIGTERM", "TimeoutStopSec=630", "User=agentpools", "NoNewPrivileges=true", "SupplementaryGroups=docker", 'Environment="AGENTPOOLS_CONFIG=/etc/agentpools/launcher.json"', 'Environment="NODE_EXTRA_CA_CERTS=/etc/pki/ca-trust/source/anchors/agentpools.pem"', 'Environment="NO_PROXY=.internal,169.254.169.254"']) {
      assert.ok(unit.split("\n").includes(line), `unit lacks ${line}`);
    }
    const vcsUnit = decodeUserData(renderUserData(spec({ role: "vcs-agent", docker: false, gvisor: false }))).files.get("/etc/systemd/system/agentpools-vcs-agent.service")?.content as string;
    assert.ok(!vcsUnit.includes("docker"), "a role without containers gets no Docker access");
  });

  it("installs Node.js, Docker and a checked gVisor, then starts the service", () => {
    const script = decodeUserData(renderUserData(spec())).script;
    assert.match(script, /^#!\/bin\/bash\n/);
    assert.match(script, /dnf install -y nodejs24 docker\n/);
    assert.match(script, /sha512sum -c runsc.sha512\n/);
    assert.match(script, /systemctl enable --now agentpools-launcher.service\n$/);
    assert.match(script, /echo proxy='http:\/\/proxy.internal:3128' >> \/etc\/dnf\/dnf.conf/);
    const plain = decodeUserData(renderUserData(spec({ docker: false, gvisor: false, httpsProxy: undefined, caCertificates: undefined }))).script;
    assert.doesNotMatch(plain, /docker|runsc|proxy|update-ca-trust/);
  });

  it("trusts the custom CAs before the first download, whether carried inline or read from SSM", () => {
    const inline = decodeUserData(renderUserData(spec())).script.split("\n");
    assert.ok(inline.indexOf("update-ca-trust extract") < inline.findIndex((l) => l.startsWith("dnf install")), "dnf may pass a TLS-inspecting proxy");

    const fromSsm = decodeUserData(renderUserData(spec({ caCertificates: undefined, caCertificatesParameter: { name: "/agentpools/g/ca-certificates", region: "eu-west-1" } })));
    assert.ok(!fromSsm.files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"));
    assert.match(fromSsm.files.get("/etc/systemd/system/agentpools-launcher.service")?.content as string, /NODE_EXTRA_CA_CERTS=\/etc\/pki\/ca-trust\/source\/anchors\/agentpools.pem/);
    const lines = fromSsm.script.split("\n");
    const fetch = lines.find((l) => l.startsWith("aws ssm get-parameter")) as string;
    assert.ok(lines.indexOf(fetch) < lines.indexOf("update-ca-trust extract"));
    // Run that very line with a stand-in AWS CLI: it must ask for exactly this parameter and write its value where Node and update-ca-trust look.
    const dir = scratchDir("ca-fetch-");
    writeFileSync(path.join(dir, "value"), CERT);
    writeFileSync(path.join(dir, "aws"), `#!/bin/sh\nprintf '%s\\n' "$@" > '${dir}/argv'\ncat '${dir}/value'\n`, { mode: 0o755 });
    execSync(fetch.replace("/etc/pki/ca-trust/source/anchors", dir), { shell: "/bin/bash", env: { PATH: `${dir}:${process.env.PATH}` } });
    assert.deepEqual(readFileSync(path.join(dir, "argv"), "utf8").trim().split("\n"), ["ssm", "get-parameter", "--region", "eu-west-1", "--name", "/agentpools/g/ca-certificates", "--query", "Parameter.Value", "--output", "text"]);
    assert.equal(readFileSync(path.join(dir, "agentpools.pem"), "utf8"), CERT);
  });

  it("gives the same bytes for the same inputs, with a fixed gzip header", () => {
    const a = renderUserData(spec());
    const b = renderUserData(spec());
    assert.ok(a.equals(b));
    assert.equal(a.readUInt32LE(4), 0, "no modification time");
    assert.equal(a[9], 3, "OS byte is Unix");
    assert.ok(!a.equals(renderUserData(spec({ stopTimeoutSeconds: 631 }))));
  });

  it("refuses user-data over 16,384 gzipped bytes, naming the pool and the size", () => {
    const noise = randomBytes(24_000).toString("base64"); // incompressible past the limit
    assert.throws(
      () => renderUserData(spec({ pool: "noisy", extraFiles: [{ path: "/etc/agentpools/noise", content: noise, permissions: "0644" }] })),
      (e: UserDataTooLargeError) => e instanceof UserDataTooLargeError && e.pool === "noisy" && e.size > USER_DATA_LIMIT && e.message.includes(`${e.size} bytes`) && e.message.includes('"noisy"'),
    );
  });

  it("is cloud-init multipart MIME with a boundary that appears nowhere in the content", () => {
    const text = gunzipSync(renderUserData(spec())).toString("utf8");
    const boundary = /boundary="([^"]+)"/.exec(text)?.[1] as string;
    assert.match(text, /^Content-Type: multipart\/mixed; boundary="agentpools-[0-9a-f]{32}"\nMIME-Version: 1.0\n\n--/);
    assert.equal(text.split(`--${boundary}`).length, 4, "two parts and a closing delimiter");
    assert.ok(text.endsWith(`--${boundary}--\n`));
  });
});
