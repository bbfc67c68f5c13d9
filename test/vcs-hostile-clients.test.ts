import assert from "node:assert/strict";
import type { VcsAgentSettings } from "../agent/config/vcs-agent";
import { createServiceKey } from "../gateway/auth";
import { createPool } from "../gateway/pools";
import { LocalVcs } from "../devkit/local-vcs";
import { PATH_FAMILIES, QUERY_ATTACKS } from "../devkit/attacks";
import { eventually } from "../devkit/helpers";
import { statuses, vcsStack } from "./vcs-stack";

/**
 * The VCS path, tried as its normal user would try it: a service (or anyone who reaches the
 * gateway) that wants a write, a delete, another project, an admin path, or all of a pool's
 * streams. Every test asserts what reached the VCS (the LocalVcs records each request its
 * strict parser read, with raw header lines and body), not only the status.
 */
describe("hostile clients on the VCS path", function () {
  this.timeout(30_000);
  let vcs: LocalVcs;
  /** What the VCS received since the mark. */
  let mark = 0;
  const since = () => vcs.received.slice(mark);
  const hitsSince = (from: number) => vcs.hits.slice(from);

  before(async () => {
    vcs = new LocalVcs();
    vcs.createRepository("group/repo.git");
    await vcs.listen();
  });
  after(() => vcs.close());

  describe("request smuggling from the client side", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      stack = await vcsStack(vcs);
      await stack.startAgent();
    });
    after(() => stack.close());
    beforeEach(() => (mark = vcs.received.length));

    const key = () => `x-agentpools-key: ${stack.keys.a.key}\r\n`;
    const close = "Connection: close\r\n";
    const smuggled = "POST /group/repo.git/git-receive-pack HTTP/1.1\r\nHost: vcs\r\nContent-Length: 4\r\n\r\n0000";

    it("a GET with a chunked body (the smuggled request inside) is refused; nothing reaches the VCS", async () => {
      const chunk = `0\r\n\r\n${smuggled}`;
      const reply = await stack.raw(
        `GET /git/group/repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: g\r\n${key()}${close}Transfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`,
      );
      assert.deepEqual(statuses(reply), [400]);
      assert.match(reply, /a GET request has no body/);
      assert.deepEqual(since(), []);
    });

    it("a GET with a Content-Length body is refused; nothing reaches the VCS", async () => {
      const body = `DELETE /api/v4/projects/group%2Frepo HTTP/1.1\r\nHost: vcs\r\n\r\n`;
      const reply = await stack.raw(
        `GET /git/api/v4/projects/group%2Frepo HTTP/1.1\r\nHost: g\r\n${key()}${close}Content-Length: ${body.length}\r\n\r\n${body}`,
      );
      assert.deepEqual(statuses(reply), [400]);
      assert.deepEqual(since(), []);
    });

    it("ambiguous framing (both lengths, two lengths, an odd Transfer-Encoding, a folded or spaced header) never gets past the gateway's parser", async () => {
      const post =
        "POST /git/api/v4/projects/group%2Frepo/merge_requests/1/notes HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nConnection: close\r\n";
      const cases = [
        `${post}${key()}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
        `${post}${key()}Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}`,
        `${post}${key()}Transfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
        `${post}${key()}Transfer-Encoding : chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
        `${post}${key()}Transfer-Encoding: identity\r\n chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`,
        `${post}${key()}Transfer-Encoding: chunked\r\n\r\n2;ext="\r\n{}\r\n0\r\n\r\n`,
      ];
      for (const bytes of cases) {
        const reply = await stack.raw(bytes);
        assert.ok(
          statuses(reply).every((status) => status === 400) && statuses(reply).length > 0,
          `${JSON.stringify(bytes)}\n-> ${reply}`,
        );
      }
      assert.deepEqual(since(), []);
    });

    it("bytes after a declared length are the client's next request, checked like any other: the VCS gets the first with its length, never the push", async () => {
      const body = '{"body":"ok"}';
      const first = `POST /git/api/v4/projects/group%2Frepo/merge_requests/1/notes HTTP/1.1\r\nHost: g\r\n${key()}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
      const reply = await stack.raw(
        first + smuggled.replace("POST /group", "POST /git/group").replace("\r\n\r\n", `\r\n${key()}${close}\r\n`),
      );
      assert.deepEqual(statuses(reply), [200, 403]);
      const received = since();
      assert.deepEqual(
        received.map((r) => `${r.method} ${r.url}`),
        ["POST /api/v4/projects/group%2Frepo/merge_requests/1/notes"],
      );
      assert.equal(received[0].body.toString(), body);
      const names = received[0].rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      assert.deepEqual(
        [names.filter((n) => n === "content-length").length, names.includes("transfer-encoding")],
        [1, false],
        "one length, ours",
      );
    });

    it("a chunked body crosses re-framed: the VCS reads exactly its bytes, and what follows the last chunk is a request of its own", async () => {
      const body = '{"body":"chunked"}';
      const chunked = `POST /git/api/v4/projects/group%2Frepo/merge_requests/1/notes HTTP/1.1\r\nHost: g\r\n${key()}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
      const reply = await stack.raw(
        chunked + `DELETE /git/api/v4/projects/group%2Frepo HTTP/1.1\r\nHost: g\r\n${key()}${close}\r\n`,
      );
      assert.deepEqual(statuses(reply), [200, 403]);
      const received = since();
      assert.deepEqual(
        received.map((r) => [r.method, r.body.toString()]),
        [["POST", body]],
      );
    });

    it("a header that must be single, given twice, is refused before anything crosses", async () => {
      for (const name of ["Authorization", "Content-Type", "Private-Token"]) {
        const reply = await stack.raw(
          `GET /git/api/v4/projects/group%2Frepo HTTP/1.1\r\nHost: g\r\n${key()}${close}${name}: one\r\n${name}: two\r\n\r\n`,
        );
        assert.deepEqual(statuses(reply), [400], name);
      }
      assert.deepEqual(since(), []);
    });
  });

  describe("path normalisation, for each vendor", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => (stack = await vcsStack(vcs)));
    after(() => stack.close());
    afterEach(async () => {
      while (stack.agents.length > 0) await stack.agents.pop()!.agent.drain(Date.now() + 1000);
    });

    // Where a spelling goes so that, normalised by the vendor's server, it would leave the
    // allowed project for an admin path; without the canonical check each matches an allowed rule.
    const templates: Record<
      VcsAgentSettings["vendor"],
      { allowed: string; attack: (s: string) => string; git: string }
    > = {
      gitlab: {
        allowed: "/api/v4/projects/group%2Frepo/repository/files/main.tf/raw",
        attack: (s) => `/api/v4/projects/group%2Frepo/repository/files/${[s, s, s, "admin"].join("%2F")}/raw`,
        git: "/group/repo.git/info/refs",
      },
      github_enterprise: {
        allowed: "/api/v3/repos/group/repo/contents/main.tf",
        attack: (s) => `/api/v3/repos/group/repo/contents/${[s, s, s, s, "admin", "users"].join("/")}`,
        git: "/group/repo.git/info/refs",
      },
      bitbucket_datacenter: {
        allowed: "/rest/api/1.0/projects/group/repos/repo/browse/main.tf",
        attack: (s) => `/rest/api/1.0/projects/group/repos/repo/browse/${[s, s, s, s, s, "admin", "users"].join("/")}`,
        git: "/scm/group/repo.git/info/refs",
      },
      azure_devops: {
        allowed: "/group/_apis/git/repositories/repo/commits/abc",
        attack: (s) => `/group/_apis/git/repositories/repo/commits/${s}`,
        git: "/group/_git/repo/info/refs",
      },
    };

    for (const [vendor, template] of Object.entries(templates) as [
      VcsAgentSettings["vendor"],
      (typeof templates)["gitlab"],
    ][]) {
      it(`${vendor}: every spelling of every family is refused, and none reaches the VCS`, async () => {
        await stack.startAgent({ vendor });
        const control = await stack.request(`/git${template.allowed}`);
        assert.equal(control.status, 200, `the allowed request itself: ${control.body}`);
        const from = vcs.hits.length;
        const refused: string[] = [];
        for (const [family, spellings] of Object.entries(PATH_FAMILIES)) {
          for (const [spelling] of spellings) {
            const target = template.attack(spelling);
            const reply = await stack.request(`/git${target}`);
            if (reply.status >= 400 && reply.status < 500) refused.push(target);
            else assert.fail(`${family}: ${target} got ${reply.status} ${reply.body}`);
          }
        }
        // The exact shape from the report: Tomcat reads "..;" as "..".
        if (vendor === "bitbucket_datacenter")
          assert.equal(
            (await stack.request("/git/rest/api/1.0/projects/group/repos/repo/browse/..;/..;/..;/..;/..;/admin/users"))
              .status,
            403,
          );
        for (const [query, reason] of QUERY_ATTACKS) {
          const reply = await stack.request(`/git${template.git}${query}`);
          assert.equal(reply.status, 403, `${query}: ${reply.body}`);
          assert.match(JSON.parse(reply.body).reason, new RegExp(reason.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
        }
        assert.deepEqual(hitsSince(from), [], "nothing reached the VCS");
        assert.ok(refused.length >= 20);
      });
    }
  });

  describe("override and rewrite headers, and credentials in the query", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      stack = await vcsStack(vcs);
      await stack.startAgent({ debugPrintAll: true });
    });
    after(() => stack.close());

    it("method overrides, URL rewrites and proxy headers never reach the VCS; the VCS's own credential does", async () => {
      mark = vcs.received.length;
      const overrides = {
        "x-http-method-override": "DELETE",
        "x-http-method": "DELETE",
        "x-method-override": "DELETE",
        "x-original-url": "/api/v4/admin/users",
        "x-rewrite-url": "/api/v4/admin/users",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-host": "admin.internal",
        "x-forwarded-proto": "https",
        "x-forwarded-prefix": "/admin",
        forwarded: "for=10.0.0.1;host=admin.internal",
        "x-real-ip": "10.0.0.1",
        "private-token": "glpat-the-vcs-credential",
      };
      const reply = await stack.request("/git/api/v4/projects/group%2Frepo", { headers: overrides });
      assert.equal(reply.status, 200);
      const [received] = since();
      const names = received.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      for (const name of Object.keys(overrides).filter((n) => n !== "private-token"))
        assert.ok(!names.includes(name), `${name} reached the VCS`);
      assert.ok(!names.includes("x-agentpools-key"), "the service key stays at the gateway");
      assert.equal(
        received.rawHeaders[received.rawHeaders.findIndex((n) => n.toLowerCase() === "host") + 1],
        new URL(vcs.url).host,
      );
      assert.equal(
        received.rawHeaders[received.rawHeaders.findIndex((n) => n.toLowerCase() === "private-token") + 1],
        "glpat-the-vcs-credential",
      );
      assert.equal(received.method, "GET");
    });

    it("credentials in the query reach the VCS but no log line, on either side", async () => {
      const secrets = ["glpat-query-secret-1", "oauth-query-secret-2", "job-query-secret-3"];
      const reply = await stack.request(
        `/git/api/v4/projects/group%2Frepo?private_token=${secrets[0]}&access_token=${secrets[1]}&job_token=${secrets[2]}&per_page=5`,
      );
      assert.equal(reply.status, 200);
      assert.equal(JSON.parse(reply.body).path.includes(secrets[0]), true, "the VCS needs them");
      // A refused request is logged too: by the agent (denied) and by the gateway (no key).
      await stack.request(`/git/api/v4/admin?private_token=${secrets[0]}`);
      await stack.request(`/git/api/v4/projects/group%2Frepo?private_token=${secrets[0]}`, { key: null });
      const agentLines = stack.agents[0].lines;
      await eventually(() => agentLines.some((l) => l.msg === "denied" && l.path.startsWith("/api/v4/admin")));
      await eventually(() => agentLines.some((l) => l.msg === "exchange" && String(l.path).includes("per_page")));
      const logged = JSON.stringify([...agentLines, ...stack.gatewayLog.lines]);
      for (const secret of secrets) assert.ok(!logged.includes(secret), `${secret} was logged`);
      assert.ok(
        agentLines.some(
          (l) =>
            l.path ===
            "/api/v4/projects/group%2Frepo?private_token=[redacted]&access_token=[redacted]&job_token=[redacted]&per_page=5",
        ),
      );
    });
  });

  describe("authentication of the service side", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      stack = await vcsStack(vcs);
      await stack.startAgent();
    });
    after(() => stack.close());

    const endpoints: [method: string, path: string, body?: string][] = [
      ["GET", "/"],
      ["GET", "/_agentpools/status"],
      ["GET", "/_agentpools/api/pools"],
      ["POST", "/_agentpools/api/flows/git/run", '{"code":"1"}'],
      ["POST", "/_agentpools/api/workers/git/runs", '{"image":"alpine:3","commands":["id"]}'],
      ["GET", "/_agentpools/api/workers/git/runs"],
      ["GET", "/_agentpools/api/workers/git/runs/00000000-0000-0000-0000-000000000000"],
      ["GET", "/_agentpools/api/workers/git/runs/00000000-0000-0000-0000-000000000000/logs?follow=1"],
      ["GET", "/git/api/v4/projects/group%2Frepo"],
      ["GET", "/git/group/repo.git/info/refs?service=git-upload-pack"],
      ["POST", "/git/group/repo.git/git-upload-pack", "0000"],
      ["GET", "/nowhere/at/all"],
      ["GET", "/_agentpools/anything"],
    ];

    it("every service-side endpoint answers 401 without a key, with a wrong one, or with one made up; nothing crosses", async () => {
      const from = vcs.hits.length;
      const forged = `apk1.${stack.keys.a.definition.id}.${"A".repeat(43)}`;
      for (const [method, path, body] of endpoints) {
        for (const key of [null, forged, "apk1.000000000000.AAAA", stack.pool.token]) {
          const reply = await stack.request(path, {
            method,
            body,
            key,
            headers: body ? { "content-type": "application/json" } : {},
          });
          assert.equal(
            reply.status,
            401,
            `${method} ${path} with ${key && key.slice(0, 12)}: ${reply.status} ${reply.body}`,
          );
          assert.match(String(reply.headers["www-authenticate"]), /^Bearer/);
        }
      }
      assert.deepEqual(hitsSince(from), []);
      assert.equal(stack.gateway.workers.summary("git").queued, 0);
    });

    it("on the VCS entry, Authorization belongs to the VCS: a key there is not the gateway's and crosses as sent", async () => {
      const reply = await stack.request("/git/api/v4/projects/group%2Frepo", {
        key: null,
        headers: { authorization: `Bearer ${stack.keys.a.key}` },
      });
      assert.equal(reply.status, 401);
      const api = await stack.request("/_agentpools/api/pools", {
        key: null,
        headers: { authorization: `Bearer ${stack.keys.a.key}` },
      });
      assert.equal(api.status, 200, "the gateway's own API takes it as a bearer token");
    });

    it("a key limited to some pools is refused (403) elsewhere, and does not see the others", async () => {
      const other = createServiceKey("other pools only", ["elsewhere"]);
      const scoped = await vcsStack(vcs, {
        keys: [other.definition],
        pools: [createPool("elsewhere", "vcs", "http://127.0.0.1:1").pool],
      });
      try {
        await scoped.startAgent();
        const from = vcs.hits.length;
        assert.equal((await scoped.request("/git/api/v4/projects/group%2Frepo", { key: other.key })).status, 403);
        assert.equal((await scoped.request("/_agentpools/api/workers/git/runs", { key: other.key })).status, 403);
        const pools = JSON.parse((await scoped.request("/_agentpools/api/pools", { key: other.key })).body).pools;
        assert.deepEqual(
          pools.map((p: { name: string }) => p.name),
          ["elsewhere"],
        );
        assert.ok(!(await scoped.request("/", { key: other.key })).body.includes("<td>git</td>"));
        assert.deepEqual(hitsSince(from), []);
      } finally {
        await scoped.close();
      }
    });

    it("the status page is open to loopback only when the gateway says so", async () => {
      const open = await vcsStack(vcs, { statusOnLoopback: true });
      try {
        assert.equal((await open.request("/", { key: null })).status, 200);
        assert.equal(
          (await open.request("/_agentpools/api/pools", { key: null })).status,
          401,
          "the API still needs a key",
        );
      } finally {
        await open.close();
      }
      assert.equal((await stack.request("/", { key: null })).status, 401);
    });
  });
});
