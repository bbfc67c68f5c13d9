import assert from "node:assert/strict";
import net from "node:net";
import { vcsAgentSettings, type VcsAgentSettings } from "../agent/config/vcs-agent";
import type { RunningAgent } from "../agent/runtime/runtime";
import { vcsAgentRole } from "../agent/vcs-agent/agent";
import { Gateway } from "../gateway/gateway";
import { LocalVcs } from "../devkit/local-vcs";
import { createPool } from "../gateway/pools";
import { capturingLogger, eventually, freePort, gitAsync, rawRequest, scratchDir, serviceKey } from "../devkit/helpers";

const work = () => scratchDir("e2e-");

describe("VCS agent and gateway, end to end with a real git client", function () {
  this.timeout(60_000);
  let vcs: LocalVcs;
  let gateway: Gateway;
  let gatewayUrl: string;
  let port: number;
  const pools = {} as Record<"git" | "other", ReturnType<typeof createPool>>;
  const agents: RunningAgent[] = [];
  const gatewayLog = capturingLogger("gateway");
  const service = serviceKey();
  /** git with the service key the gateway wants (a real client sends it as an extra header). */
  const git = (args: string[], cwd?: string) =>
    gitAsync(["-c", `http.extraHeader=x-agentpools-key: ${service.key}`, ...args], cwd);
  const request = (path: string, options: Parameters<typeof rawRequest>[2] = {}) =>
    rawRequest(gatewayUrl, path, { ...options, headers: { ...service.headers, ...options.headers } });

  async function startGateway(options: { queueTimeoutMs?: number } = {}) {
    gateway = new Gateway({
      pools: [pools.git.pool, pools.other.pool],
      keys: [service.definition],
      port,
      log: gatewayLog.log,
      ...options,
    });
    gatewayUrl = await gateway.listen();
  }

  async function startAgent(overrides: Partial<VcsAgentSettings> = {}, pool: "git" | "other" = "git") {
    const { log, lines } = capturingLogger("vcs-agent");
    const settings = vcsAgentSettings.parse({
      token: pools[pool].token,
      targetBaseEndpoint: vcs.url,
      vendor: "gitlab",
      allowedProjects: "group/repo",
      ...overrides,
    });
    const agent = await vcsAgentRole.start(settings, { log });
    agents.push(agent);
    await agent.ready;
    await eventually(() => gateway.summary().find((p) => p.name === pool)!.connections >= 1, 5000, "agent registered");
    return { agent, lines };
  }

  before(async () => {
    vcs = new LocalVcs();
    vcs.createRepository("group/repo.git", {
      "main.tf": 'resource "null_resource" "x" {}\n',
      "modules/vpc/main.tf": "# vpc\n",
    });
    vcs.commit("group/repo.git", { "CHANGELOG.md": "v2\n" }, "second commit");
    vcs.createRepository("group/repo-evil.git");
    await vcs.listen();
    port = await freePort();
    pools.git = createPool("git", "vcs", `http://127.0.0.1:${port}`);
    pools.other = createPool("other", "vcs", `http://127.0.0.1:${port}`);
    await startGateway();
  });

  afterEach(async () => {
    while (agents.length > 0) await agents.pop()!.drain(Date.now() + 2000);
  });

  after(async () => {
    await gateway.close();
    await vcs.close();
  });

  it("git clone through gateway and agent gives the same repository as a direct clone", async () => {
    const { lines } = await startAgent({ metadataTags: { instance_id: "i-0abc" } });
    const [viaGateway, direct] = [work(), work()];
    await git(["clone", "--quiet", `${gatewayUrl}/git/group/repo.git`, viaGateway]);
    await gitAsync(["clone", "--quiet", `${vcs.url}/group/repo.git`, direct]);
    for (const args of [
      ["rev-parse", "HEAD"],
      ["ls-tree", "-r", "HEAD"],
      ["for-each-ref", "--format=%(refname) %(objectname)"],
    ]) {
      assert.equal(await gitAsync(args, viaGateway), await gitAsync(args, direct), args.join(" "));
    }
    const logged = lines.filter((l) => l.project === "group/repo");
    assert.ok(
      logged.some(
        (l) =>
          l.msg === "list refs of group/repo (git fetch)" &&
          l.method === "GET" &&
          l.status === 200 &&
          l.bytes > 0 &&
          typeof l.durationMs === "number",
      ),
    );
    assert.ok(logged.some((l) => l.msg === "fetch objects of group/repo (git fetch)" && l.method === "POST"));
    assert.ok(!logged.some((l) => l.cancelled), "a completed request is not logged as cancelled");
    assert.deepEqual(gateway.summary().find((p) => p.name === "git")?.agents[0].metadata, { instance_id: "i-0abc" });

    vcs.commit("group/repo.git", { "new.tf": "# new\n" }, "third commit");
    await git(["fetch", "--quiet", "origin"], viaGateway);
    await gitAsync(["fetch", "--quiet", "origin"], direct);
    assert.equal(
      await gitAsync(["rev-parse", "origin/main"], viaGateway),
      await gitAsync(["rev-parse", "origin/main"], direct),
    );
  });

  it("refuses a project that only partly matches, and any push, before the VCS sees it", async () => {
    const { lines } = await startAgent();
    const before = vcs.hits.length;
    await assert.rejects(git(["clone", "--quiet", `${gatewayUrl}/git/group/repo-evil.git`, work()]), /403/);
    const clone = work();
    await git(["clone", "--quiet", `${gatewayUrl}/git/group/repo.git`, clone]);
    const pushed = vcs.hits.length;
    await assert.rejects(
      gitAsync(["-c", "user.name=x", "-c", "user.email=x@x", "commit", "--allow-empty", "-qm", "evil"], clone).then(
        () => git(["push", "origin", "HEAD:main"], clone),
      ),
      /403/,
    );
    assert.ok(
      !vcs.hits.slice(before).some((hit) => hit.includes("repo-evil") || hit.includes("receive-pack")),
      vcs.hits.slice(before).join("\n"),
    );
    assert.ok(vcs.hits.length - pushed === 0, "the push never reached the VCS");
    assert.ok(
      lines.some(
        (l) =>
          l.msg === "denied" &&
          l.project === "group/repo-evil" &&
          l.reason === "project group/repo-evil is not allowed" &&
          l.status === 403,
      ),
    );
    assert.ok(
      lines.some((l) => l.msg === "denied" && /git-receive-pack/.test(l.path) && /never allowed/.test(l.reason)),
    );
  });

  describe("API requests per vendor", () => {
    const cases: [VcsAgentSettings["vendor"], string, string, number][] = [
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/branches", 200],
      ["gitlab", "POST", "/api/v4/projects/group%2Frepo/merge_requests/1/notes", 200],
      ["gitlab", "DELETE", "/api/v4/projects/group%2Frepo", 403],
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo-evil/repository/branches", 403],
      ["gitlab", "GET", "/api/v4/projects/evil%2Fgroup%2Frepo", 403],
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/files/..%2F..%2Fsecrets", 403],
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/tree/%2e%2e/%2e%2e", 403],
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo//repository/tree", 403],
      ["gitlab", "GET", "/api/v4/projects/group%2Frepo/repository/tree/../../../../admin", 403],
      ["gitlab", "GET", "/api/v4/admin/users", 403],
      ["github_enterprise", "GET", "/api/v3/repos/group/repo/contents/main.tf", 200],
      ["github_enterprise", "POST", "/api/v3/repos/group/repo/statuses/abc123", 200],
      ["github_enterprise", "GET", "/api/v3/repos/group/repo-evil", 403],
      ["github_enterprise", "PUT", "/api/v3/repos/group/repo/contents/main.tf", 403],
      ["bitbucket_datacenter", "GET", "/rest/api/1.0/projects/group/repos/repo/branches", 200],
      ["bitbucket_datacenter", "GET", "/rest/api/1.0/projects/group/repos/repo/../../../admin", 403],
      ["azure_devops", "GET", "/group/_apis/git/repositories/repo/items?path=/main.tf", 200],
      ["azure_devops", "POST", "/group/_apis/git/repositories/repo/pushes", 403],
    ];
    for (const vendor of ["gitlab", "github_enterprise", "bitbucket_datacenter", "azure_devops"] as const) {
      it(`${vendor}: allowed requests reach the VCS, the rest are refused with 403 before it`, async () => {
        await startAgent({ vendor });
        for (const [, method, target, status] of cases.filter(([v]) => v === vendor)) {
          const before = vcs.hits.length;
          const body = method === "POST" ? "{}" : undefined;
          const headers = {
            authorization: "Bearer vcs-credential",
            ...(body ? { "content-type": "application/json" } : {}),
          };
          const response = await request(`/git${target}`, { method, headers, body });
          assert.equal(response.status, status, `${method} ${target}: ${response.body}`);
          if (status === 200) {
            assert.deepEqual(JSON.parse(response.body).path, target, "the VCS receives the path exactly as sent");
            assert.equal(JSON.parse(response.body).authorization, "Bearer vcs-credential");
          } else {
            assert.equal(vcs.hits.length, before, `${method} ${target} reached the VCS`);
            assert.match(JSON.parse(response.body).reason, /.+/);
          }
        }
      });
    }
  });

  it("debug-print-all logs headers and bodies with credentials redacted", async () => {
    const { lines } = await startAgent({ debugPrintAll: true });
    await request("/git/api/v4/projects/group%2Frepo/merge_requests/1/notes", {
      method: "POST",
      headers: {
        "private-token": "glpat-secret-value",
        authorization: "Bearer also-secret",
        "content-type": "application/json",
      },
      body: '{"body":"plan ok"}',
    });
    const exchange = await eventually(() => lines.find((l) => l.msg === "exchange"));
    assert.equal(exchange.requestHeaders["private-token"], "[redacted]");
    assert.equal(exchange.requestHeaders.authorization, "[redacted]");
    assert.equal(exchange.requestBody, '{"body":"plan ok"}');
    assert.equal(exchange.status, 200);
    assert.ok(!JSON.stringify(lines).includes("glpat-secret-value") && !JSON.stringify(lines).includes("also-secret"));
  });

  it("no agent connected: a clear 503", async () => {
    const response = await request("/other/api/v4/version");
    assert.equal(response.status, 503);
    assert.match(JSON.parse(response.body).error, /no agent of pool other is connected/);
    assert.equal((await request("/nowhere/x")).status, 404);
  });

  it("a wrong token, or another pool's token, is refused and logged", async () => {
    const genuine = JSON.parse(Buffer.from(pools.git.token.slice(4), "base64url").toString());
    const forged =
      "ap1." + Buffer.from(JSON.stringify({ ...genuine, secret: "not-the-secret-of-this-pool" })).toString("base64url");
    const { log } = capturingLogger("vcs-agent");
    const wrong = await vcsAgentRole.start(
      vcsAgentSettings.parse({ token: forged, targetBaseEndpoint: vcs.url, vendor: "gitlab" }),
      { log },
    );
    await assert.rejects(wrong.stopped, /refused the connection: 401/);
    const otherToken = JSON.parse(Buffer.from(pools.other.token.slice(4), "base64url").toString());
    const crossed = "ap1." + Buffer.from(JSON.stringify({ ...otherToken, pool: "git" })).toString("base64url");
    const cross = await vcsAgentRole.start(
      vcsAgentSettings.parse({ token: crossed, targetBaseEndpoint: vcs.url, vendor: "gitlab" }),
      { log },
    );
    await assert.rejects(cross.stopped, /401/);
    assert.equal(gateway.summary().find((p) => p.name === "git")?.connections, 0);
    assert.equal(gatewayLog.lines.filter((l) => l.msg === "agent refused" && l.pool === "git").length, 2);
    assert.ok(!JSON.stringify(gatewayLog.lines).includes(otherToken.secret), "the gateway never logs a secret");
  });

  it("counts connections and shows them in the JSON API and the status page", async () => {
    await startAgent({ parallelism: 2 });
    await startAgent({ parallelism: 3 });
    const api = JSON.parse((await request("/_agentpools/api/pools")).body);
    const git = api.pools.find((p: { name: string }) => p.name === "git");
    assert.equal(git.connections, 2);
    assert.deepEqual(git.agents.map((a: { parallelism: number }) => a.parallelism).sort(), [2, 3]);
    const page = await request("/");
    assert.match(page.body, /<td>git<\/td><td>vcs<\/td><td>2<\/td>/);
  });

  it("every stream busy: a bounded wait, then 503; a freed stream serves the waiter", async () => {
    await gateway.close();
    await startGateway({ queueTimeoutMs: 300 });
    const { agent } = await startAgent({ parallelism: 1 });
    assert.equal(agent.busy?.(), 0, "idle: the pool's busy metric reads 0");
    const slow = request("/git/api/v4/projects/group%2Frepo/repository/archive.zip?slow=1").catch(() => undefined);
    await eventually(() => vcs.hits.some((h) => h.includes("slow=1")));
    assert.equal(agent.busy?.(), 1, "its one stream in flight: busy share 1 (streams over parallelism)");
    const started = Date.now();
    const waited = await request("/git/api/v4/version");
    assert.equal(waited.status, 503);
    assert.match(JSON.parse(waited.body).error, /stayed busy for 300 ms/);
    assert.ok(Date.now() - started >= 250);
    void slow;
    await gateway.close();
    await startGateway();
  });

  it("a client that goes away cancels its request at the agent and the VCS", async () => {
    const { lines } = await startAgent();
    await new Promise<void>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () =>
        socket.write(
          `GET /git/api/v4/projects/group%2Frepo/repository/archive.zip?slow=2 HTTP/1.1\r\nHost: x\r\nx-agentpools-key: ${service.key}\r\n\r\n`,
        ),
      );
      socket.once("data", () => (socket.destroy(), resolve()));
    });
    await eventually(() => vcs.aborted.some((a) => a.includes("slow=2")), 3000, "the VCS saw the cancel");
    await eventually(
      () => lines.find((l) => l.cancelled === true && l.path.includes("slow=2")),
      3000,
      "the agent logged the cancel",
    );
    assert.equal(gateway.summary().find((p) => p.name === "git")?.activeRequests, 0);
  });

  it("the gateway restarted mid-traffic: agents come back by themselves and later requests succeed", async () => {
    await startAgent();
    const inFlight = request("/git/api/v4/projects/group%2Frepo/repository/archive.zip?slow=3");
    await eventually(() => vcs.hits.some((h) => h.includes("slow=3")));
    await gateway.close();
    // Cut before its head or within its body: either way never complete.
    const cut = await inFlight.catch(() => ({ complete: false }));
    assert.equal(cut.complete, false, "an answer cut by the gateway's end is not complete");
    await startGateway();
    await eventually(
      () => gateway.summary().find((p) => p.name === "git")!.connections === 1,
      15_000,
      "the agent reconnected",
    );
    const response = await request("/git/api/v4/projects/group%2Frepo");
    assert.equal(response.status, 200);
    await git(["clone", "--quiet", `${gatewayUrl}/git/group/repo.git`, work()]);
  });

  it("drain: in-flight requests finish, new ones find no agent", async () => {
    const { agent } = await startAgent();
    agents.pop();
    const inFlight = request("/git/api/v4/projects/group%2Frepo?delay=300&drain=1");
    await eventually(() => vcs.hits.some((h) => h.includes("drain=1")));
    const drained = agent.drain(Date.now() + 5000);
    await eventually(
      () => gateway.summary().find((p) => p.name === "git")!.connections === 0,
      5000,
      "no longer routed to",
    );
    assert.equal((await request("/git/api/v4/version")).status, 503);
    const finished = await inFlight;
    assert.deepEqual(
      [finished.status, finished.complete, JSON.parse(finished.body).path],
      [200, true, "/api/v4/projects/group%2Frepo?delay=300&drain=1"],
    );
    await drained;
  });

  it("with an HTTPS_PROXY, a plain http:// (loopback) gateway is still reached directly: the proxy sees nothing", async () => {
    // (The proxy's CONNECT for an https:// gateway, and NO_PROXY, are dial.test.ts's.)
    const connections: net.Socket[] = [];
    const proxy = net.createServer((client) => connections.push(client));
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    await startAgent({ httpsProxy: `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}` });
    assert.equal((await request("/git/api/v4/projects/group%2Frepo")).status, 200);
    assert.equal(connections.length, 0, "nothing reached the proxy");
    proxy.close();
  });
});
