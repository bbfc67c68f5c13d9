import { existsSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import path from "node:path";
import { BUILT_FOR } from "../config/built-for";

/**
 * What separates a Flows runtime from the agent, in the kernel (Node's permission model is a
 * second layer, inside each runtime):
 *  - "namespaces": a uid of its own, and bubblewrap's namespaces: its own pid namespace (the
 *    agent and other runs are not there to signal, trace or read in /proc), a mount namespace
 *    holding only Node, its libraries, the runner and a size-capped tmpfs as scratch, and a
 *    seccomp filter (no Unix-domain sockets, filesystem or abstract; no child processes; no
 *    new namespaces; no ptrace).
 *  - "user": a uid of its own, nothing more (where namespaces are not allowed: a pod).
 *  - "none": the agent's own uid. Only Node's permission model stands between a run and the
 *    agent's token; for a developer's machine, and said loudly.
 */
export const ISOLATIONS = ["namespaces", "user", "none"] as const;
export type Isolation = (typeof ISOLATIONS)[number];

/** What this process may do to keep runtimes from itself, read once at start. */
export interface Privileges {
  root: boolean;
  /**
   * It may start a child as another uid and gid, and signal it: CAP_SETUID, CAP_SETGID and
   * CAP_KILL (root has them). Without CAP_KILL a runtime would outlive an agent that dies: the
   * kernel sends a parent-death signal only where the dying parent may signal the child.
   */
  switchUser: boolean;
  setpriv?: string;
  bwrap?: string;
}

/** Where Debian and Amazon Linux install a program's package (bubblewrap, util-linux). */
const program = (name: string) => (existsSync(`/usr/bin/${name}`) ? `/usr/bin/${name}` : undefined);

export function readPrivileges(): Privileges {
  // On EC2 the component's boot script installs both programs (dnf, or the boot fails) and its unit grants the agent
  // the three capabilities: nothing to find out. Should one lack, the trial runtime fails, saying which (ENOENT, or
  // setpriv's "Operation not permitted"), and the agent does not start (agent.ts).
  // (Only the programs: the EC2 bundle reads nothing else of it.)
  if (BUILT_FOR.platform === "ec2") return { setpriv: "/usr/bin/setpriv", bwrap: "/usr/bin/bwrap" } as Privileges;
  if (process.platform !== "linux") return { root: false, switchUser: false };
  // CAP_KILL, CAP_SETGID and CAP_SETUID are bits 5, 6 and 7: the last two hex digits of CapEff.
  const caps = parseInt(/^CapEff:\s*\w*(\w\w)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? "0", 16);
  return {
    root: process.getuid?.() === 0,
    switchUser: (caps & 0xe0) === 0xe0,
    setpriv: program("setpriv"),
    bwrap: program("bwrap"),
  };
}

/**
 * The uids (and gids of the same numbers) of a range "first-last" (or one number), one per runtime alive or not yet
 * cleaned up: `take` has none to give while every one is held (a start then waits, see executor.ts), and `onGive`
 * hears of each given back.
 */
export function uidPool(range: string): UidPool {
  const [first, last = first] = range.split("-").map(Number);
  const free = Array.from({ length: Math.max(0, last - first + 1) }, (_, i) => first + i);
  const pool: UidPool = {
    first,
    last,
    take: () => free.shift(),
    give: (uid) => (free.push(uid), pool.onGive?.()),
  };
  return pool;
}

/**
 * The pool's uids that hold a process whose parent is gone (re-parented to pid 1): what an agent that died left of its
 * runtimes, where the parent-death signal did not reach (set too late, or a runtime's own child: an escape from the
 * permission model). The uid is what the caller ends, not the process: whatever that process started since is the
 * same uid's, whoever its parent is now. (Under systemd the unit's cgroup goes with the agent; elsewhere nothing else
 * ends them.)
 */
export function orphanedUids(uids: Pick<UidPool, "first" | "last">, proc = "/proc"): Set<number> {
  const found = new Set<number>();
  for (const pid of readdirSync(proc)) {
    try {
      // Status says PPid before Uid; entries that are not processes have none.
      const uid = Number(/^PPid:\s+1\n[^]*^Uid:\s+(\d+)/m.exec(readFileSync(`${proc}/${pid}/status`, "utf8"))?.[1]);
      if (uid >= uids.first && uid <= uids.last) found.add(uid);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/**
 * What in `uids` is someone else's, said for an error: a uid named in `passwd` (a login or service user), or one running
 * a process of a login session other than the agent's (its loginuid). A process of the range outside any session is
 * taken for a runtime an earlier agent left.
 */
export function uidOwner(uids: Pick<UidPool, "first" | "last">, passwd = "/etc/passwd", proc = "/proc"): string | void {
  const mine = (uid = "") => uid !== "" && +uid >= uids.first && +uid <= uids.last;
  const read = (file: string) => {
    try {
      return readFileSync(file, "utf8");
    } catch {
      return ""; // no such file, or a process gone meanwhile
    }
  };
  const user = read(passwd)
    .split("\n")
    .find((line) => mine(line.split(":")[2]));
  if (user) return `uid ${user.split(":")[2]} (user ${user.split(":")[0]})`;
  const session = read(`${proc}/self/loginuid`);
  for (const pid of readdirSync(proc)) {
    const uid = /^Uid:\s+(\d+)/m.exec(read(`${proc}/${pid}/status`))?.[1];
    if (mine(uid) && read(`${proc}/${pid}/loginuid`) !== session)
      return `uid ${uid} (process ${pid}, of a login session)`;
  }
}

export interface UidPool {
  first: number;
  last: number;
  take(): number | undefined;
  give(uid: number): void;
  onGive?: () => void;
}

/** The dynamic loader glibc's Node binaries name (their ELF interpreter), per architecture: often a symbolic link to a library directory. */
const LOADERS: Record<string, string> = { x64: "/lib64/ld-linux-x86-64.so.2", arm64: "/lib/ld-linux-aarch64.so.1" };

/** The directories of the shared libraries this Node has loaded (a runtime's Node is the same binary). */
export const libraryDirectories = (maps = readFileSync("/proc/self/maps", "utf8")) =>
  [...new Set(maps.match(/\/\S+\.so\b\S*$/gm)?.map((file) => path.dirname(file)))].sort();

/**
 * bubblewrap's arguments for one runtime (pure): new namespaces of every kind but the network,
 * read-only binds of Node, its loader and libraries, the runner's files and what name
 * resolution reads, a fresh /proc of the runtime's own pid namespace, a minimal /dev, and a
 * tmpfs of `diskMb` as /tmp, the scratch. The seccomp filter comes on fd 5; fd 4 gets the
 * runtime's pid.
 */
export function bwrapArgs(o: { node: string; libraries: string[]; readable: string[]; diskMb: number }): string[] {
  const loader = LOADERS[process.arch];
  const files = [
    o.node,
    ...o.libraries,
    ...o.readable,
    ...["resolv.conf", "hosts", "nsswitch.conf"].map((name) => `/etc/${name}`).filter(existsSync),
  ];
  return [
    ...[
      "--unshare-all",
      "--share-net",
      "--unshare-user",
      "--die-with-parent",
      "--new-session",
      "--as-pid-1",
      "--proc",
      "/proc",
      "--dev",
      "/dev",
    ],
    ...[
      "--size",
      String(o.diskMb * 1048576),
      "--perms",
      "1777",
      "--tmpfs",
      "/tmp",
      "--chdir",
      "/tmp",
      "--setenv",
      "LD_LIBRARY_PATH",
      o.libraries.join(":"),
    ],
    ...(existsSync(loader) ? ["--ro-bind", realpathSync(loader), loader] : []),
    ...files.flatMap((file) => ["--ro-bind", file, file]),
    // Nothing written but the scratch: bubblewrap's root and /dev are tmpfs without a size of their own.
    ...["--remount-ro", "/dev", "--remount-ro", "/"],
    ...["--info-fd", "4", "--seccomp", "5", "--"],
  ];
}

/** System call numbers the filter names, per architecture Node runs on. */
const SYSCALLS = {
  // fork vfork ptrace process_vm_readv/writev perf_event_open bpf userfaultfd io_uring_setup add_key request_key keyctl unshare setns
  x64: {
    arch: 0xc000003e,
    socket: 41,
    clone: 56,
    denied: [57, 58, 101, 310, 311, 298, 321, 323, 425, 248, 249, 250, 272, 308],
  },
  arm64: {
    arch: 0xc00000b7,
    socket: 198,
    clone: 220,
    denied: [117, 270, 271, 241, 280, 282, 425, 217, 218, 219, 97, 268],
  },
} as const;

/**
 * The runtime's seccomp filter (classic BPF, as `bwrap --seccomp` loads it): no Unix-domain
 * socket at all (a path outside the scratch, an abstract name: the Docker socket, a D-Bus, an
 * X server), no new process (fork, vfork, clone without CLONE_THREAD; clone3, whose flags a
 * filter cannot read, answers ENOSYS so threads fall back to clone), no new namespaces
 * (unshare, setns), no ptrace, process_vm_readv/writev, perf_event_open, bpf, userfaultfd,
 * io_uring or kernel keyrings. Another ABI (x32, i386) is killed outright. Undefined on an
 * architecture it does not know.
 */
export function seccompFilter(arch: string = process.arch): Buffer | undefined {
  const table = SYSCALLS[arch as keyof typeof SYSCALLS];
  if (!table) return undefined;
  const [LOAD, EQUAL, AT_LEAST, ANY_BIT, RETURN] = [0x20, 0x15, 0x35, 0x45, 0x06];
  const [ALLOW, KILL, EPERM, EACCES, ENOSYS] = [0x7fff0000, 0x80000000, 0x50001, 0x5000d, 0x50026];
  // [code, k, instructions skipped if true, if false]: load a word of seccomp_data (0 the call, 4 the architecture, 16 the first argument).
  const program: number[][] = [
    ...[
      [LOAD, 4],
      [EQUAL, table.arch, 1, 0],
      [RETURN, KILL],
      [LOAD, 0],
    ],
    ...(arch === "x64"
      ? [
          [AT_LEAST, 0x40000000, 0, 1],
          [RETURN, KILL],
        ]
      : []),
    ...[...table.denied.map((nr) => [nr, EPERM]), [435, ENOSYS]].flatMap(([nr, answer]) => [
      [EQUAL, nr, 0, 1],
      [RETURN, answer],
    ]),
    // socket(AF_UNIX, ...) answers EACCES; clone without CLONE_THREAD EPERM; anything else is allowed.
    ...[
      [EQUAL, table.socket, 0, 3],
      [LOAD, 16],
      [EQUAL, 1, 0, 5],
      [RETURN, EACCES],
    ],
    ...[
      [EQUAL, table.clone, 0, 3],
      [LOAD, 16],
      [ANY_BIT, 0x10000, 1, 0],
      [RETURN, EPERM],
      [RETURN, ALLOW],
    ],
  ];
  const filter = Buffer.alloc(program.length * 8);
  program.forEach(([code, k, yes = 0, no = 0], at) => {
    filter.writeUInt16LE(code, at * 8);
    filter.writeUInt16BE((yes << 8) | no, at * 8 + 2);
    filter.writeUInt32LE(k, at * 8 + 4);
  });
  return filter;
}
