import { accessSync, closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, readSync, realpathSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";

/**
 * What separates a Flows runtime from the agent, in the kernel (Node's permission model is a
 * second layer, inside each runtime):
 *  - "namespaces": a uid of its own, and bubblewrap's namespaces: its own pid namespace (the
 *    agent and other runs are not there to signal, trace or read in /proc), a mount namespace
 *    holding only Node, its libraries, the runner and a size-capped tmpfs as scratch, and a
 *    seccomp filter (no Unix-domain sockets, filesystem or abstract; no child processes; no
 *    new namespaces; no ptrace). In a delegated cgroup (systemd Delegate=yes), a cgroup each
 *    with memory and pids limits.
 *  - "user": a uid of its own, nothing more (where namespaces are not allowed: a pod).
 *  - "none": the agent's own uid. Only Node's permission model stands between a run and the
 *    agent's token; for a developer's machine, and said loudly.
 */
export const ISOLATIONS = ["namespaces", "user", "none"] as const;
export type Isolation = (typeof ISOLATIONS)[number];

/** What this process may do to keep runtimes from itself, read once at start. */
export interface Privileges {
  /** It may switch a child to another uid and gid: root, or CAP_SETUID and CAP_SETGID. */
  switchUser: boolean;
  /** It may signal a process of another uid: CAP_KILL (root has it). */
  kill: boolean;
  root: boolean;
  setpriv?: string;
  bwrap?: string;
  /** A cgroup v2 directory delegated to this process's user (systemd Delegate=yes). */
  cgroup?: string;
}

const capability = (mask: bigint, bit: number) => ((mask >> BigInt(bit)) & 1n) === 1n;

function findProgram(name: string): string | undefined {
  return [...(process.env.PATH ?? "").split(":"), "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map((dir) => path.join(dir, name)).find((file) => {
    try {
      accessSync(file, constants.X_OK);
      return path.isAbsolute(file);
    } catch {
      return false;
    }
  });
}

/** This process's own cgroup (v2) when its user may manage it: not the root, and writable. */
function delegatedCgroup(): string | undefined {
  try {
    const own = /^0::(\/.*)$/m.exec(readFileSync("/proc/self/cgroup", "utf8"))?.[1];
    const mount = /^\S+ \S+ \S+ \S+ (\S+) .* - cgroup2 /m.exec(readFileSync("/proc/self/mountinfo", "utf8"))?.[1];
    if (!own || !mount || own === "/") return undefined;
    const dir = path.join(mount, own);
    for (const file of ["", "cgroup.procs", "cgroup.subtree_control"]) accessSync(path.join(dir, file), constants.W_OK);
    return dir;
  } catch {
    return undefined;
  }
}

export function readPrivileges(): Privileges {
  if (process.platform !== "linux") return { switchUser: false, kill: false, root: false };
  const effective = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? "0"}`);
  return {
    root: process.getuid?.() === 0,
    switchUser: capability(effective, 6) && capability(effective, 7),
    kill: capability(effective, 5),
    setpriv: findProgram("setpriv"),
    bwrap: findProgram("bwrap"),
    cgroup: delegatedCgroup(),
  };
}

/** A uid (and gid of the same number) per runtime alive, from the configured range. */
export class UidPool {
  private readonly free: number[] = [];
  constructor(first: number, last: number) {
    for (let uid = first; uid <= last; uid++) this.free.push(uid);
  }
  take(): number {
    const uid = this.free.shift();
    if (uid === undefined) throw new Error("every runtime uid of FLOWS_RUNTIME_UIDS is in use");
    return uid;
  }
  give(uid: number): void {
    this.free.push(uid);
  }
}

/** "first-last" (or one number) as the range it names. */
export function uidRange(text: string): [number, number] {
  const [first, last = first] = text.split("-").map(Number);
  return [first, last];
}

/** The ELF interpreter (dynamic loader) a binary names, for 64-bit little-endian binaries; undefined for others. */
export function elfInterpreter(file: string): string | undefined {
  const fd = openSync(file, "r");
  try {
    const head = Buffer.alloc(4096);
    readSync(fd, head, 0, head.length, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return undefined;
    const table = Number(head.readBigUInt64LE(0x20));
    for (let i = 0; i < head.readUInt16LE(0x38); i++) {
      const entry = table + i * head.readUInt16LE(0x36);
      if (head.readUInt32LE(entry) !== 3) continue;
      const text = Buffer.alloc(Number(head.readBigUInt64LE(entry + 32)));
      readSync(fd, text, 0, text.length, Number(head.readBigUInt64LE(entry + 8)));
      return text.toString("latin1").replace(/\0[^]*$/, "");
    }
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** The directories of the shared libraries this Node has loaded (the runtime's Node is the same binary). */
export function libraryDirectories(maps = readFileSync("/proc/self/maps", "utf8")): string[] {
  const files = maps.split("\n").map((line) => line.split(/\s+/)[5] ?? "").filter((file) => /^\/.*\.so(\.|$)/.test(file));
  return [...new Set(files.map((file) => path.dirname(file)))].sort();
}

/** Files name resolution reads (getaddrinfo): a run reaches the network by name as the host does. */
const NAME_RESOLUTION = ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf"];

/**
 * bubblewrap's arguments for one runtime (pure): new namespaces of every kind but the network,
 * read-only binds of Node, its loader and libraries and the runner's files, a fresh /proc of
 * the runtime's own pid namespace, a minimal /dev, and a tmpfs of `diskMb` as /tmp, the scratch.
 */
export function bwrapArgs(o: { node: string; interpreter?: string; libraries: string[]; readable: string[]; diskMb: number; seccompFd: number; infoFd: number }): string[] {
  const bind = (from: string, to = from) => ["--ro-bind", from, to];
  return [
    "--unshare-all",
    "--share-net",
    "--unshare-user",
    "--die-with-parent",
    "--new-session",
    "--as-pid-1",
    "--proc", "/proc",
    "--dev", "/dev",
    "--size", String(o.diskMb * 1024 * 1024),
    "--perms", "1777",
    "--tmpfs", "/tmp",
    ...bind(o.node),
    ...(o.interpreter ? bind(realpathSync(o.interpreter), o.interpreter) : []),
    ...o.libraries.flatMap((dir) => bind(dir)),
    ...o.readable.flatMap((file) => bind(file)),
    ...NAME_RESOLUTION.filter((file) => existsSync(file)).flatMap((file) => bind(file)),
    "--setenv", "LD_LIBRARY_PATH", o.libraries.join(":"),
    "--chdir", "/tmp",
    "--info-fd", String(o.infoFd),
    "--seccomp", String(o.seccompFd),
    "--",
  ];
}

/** Linux system call numbers the filter names, per architecture Node runs on. */
const SYSCALLS = {
  // fork vfork ptrace process_vm_readv/writev perf_event_open bpf userfaultfd io_uring_setup add_key request_key keyctl unshare setns
  x64: { arch: 0xc000003e, socket: 41, clone: 56, clone3: 435, denied: [57, 58, 101, 310, 311, 298, 321, 323, 425, 248, 249, 250, 272, 308] },
  arm64: { arch: 0xc00000b7, socket: 198, clone: 220, clone3: 435, denied: [117, 270, 271, 241, 280, 282, 425, 217, 218, 219, 97, 268] },
} as const;

/**
 * The runtime's seccomp filter (classic BPF, as `bwrap --seccomp` loads it): no Unix-domain
 * socket at all (a path outside the scratch, an abstract name: the Docker socket, a D-Bus, an
 * X server), no new process (fork, vfork, clone without CLONE_THREAD; clone3, whose flags a
 * filter cannot read, answers ENOSYS so threads fall back to clone), no new namespaces
 * (unshare, setns), no ptrace, process_vm_readv/writev, perf_event_open, bpf, userfaultfd,
 * io_uring or kernel keyrings.
 * Another ABI (x32, i386) is killed outright. Undefined on an architecture it does not know.
 */
export function seccompFilter(arch: string = process.arch): Buffer | undefined {
  const table = SYSCALLS[arch as keyof typeof SYSCALLS];
  if (!table) return undefined;
  const ERRNO = 0x50000;
  const [EPERM, EACCES, ENOSYS] = [1, 13, 38];
  type Op = [code: number, k: number, jt?: string, jf?: string] | string;
  const program: Op[] = [
    [0x20, 4],
    [0x15, table.arch, undefined, "kill"],
    [0x20, 0],
    ...(arch === "x64" ? [[0x35, 0x40000000, "kill"] as Op] : []),
    ...table.denied.map((nr): Op => [0x15, nr, "eperm"]),
    [0x15, table.clone3, "enosys"],
    [0x15, table.socket, "socket"],
    [0x15, table.clone, "clone"],
    [0x06, 0x7fff0000],
    "socket",
    [0x20, 16],
    [0x15, 1, "eacces"],
    [0x06, 0x7fff0000],
    "clone",
    [0x20, 16],
    [0x45, 0x10000, "allow"],
    "eperm",
    [0x06, ERRNO | EPERM],
    "eacces",
    [0x06, ERRNO | EACCES],
    "enosys",
    [0x06, ERRNO | ENOSYS],
    "kill",
    [0x06, 0x80000000],
    "allow",
    [0x06, 0x7fff0000],
  ];
  const labels = new Map<string, number>();
  const code = program.filter((op) => (typeof op === "string" ? (labels.set(op, -1), false) : true)) as Exclude<Op, string>[];
  let index = 0;
  for (const op of program) typeof op === "string" ? labels.set(op, index) : index++;
  const filter = Buffer.alloc(code.length * 8);
  code.forEach(([op, k, jt, jf], at) => {
    const jump = (label?: string) => (label ? (labels.get(label) as number) - at - 1 : 0);
    filter.writeUInt16LE(op, at * 8);
    filter.writeUInt8(jump(jt), at * 8 + 2);
    filter.writeUInt8(jump(jf), at * 8 + 3);
    filter.writeUInt32LE(k, at * 8 + 4);
  });
  return filter;
}

/**
 * Runtimes' cgroups under the agent's delegated one: the agent moves itself into a leaf of
 * its own (cgroup v2 lets only leaves hold processes), turns on the memory and pids
 * controllers for the subtree, and gives each runtime a cgroup with limits, killed as a whole
 * with cgroup.kill (which needs no capability).
 */
export class Cgroups {
  private readonly controllers: string[];

  constructor(private readonly root: string) {
    mkdirSync(path.join(root, "agent"), { recursive: true });
    writeFileSync(path.join(root, "agent", "cgroup.procs"), String(process.pid));
    const available = readFileSync(path.join(root, "cgroup.controllers"), "utf8").split(/\s+/);
    this.controllers = ["memory", "pids"].filter((name) => available.includes(name));
    if (this.controllers.length > 0) writeFileSync(path.join(root, "cgroup.subtree_control"), this.controllers.map((name) => `+${name}`).join(" "));
  }

  describe(): string {
    return `a cgroup each (${this.controllers.length > 0 ? this.controllers.join(", ") + " limits" : "no controllers delegated"})`;
  }

  /** A runtime's cgroup: its limits set, and `spawn` called from inside it so the child starts there. */
  create<T>(name: string, limits: { memoryBytes: number; pids: number }, spawn: () => T): { child: T; dir: string } {
    const dir = path.join(this.root, name);
    mkdirSync(dir);
    if (this.controllers.includes("memory")) {
      writeFileSync(path.join(dir, "memory.max"), String(limits.memoryBytes));
      writeFileSync(path.join(dir, "memory.swap.max"), "0");
    }
    if (this.controllers.includes("pids")) writeFileSync(path.join(dir, "pids.max"), String(limits.pids));
    // A child starts in its parent's cgroup: the agent steps in for the spawn, then back out.
    writeFileSync(path.join(dir, "cgroup.procs"), String(process.pid));
    try {
      return { child: spawn(), dir };
    } finally {
      writeFileSync(path.join(this.root, "agent", "cgroup.procs"), String(process.pid));
    }
  }

  static kill(dir: string): void {
    try {
      writeFileSync(path.join(dir, "cgroup.kill"), "1");
    } catch {
      // Gone already.
    }
  }

  static oomKilled(dir: string): boolean {
    try {
      return /^oom_kill [1-9]/m.test(readFileSync(path.join(dir, "memory.events"), "utf8"));
    } catch {
      return false;
    }
  }

  /** Removed once empty; a cgroup still emptying is tried again a moment later. */
  static remove(dir: string, attempts = 20): void {
    try {
      rmdirSync(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EBUSY" && attempts > 0) setTimeout(() => Cgroups.remove(dir, attempts - 1), 50).unref();
    }
  }
}
