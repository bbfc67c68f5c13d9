import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { eventually, scratchDir } from "../../devkit/helpers";
import { bwrapArgs, libraryDirectories, orphanedUids, seccompFilter, uidOwner, uidPool } from "./sandbox";

/** Runs a classic BPF seccomp program on one system call, as the kernel would: its answer. */
function evaluate(filter: Buffer, call: { arch: number; nr: number; arg0?: number }): number {
  const data = (offset: number) => ({ 0: call.nr, 4: call.arch, 16: call.arg0 ?? 0 })[offset] as number;
  let a = 0;
  for (let pc = 0; pc < filter.length / 8; pc++) {
    const [code, jt, jf, k] = [
      filter.readUInt16LE(pc * 8),
      filter[pc * 8 + 2],
      filter[pc * 8 + 3],
      filter.readUInt32LE(pc * 8 + 4),
    ];
    if (code === 0x20) a = data(k);
    else if (code === 0x06) return k;
    else if (code === 0x15) pc += a === k ? jt : jf;
    else if (code === 0x35) pc += a >= k ? jt : jf;
    else if (code === 0x45) pc += (a & k) !== 0 ? jt : jf;
    else throw new Error(`instruction ${code} at ${pc}`);
  }
  throw new Error("fell off the end");
}

const [ALLOW, KILL, EPERM, EACCES, ENOSYS] = [0x7fff0000, 0x80000000, 0x50001, 0x5000d, 0x50026];

describe("runtime sandbox: the seccomp filter", () => {
  const cases = {
    x64: {
      arch: 0xc000003e,
      read: 0,
      socket: 41,
      clone: 56,
      clone3: 435,
      fork: 57,
      ptrace: 101,
      unshare: 272,
      ioUring: 425,
    },
    arm64: {
      arch: 0xc00000b7,
      read: 63,
      socket: 198,
      clone: 220,
      clone3: 435,
      fork: undefined,
      ptrace: 117,
      unshare: 97,
      ioUring: 425,
    },
  };
  for (const [arch, c] of Object.entries(cases)) {
    it(`${arch}: Unix sockets, new processes and namespaces, ptrace and io_uring refused; threads, other sockets and the rest allowed`, () => {
      const filter = seccompFilter(arch) as Buffer;
      const call = (nr: number, arg0 = 0) => evaluate(filter, { arch: c.arch, nr, arg0 });
      assert.equal(call(c.read), ALLOW);
      assert.equal(call(c.socket, 1), EACCES, "AF_UNIX");
      assert.equal(call(c.socket, 2), ALLOW, "AF_INET");
      assert.equal(call(c.socket, 10), ALLOW, "AF_INET6");
      assert.equal(call(c.clone, 0x3d0f00), ALLOW, "a thread (CLONE_THREAD and friends)");
      assert.equal(call(c.clone, 17), EPERM, "a process (SIGCHLD only)");
      assert.equal(call(c.clone, 0x10000000 | 17), EPERM, "a process in a new user namespace");
      assert.equal(call(c.clone3), ENOSYS, "clone3: flags a filter cannot read, so threads fall back to clone");
      for (const nr of [c.fork, c.ptrace, c.unshare, c.ioUring])
        if (nr !== undefined) assert.equal(call(nr), EPERM, String(nr));
      assert.equal(evaluate(filter, { arch: 0x40000003, nr: 1 }), KILL, "another architecture (i386)");
    });
  }

  it("x64: the x32 ABI's numbers are killed too", () => {
    assert.equal(evaluate(seccompFilter("x64") as Buffer, { arch: 0xc000003e, nr: 0x40000000 | 41, arg0: 1 }), KILL);
  });

  it("an architecture it does not know has no filter (and so no namespaces)", () => {
    assert.equal(seccompFilter("ppc64"), undefined);
  });
});

describe("runtime sandbox: bubblewrap, libraries, uids", () => {
  it("every namespace but the network's; read-only binds only; a size-capped tmpfs as scratch; the filter and pid on fds 5 and 4", () => {
    const args = bwrapArgs({
      node: "/usr/bin/node",
      libraries: ["/usr/lib64"],
      readable: ["/opt/agentpools/flows-agent.js"],
      diskMb: 64,
    });
    for (const flag of [
      "--unshare-all",
      "--share-net",
      "--unshare-user",
      "--die-with-parent",
      "--new-session",
      "--as-pid-1",
    ])
      assert.ok(args.includes(flag), flag);
    assert.deepEqual(args.slice(args.indexOf("--size"), args.indexOf("--size") + 6), [
      "--size",
      String(64 << 20),
      "--perms",
      "1777",
      "--tmpfs",
      "/tmp",
    ]);
    assert.ok(!args.some((arg) => arg === "--bind" || arg === "--dev-bind"), "nothing writable of the host");
    const binds = args.flatMap((arg, i) => (arg === "--ro-bind" ? [args[i + 1]] : []));
    assert.ok(
      binds.includes("/usr/bin/node") &&
        binds.includes("/usr/lib64") &&
        binds.includes("/opt/agentpools/flows-agent.js"),
    );
    assert.ok(
      binds.every((bind) => !/^\/(home|root|var|run)\b/.test(bind)),
      binds.join(" "),
    );
    assert.deepEqual(args.slice(-5), ["--info-fd", "4", "--seccomp", "5", "--"]);
  });

  it("a scratch of 4 GB or more is sized in bytes without overflowing 32 bits", () => {
    for (const diskMb of [2048, 4096, 5000]) {
      const args = bwrapArgs({ node: "/usr/bin/node", libraries: [], readable: [], diskMb });
      assert.equal(args[args.indexOf("--size") + 1], String(diskMb * 1024 * 1024), `${diskMb} MB`);
    }
  });

  it("library directories come from the loaded libraries, once each", () => {
    const maps = [
      "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6",
      "7f01-7f02 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
      "7f02-7f03 r--p 00000000 08:01 3 /opt/node/lib/libnode.so.127",
      "5600-5601 r-xp 00000000 08:01 4 /usr/bin/node",
      "7f04-7f05 rw-p 00000000 00:00 0 [heap]",
    ].join("\n");
    assert.deepEqual(libraryDirectories(maps), ["/opt/node/lib", "/usr/lib/x86_64-linux-gnu"]);
  });

  it("uids: one per runtime alive, given back when it is gone (and heard of), never more than the range", () => {
    const pool = uidPool("1900000000-1900000001");
    const [a, b] = [pool.take(), pool.take()];
    assert.deepEqual([a, b, pool.first, pool.last], [1900000000, 1900000001, 1900000000, 1900000001]);
    assert.equal(pool.take(), undefined);
    let heard = 0;
    pool.onGive = () => heard++;
    pool.give(a!);
    assert.deepEqual([heard, pool.take()], [1, a]);
    assert.deepEqual([uidPool("1900000005").first, uidPool("1900000005").last], [1900000005, 1900000005]);
  });

  it("orphanedUids: the pool's uids holding a process whose parent is gone (pid 1), nothing else", () => {
    const proc = scratchDir("proc-");
    const processes: [string, number, number][] = [
      ["100", 1900000003, 1], // an orphan of the range
      ["105", 1900000003, 100], // its child (its uid is swept, not only the orphan)
      ["106", 1900000003, 1], // another orphan of the same uid: one uid
      ["101", 1900000004, 4242], // a live runtime: its parent is the agent or bubblewrap
      ["102", 1000, 1], // another user's orphan
      ["103", 1900000009, 1], // just outside the range
      ["107", 1900000000, 1], // the range's first uid
    ];
    for (const [pid, uid, ppid] of processes) {
      mkdirSync(path.join(proc, pid));
      writeFileSync(
        path.join(proc, pid, "status"),
        `Name:\tbwrap\nPPid:\t${ppid}\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\n`,
      );
    }
    mkdirSync(path.join(proc, "self"));
    mkdirSync(path.join(proc, "104")); // gone while read: no status
    assert.deepEqual([...orphanedUids({ first: 1900000000, last: 1900000008 }, proc)].sort(), [1900000000, 1900000003]);
  });
});

describe("runtime sandbox: uids someone else has", () => {
  it("names a uid of the range that /etc/passwd names (nobody, on this host's real file)", () => {
    assert.equal(uidOwner({ first: 65000, last: 65534 }), "uid 65534 (user nobody)");
  });

  it("names a uid running a process of another login session; the agent's own session's processes are its runtimes", () => {
    const dir = scratchDir("uid-owner-");
    const proc = (pid: string, status: string, loginuid: string) => {
      mkdirSync(path.join(dir, pid), { recursive: true });
      writeFileSync(path.join(dir, pid, "status"), status);
      writeFileSync(path.join(dir, pid, "loginuid"), loginuid);
    };
    writeFileSync(path.join(dir, "passwd"), "root:x:0:0::/root:/bin/sh\nalice:x:5000:5000::/home/alice:/bin/sh\n");
    proc("self", "Name:\tnode\nUid:\t990\t990\t990\t990\n", "4294967295");
    proc("40", "Name:\tnode\nPPid:\t2\nUid:\t5004\t5004\t5004\t5004\n", "4294967295");
    const range = { first: 5001, last: 5010 };
    assert.equal(uidOwner(range, path.join(dir, "passwd"), dir), undefined, "a runtime of the agent's own session");
    proc("41", "Name:\tbash\nUid:\t5007\t5007\t5007\t5007\n", "5007");
    assert.equal(uidOwner(range, path.join(dir, "passwd"), dir), "uid 5007 (process 41, of a login session)");
    assert.equal(uidOwner({ first: 4000, last: 5000 }, path.join(dir, "passwd"), dir), "uid 5000 (user alice)");
    assert.equal(uidOwner({ first: 5011, last: 6000 }, path.join(dir, "nonexistent"), dir), undefined);
  });

  it("on this host: a process of another session under a uid of the range is named, the agent's session's is not", async function () {
    const uid = 1900000977;
    const range = { first: uid, last: uid };
    const passwd = path.join(scratchDir("uid-owner-"), "passwd");
    writeFileSync(passwd, "");
    const start = (session: string) =>
      spawn("sh", ["-c", `${session}exec setpriv --reuid=${uid} --regid=${uid} --clear-groups sleep 30`], {
        stdio: "ignore",
      });
    const ours = start("");
    try {
      await eventually(() => readFileSync(`/proc/${ours.pid}/status`, "utf8").includes(`Uid:\t${uid}`));
      assert.equal(uidOwner(range, passwd), undefined);
    } finally {
      ours.kill("SIGKILL");
    }
    // A login session's process: its loginuid set (root may set its own once).
    const theirs = start("echo 4242 > /proc/self/loginuid && ");
    try {
      const set = await eventually(
        () => theirs.exitCode !== null || readFileSync(`/proc/${theirs.pid}/status`, "utf8").includes(`Uid:\t${uid}`),
      );
      if (theirs.exitCode !== null || set !== true) return this.skip(); // not root, or no audit control here
      assert.equal(uidOwner(range, passwd), `uid ${uid} (process ${theirs.pid}, of a login session)`);
    } finally {
      theirs.kill("SIGKILL");
    }
  });
});
