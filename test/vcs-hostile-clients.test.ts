import assert from "node:assert/strict";
import http from "node:http";
import type net from "node:net";
import { Readable } from "node:stream";
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
      // The push is refused by the gateway (its body is not a write's JSON) before any agent sees it.
      assert.deepEqual(statuses(reply), [200, 400]);
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

  describe("writes, other projects, connection logins, headers and name case (the red team's findings)", () => {
    let stack: Awaited<ReturnType<typeof vcsStack>>;
    before(async () => {
      vcs.createRepository("secret/keys.git");
      stack = await vcsStack(vcs);
    });
    after(() => stack.close());
    afterEach(async () => {
      while (stack.agents.length > 0) await stack.agents.pop()!.agent.drain(Date.now() + 1000);
    });
    const post = (target: string, body: string, method = "POST") =>
      stack.request(`/git${target}`, { method, body, headers: { "content-type": "application/json" } });

    it("feedback writes cross as re-serialised JSON of their own fields; a quick action (a line starting with /) or another field never reaches the VCS", async () => {
      await stack.startAgent({ vendor: "gitlab" });
      const notes = "/api/v4/projects/group%2Frepo/merge_requests/7/notes";
      const refused: [string, string, string?][] = [
        [notes, JSON.stringify({ body: "/approve\n/merge" })],
        [notes, JSON.stringify({ body: "Looks good.\n  /merge" })],
        [notes, '{"body":"\\u002fmerge"}'],
        [notes, '{"body":"ok","body":"/merge"}'],
        [notes, JSON.stringify({ body: "ok", merge_request_diff_head_sha: "abc" })],
        [`${notes}/123`, JSON.stringify({ body: "/target_branch main" }), "PUT"],
        [notes, JSON.stringify(["/merge"])],
        [notes, "not json"],
        [
          "/api/v4/projects/group%2Frepo/statuses/0123abc",
          JSON.stringify({ state: "success", name: "ci", sudo: "root" }),
        ],
      ];
      mark = vcs.received.length;
      for (const [target, body, method] of refused) {
        const reply = await post(target, body, method);
        assert.equal(reply.status, 400, `${body}: ${reply.body}`);
      }
      assert.deepEqual(since(), [], "no refused write reached the VCS");

      // The intended writes still cross, as what was checked: a duplicate key cannot hide a second reading.
      const allowed: [string, string, string][] = [
        [notes, '{"body":"/merge","body":"Plan: 1 to add."}', '{"body":"Plan: 1 to add."}'],
        [
          notes,
          JSON.stringify({ body: "path a/b and https://x/y" }),
          JSON.stringify({ body: "path a/b and https://x/y" }),
        ],
        [
          "/api/v4/projects/group%2Frepo/statuses/0123abc",
          JSON.stringify({ state: "success", name: "spacelift/stack", target_url: "https://x" }),
          JSON.stringify({ state: "success", name: "spacelift/stack", target_url: "https://x" }),
        ],
      ];
      for (const [target, body, expected] of allowed) {
        mark = vcs.received.length;
        const reply = await post(target, body);
        assert.equal(reply.status, 200, reply.body);
        const [received] = since();
        assert.equal(received.body.toString(), expected);
      }
    });

    it("other vendors' feedback writes: only their fields (no check-run actions), no line starting with /", async () => {
      const cases: [VcsAgentSettings["vendor"], string, string, object, number][] = [
        [
          "github_enterprise",
          "POST",
          "/api/v3/repos/group/repo/check-runs",
          { name: "plan", head_sha: "abc", actions: [] },
          400,
        ],
        ["github_enterprise", "PATCH", "/api/v3/repos/group/repo/issues/comments/9", { body: "/lgtm" }, 400],
        [
          "github_enterprise",
          "POST",
          "/api/v3/repos/group/repo/statuses/abc",
          { state: "success", context: "plan" },
          200,
        ],
        [
          "bitbucket_datacenter",
          "POST",
          "/rest/api/latest/projects/group/repos/repo/commits/abc/builds",
          { state: "SUCCESSFUL", key: "k", x: 1 },
          400,
        ],
        [
          "azure_devops",
          "POST",
          "/group/_apis/git/repositories/repo/pullRequests/1/threads",
          { comments: [{ content: "/approve" }] },
          400,
        ],
        [
          "azure_devops",
          "POST",
          "/group/_apis/git/repositories/repo/commits/abc/statuses",
          { state: "succeeded", context: { name: "plan" } },
          200,
        ],
      ];
      for (const vendor of new Set(cases.map(([v]) => v))) {
        await stack.startAgent({ vendor });
        for (const [, method, target, body, status] of cases.filter(([v]) => v === vendor)) {
          mark = vcs.received.length;
          const reply = await post(target, JSON.stringify(body), method);
          assert.equal(reply.status, status, `${vendor} ${target}: ${reply.body}`);
          assert.deepEqual(
            since().map((r) => r.body.toString()),
            status === 200 ? [JSON.stringify(body)] : [],
          );
        }
        await stack.agents.pop()!.agent.drain(Date.now() + 1000);
      }
    });

    it("a write's fields travel only in its checked JSON body: a query, another content type or the embedding API carry no quick action to the VCS", async () => {
      await stack.startAgent({ vendor: "gitlab" });
      const notes = "/api/v4/projects/group%2Frepo/merge_requests/7/notes";
      const json = { "content-type": "application/json" };
      const tries: [string, string, string, Record<string, string>][] = [
        ["POST", `${notes}?body=%2Fmerge`, "", {}],
        ["PUT", `${notes}/7?body=%2Fclose`, "{}", json],
        ["POST", "/api/v4/projects/group%2Frepo/statuses/abc?state=success&environment=prod", "", {}],
        [
          "POST",
          notes,
          JSON.stringify({ body: "/merge" }),
          { "content-type": "application/x-git-upload-pack-request" },
        ],
        ["POST", notes, JSON.stringify({ body: "/merge" }), { "content-type": "text/plain" }],
        ["POST", notes, JSON.stringify({ body: "/merge" }), {}],
      ];
      mark = vcs.received.length;
      for (const [method, target, body, headers] of tries) {
        const reply = await stack.request(`/git${target}`, { method, body, headers });
        assert.equal(reply.status, 400, `${method} ${target} ${JSON.stringify(headers)}: ${reply.body}`);
      }
      // private://, the API a service embedding the gateway uses: the same rules.
      const write = (target: string, body: string, method = "POST") =>
        stack.gateway.request(`private://git${target}`, {
          method,
          headers: { ...json, "x-forwarded-for": "10.9.8.7", "content-encoding": "gzip" },
          body: Readable.from([Buffer.from(body)]),
        });
      await assert.rejects(write(notes, JSON.stringify({ body: "/merge\n/approve" })), /starts with \//);
      await assert.rejects(
        write(notes, JSON.stringify({ body: "/merge" }), "post"),
        /starts with \//,
        "a method in lower case",
      );
      await assert.rejects(
        stack.gateway.request(`private://git${notes}?body=%2Fmerge`, { method: "POST" }),
        /no query/,
      );
      assert.deepEqual(since(), [], "nothing refused reached the VCS");
      const answer = await write(notes, '{"body":"Plan: 1 to add.","body":"ok"}');
      assert.equal(answer.status, 200);
      answer.body.resume();
      const [received] = since();
      assert.equal(received.body.toString(), '{"body":"ok"}');
      assert.ok(
        !received.rawHeaders.some((name) => /forwarded/i.test(name)),
        "the header allowlist applies to private:// too",
      );
      assert.ok(
        !received.rawHeaders.some((name) => /content-encoding/i.test(name)),
        "the checked body is plain JSON, whatever encoding was claimed",
      );
    });

    it("write bodies held to be checked stay within the gateway's budget and one client's half of it: beyond, 503 and nothing crosses; a freed part serves the next", async () => {
      const small = await vcsStack(vcs, { writeBudgetBytes: 2 * 1024 * 1024 });
      try {
        await small.startAgent({ vendor: "gitlab" });
        const notes = "/git/api/v4/projects/group%2Frepo/merge_requests/7/notes";
        // A write that announces a MiB and sends a byte holds a MiB of the budget, its client's half.
        const hold = async (key: string) => {
          const holder = small.hold(
            `POST ${notes} HTTP/1.1\r\nHost: g\r\nx-agentpools-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n{`,
          );
          await holder.sent;
          return holder.socket;
        };
        const write = (key: string, text: string) =>
          small.request(notes, {
            method: "POST",
            key,
            body: JSON.stringify({ body: text }),
            headers: { "content-type": "application/json" },
          });
        const [a, b] = [small.keys.a.key, small.keys.b.key];
        const heldByA = await hold(a);
        mark = vcs.received.length;
        await eventually(async () => (await write(a, "a")).status === 503, 5000, "a 503 once a holds its half");
        assert.equal((await write(b, "b")).status, 200, "another client is served meanwhile");
        const heldByB = await hold(b);
        await eventually(
          async () => (await write(b, "b again")).status === 503,
          5000,
          "a 503 once the whole budget is held",
        );
        assert.deepEqual(
          since().map((r) => r.body.toString()),
          ['{"body":"b"}'],
          "no refused write crossed",
        );
        heldByA.destroy();
        await eventually(async () => (await write(a, "a again")).status === 200, 5000, "served once a part is freed");
        assert.deepEqual(
          since().map((r) => r.body.toString()),
          ['{"body":"b"}', '{"body":"a again"}'],
        );
        heldByB.destroy();
      } finally {
        await small.close();
      }
    });

    it("a query that names another project (GitLab from_project_id, GitHub owner:repo compare) never reaches the VCS", async () => {
      await stack.startAgent({ vendor: "gitlab" });
      const from = vcs.hits.length;
      for (const target of [
        "/api/v4/projects/group%2Frepo/repository/compare?from=main&to=main&from_project_id=4242",
        "/api/v4/projects/group%2Frepo/repository/compare?from=main&to=main&FROM_PROJECT_ID=4242",
      ])
        assert.equal((await stack.request(`/git${target}`)).status, 403, target);
      await stack.agents.pop()!.agent.drain(Date.now() + 1000);
      await stack.startAgent({ vendor: "github_enterprise" });
      for (const target of [
        "/api/v3/repos/group/repo/compare/main...someone:private-fork:main",
        "/api/v3/repos/group/repo/compare/main...someone%3Aprivate-fork%3amain",
      ])
        assert.equal((await stack.request(`/git${target}`)).status, 403, target);
      assert.deepEqual(vcs.hits.slice(from), []);
      assert.equal((await stack.request("/git/api/v3/repos/group/repo/compare/main...feature")).status, 200);
    });

    it("project names match without case, as the vendors read them: an excluded project in another case never reaches the VCS", async () => {
      await stack.startAgent({ vendor: "gitlab", allowedProjects: "(?!secret/).+/.+" });
      const from = vcs.hits.length;
      for (const target of ["/api/v4/projects/SECRET%2Fkeys", "/SeCrEt/keys.git/info/refs?service=git-upload-pack"])
        assert.equal((await stack.request(`/git${target}`)).status, 403, target);
      assert.deepEqual(vcs.hits.slice(from), []);
      await stack.agents.pop()!.agent.drain(Date.now() + 1000);
      await stack.startAgent({ vendor: "gitlab", allowedProjects: "Group/Repo" });
      assert.equal((await stack.request("/git/api/v4/projects/group%2Frepo")).status, 200);
    });

    it("only the headers git and the vendors' APIs read reach the VCS (no client-IP, override, sendfile or Sudo header in any spelling)", async () => {
      await stack.startAgent({ vendor: "gitlab" });
      const sent = {
        "Client-IP": "10.0.0.1",
        "True-Client-IP": "10.0.0.2",
        "X-Client-IP": "10.0.0.3",
        "X-Cluster-Client-IP": "10.0.0.4",
        "CF-Connecting-IP": "10.0.0.5",
        X_HTTP_METHOD_OVERRIDE: "DELETE",
        "X-Sendfile-Type": "X-Accel-Redirect",
        "X-Accel-Mapping": ".*=/internal/",
        Sudo: "root",
        Cookie: "_gitlab_session=x",
        "Private-Token": "glpat-the-vcs-credential",
        Accept: "application/json",
      };
      const headers = { ...sent, "content-type": "application/json" };
      mark = vcs.received.length;
      const reply = await stack.request("/git/api/v4/projects/group%2Frepo/merge_requests/1/notes", {
        method: "POST",
        headers,
        body: '{"body":"hi"}',
      });
      assert.equal(reply.status, 200);
      const [received] = since();
      const names = received.rawHeaders
        .filter((_, i) => i % 2 === 0)
        .map((n) => n.toLowerCase())
        .sort();
      assert.deepEqual(names, ["accept", "connection", "content-length", "content-type", "host", "private-token"]);
    });

    it("an NTLM or Negotiate login never authenticates a shared upstream connection: refused, and another client is never served as that user", async () => {
      const seen: { auth?: string; servedAs: string | null }[] = [];
      const logins = new WeakMap<net.Socket, string>();
      const server = http.createServer((req, res) => {
        const auth = req.headers.authorization;
        if (auth && /^(ntlm|negotiate) /i.test(auth)) logins.set(req.socket, auth.split(" ")[1]);
        const user = logins.get(req.socket) ?? null;
        seen.push({ auth, servedAs: user });
        res.writeHead(user ? 200 : 401, { "www-authenticate": "NTLM" }).end(JSON.stringify({ user }));
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const upstream = await vcsStack({
        url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      } as LocalVcs);
      try {
        await upstream.startAgent({ vendor: "azure_devops", allowedProjects: "Proj/app", parallelism: 1 });
        for (const scheme of ["NTLM", "Negotiate", "ntlm"]) {
          const a = await upstream.request("/git/_apis/connectionData", {
            headers: { authorization: `${scheme} alice-admin` },
          });
          assert.equal(a.status, 400, a.body);
        }
        const b = await upstream.request("/git/_apis/connectionData", { key: upstream.keys.b.key });
        assert.deepEqual([b.status, JSON.parse(b.body)], [401, { user: null }], "b reached the VCS, as nobody");
        // What else reached this port counts too (another test's agent may still dial a port the kernel gave out
        // again): no request of any kind carried a login or was served as a user.
        assert.deepEqual(
          seen.filter((s) => s.auth !== undefined || s.servedAs !== null),
          [],
          "no connection-bound login reached the VCS",
        );
      } finally {
        await upstream.close();
        server.close();
      }
    });
  });
});
