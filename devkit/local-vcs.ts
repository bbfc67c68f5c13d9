import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

/**
 * A stand-in for a customer's internal VCS, for the demo, the tests and the benchmark:
 * repositories served by `git http-backend` (the real smart-HTTP server, streamed both
 * ways), and, for every other path, a fake API that answers with what it was asked.
 * Listens on loopback only. It records every request its (strict) parser read, with the raw
 * header lines and the body, so a test can assert what crossed to it.
 *
 * Query switches of the fake API: `slow` (a body that never ends), `hang` (no answer at all),
 * `delay=ms` (answer after a while), `size=bytes` (a body of that length, as fast as it is read).
 */
export class LocalVcs {
  readonly root: string;
  /** Requests that reached this server, in order ("GET /path"). */
  readonly hits: string[] = [];
  /** Requests whose client went away before the answer ended. */
  readonly aborted: string[] = [];
  /** `size` answers whose reader has stopped taking them (a write waits for drain): backpressure reached the VCS. */
  readonly blocked = new Set<string>();
  /** Every request read, complete with raw header lines and body, in the order each ended. */
  readonly received: { method: string; url: string; rawHeaders: string[]; body: Buffer }[] = [];
  private server = http.createServer((req, res) => this.handle(req, res));
  url = "";
  /** Whether the repositories' directory is this server's own, to remove on close. */
  private readonly ownsRoot: boolean;

  constructor(root?: string) {
    this.ownsRoot = root === undefined;
    this.root = root ?? mkdtempSync(path.join(tmpdir(), "agentpools-vcs-"));
  }

  async listen(port = 0): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(port, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
    if (this.ownsRoot) rmSync(this.root, { recursive: true, force: true });
  }

  /** Create a bare repository at `name` ("group/repo.git") with one commit of these files. */
  createRepository(name: string, files: Record<string, string | Buffer> = { "README.md": `# ${name}\n` }): string {
    const bare = path.join(this.root, name);
    mkdirSync(path.dirname(bare), { recursive: true });
    git(["init", "--quiet", "--bare", "--initial-branch=main", bare]);
    this.commit(name, files, "initial commit");
    return bare;
  }

  /** Add a commit to a repository's main branch. */
  commit(name: string, files: Record<string, string | Buffer>, message: string): void {
    const work = mkdtempSync(path.join(tmpdir(), "agentpools-work-"));
    const bare = path.join(this.root, name);
    git(["clone", "--quiet", bare, work]);
    for (const [file, content] of Object.entries(files)) {
      mkdirSync(path.dirname(path.join(work, file)), { recursive: true });
      writeFileSync(path.join(work, file), content);
    }
    git(["-C", work, "add", "--all"]);
    git([
      "-C",
      work,
      "-c",
      "user.name=agentpools",
      "-c",
      "user.email=agentpools@example.invalid",
      "commit",
      "--quiet",
      "-m",
      message,
    ]);
    git(["-C", work, "push", "--quiet", "origin", "HEAD:main"]);
    rmSync(work, { recursive: true, force: true });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://vcs");
    this.hits.push(`${req.method} ${req.url}`);
    const body: Buffer[] = [];
    req.on("data", (chunk: Buffer) => body.push(chunk));
    req.once("end", () =>
      this.received.push({
        method: req.method ?? "",
        url: req.url ?? "",
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(body),
      }),
    );
    res.once("close", () => {
      if (!res.writableFinished) this.aborted.push(`${req.method} ${req.url}`);
    });
    if (/\.git\/(info\/refs|git-upload-pack|git-receive-pack)$/.test(url.pathname))
      return this.gitBackend(req, res, url);
    if (url.searchParams.has("hang")) return void req.resume();
    if (url.searchParams.has("size")) {
      const total = Number(url.searchParams.get("size"));
      const block = Buffer.alloc(64 * 1024, 120);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": total });
      let sent = 0;
      const more = () => {
        while (sent < total) {
          const piece = block.subarray(0, Math.min(block.length, total - sent));
          sent += piece.length;
          if (!res.write(piece)) {
            this.blocked.add(req.url ?? "");
            return void res.once("drain", () => (this.blocked.delete(req.url ?? ""), more()));
          }
        }
        res.end();
      };
      return more();
    }
    if (url.searchParams.has("slow")) {
      // An answer that never ends, to see a cancelled client cancel this request too.
      res.writeHead(200, { "content-type": "application/octet-stream" });
      const timer = setInterval(() => res.write(Buffer.alloc(1024)), 20);
      res.once("close", () => clearInterval(timer));
      return;
    }
    const delay = Number(url.searchParams.get("delay") ?? 0);
    req.on("end", () => {
      setTimeout(() => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(
          JSON.stringify({
            method: req.method,
            path: req.url,
            body: Buffer.concat(body).toString("utf8"),
            authorization: req.headers.authorization ?? null,
          }),
        );
      }, delay);
    });
  }

  /** Run git http-backend as CGI: request body to its stdin, its stdout (headers, then body) to the response. */
  private gitBackend(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      GIT_PROJECT_ROOT: this.root,
      GIT_HTTP_EXPORT_ALL: "1",
      PATH_INFO: decodeURIComponent(url.pathname),
      QUERY_STRING: url.search.slice(1),
      REQUEST_METHOD: req.method,
      CONTENT_TYPE: req.headers["content-type"] ?? "",
      REMOTE_ADDR: "127.0.0.1",
    };
    if (req.headers["content-encoding"]) env.HTTP_CONTENT_ENCODING = String(req.headers["content-encoding"]);
    if (req.headers["git-protocol"]) env.GIT_PROTOCOL = String(req.headers["git-protocol"]);
    if (req.headers["content-length"]) env.CONTENT_LENGTH = String(req.headers["content-length"]);
    const cgi = spawn("git", ["http-backend"], { env, stdio: ["pipe", "pipe", "inherit"] });
    req.pipe(cgi.stdin);
    res.once("close", () => cgi.kill());
    let header = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      header = Buffer.concat([header, chunk]);
      const end = header.indexOf("\r\n\r\n");
      if (end === -1) return;
      cgi.stdout.off("data", onData);
      const headers: Record<string, string> = {};
      let status = 200;
      for (const line of header.subarray(0, end).toString("latin1").split("\r\n")) {
        const colon = line.indexOf(":");
        const name = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (name.toLowerCase() === "status") status = parseInt(value, 10);
        else headers[name] = value;
      }
      res.writeHead(status, headers);
      res.write(header.subarray(end + 4));
      cgi.stdout.pipe(res);
    };
    cgi.stdout.on("data", onData);
    cgi.once("error", () => res.destroy());
  }
}

export function git(args: string[], cwd?: string): string {
  return execFileSync("git", args, {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, GIT_TERMINAL_PROMPT: "0", GIT_CONFIG_NOSYSTEM: "1" },
  });
}
