import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

// A container's file is made empty by its client before the container starts, and given the container's pid by the
// container's own process before its command runs: a removal never finds a container started but not yet listed (it
// would answer "No such container" for one that goes on running).
const created = 'f="$containers/$name"; : > "$f"';
/** In the container's process (a subshell, where $$ is still its parent's): its own pid (and `more`) into its file. */
const ownPid = (more = "") => `read -r me _stat < /proc/self/stat; echo "$me${more}" > "$f"`;
/** A removal waits for the pid of a container still starting (at most 2 s: a client killed before it forked). */
const untilStarted = [
  '  n=0; while [ -f "$containers/$name" ] && [ ! -s "$containers/$name" ] && [ $n -lt 400 ]; do sleep 0.005; n=$((n + 1)); done',
];

/**
 * A stand-in for the Docker CLI (no engine runs on this machine), written to `dir/docker`: it
 * records each call in `calls` (argv, environment and env file, NUL-separated: CALL, ENV, FILE),
 * and runs a `docker run`'s script with /bin/sh on this host, in the workspace the run mounts, with
 * the variables of its env file, as a container would: a process group of its own (its pid in
 * `dir/containers/NAME`) that outlives its client (whose pid is in `dir/client`); `ps` lists them by name. `kill`
 * and `rm` end it (waiting while `dir/hold` exists) and answer "No such container" once it is gone. Returns its path.
 */
export function writeDockerStandIn(dir: string, calls = path.join(dir, "docker-calls")): string {
  const docker = path.join(dir, "docker");
  writeFileSync(
    docker,
    [
      "#!/bin/sh",
      `containers='${dir}/containers'`,
      'envfile=; prev=; for a; do [ "$prev" = --env-file ] && envfile=$a; [ "$prev" = --name ] && name=$a; prev=$a; done',
      // The env file as docker reads it: its mode, then its lines.
      `{ printf 'CALL\\0'; printf '%s\\0' "$@"; printf 'ENV\\0'; env -0; printf 'FILE\\0'; [ -z "$envfile" ] || { stat -c %a "$envfile"; cat "$envfile"; }; } >> '${calls}'`,
      // A removal waits while dir/hold exists (an engine slow to answer); the client's pid is in dir/client.
      '[ "$1" = --config ] && shift 2',
      // Every container here is a run's (the label filter's answer): by name, which rm takes as an id.
      'case "$1" in ps) ls "$containers" 2>/dev/null; exit 0;; esac',
      `case "$1" in kill|rm) while [ -e '${dir}/hold' ]; do sleep 0.01; done; for a; do name=$a; done`,
      '  [ -f "$containers/$name" ] || { echo "Error response from daemon: No such container: $name" >&2; exit 1; }',
      ...untilStarted,
      // The container itself too: a removal that comes before its setsid finds no group of that id yet.
      '  read pid < "$containers/$name"; [ -z "$pid" ] || kill -9 "$pid" -"$pid" 2>/dev/null',
      '  while [ -n "$pid" ] && { kill -0 "$pid" || kill -0 -"$pid"; } 2>/dev/null; do sleep 0.005; done',
      '  rm -f "$containers/$name"; exit 0;;',
      "esac",
      `echo $$ > '${dir}/client'`,
      'for a; do case "$a" in type=bind,source=*,target=/workspace) src=${a#type=bind,source=}; src=${src%,target=/workspace};; esac; last=$a; done',
      // As docker does: NAME=VALUE sets a variable, a NAME alone takes the client's value.
      '[ -z "$envfile" ] || while IFS= read -r line || [ -n "$line" ]; do export "$line"; done < "$envfile"',
      'mkdir -p "$containers"; cd "$src" || exit 125',
      // setsid: the container's processes are a group of their own, which the client's death leaves running.
      `${created}; ( ${ownPid()}; AGENTPOOLS_STATE_FILE="$src/.agentpools/state" exec setsid /bin/sh -ec "$last" ) &`,
      'wait $!; code=$?; rm -f "$f"; exit $code',
    ].join("\n"),
  );
  chmodSync(docker, 0o755);
  return docker;
}

/**
 * A stand-in for the Docker CLI of the Flows executor, written to `dir/docker`: a `docker run` starts the container's
 * command (Node and the runtime, the container's paths mapped to this host's) as a process of its own, which, as a
 * container, outlives its client: only `docker rm --force` (or `kill`) by name ends it, and answers "No such
 * container" for one that is gone. While `dir/hold` exists, removals wait (an engine slow to answer). Live containers
 * are listed in `dir/containers` (a file per name: pid and uid); a container started under a uid a live one still
 * runs as is recorded in `dir/uid-reused`. Returns its path.
 */
export function writeFlowsDockerStandIn(dir: string): string {
  const file = path.join(dir, "docker");
  const containers = path.join(dir, "containers");
  mkdirSync(containers, { recursive: true });
  writeFileSync(
    file,
    [
      "#!/bin/sh",
      `containers='${containers}'`,
      'for a; do last=$a; case "$a" in --name=*) name=${a#--name=};; --user=*) uid=${a#--user=}; uid=${uid%%:*};; esac; done',
      'case "$1" in kill|rm) name=$last',
      `  while [ -e '${dir}/hold' ]; do sleep 0.01; done`,
      '  [ -f "$containers/$name" ] || { echo "Error response from daemon: No such container: $name" >&2; exit 1; }',
      ...untilStarted,
      '  read pid uid < "$containers/$name"; [ -z "$pid" ] || { kill -9 "$pid"; tail --pid="$pid" -s 0.005 -f /dev/null; }',
      '  rm -f "$containers/$name"; exit 0;;',
      "esac",
      'for f in "$containers"/*; do [ -f "$f" ] || continue; read p u < "$f"',
      `  [ "$u" = "$uid" ] && kill -0 "$p" 2>/dev/null && echo "$uid $name" >> '${dir}/uid-reused'; done`,
      'work=$(mktemp -d); cd "$work"',
      'while [ $# -gt 0 ]; do case "$1" in --volume=*:/agentpools/runtime.js:ro) runtime=${1#--volume=}; runtime=${runtime%:/agentpools/runtime.js:ro};; --) shift 3; break;; esac; shift; done',
      // The container: its own process, reading the client's stdin (an asynchronous list's would be /dev/null).
      "exec 3<&0",
      `${created}; ( ${ownPid(" $uid")}; exec env -i '${process.execPath}' $(for a; do case "$a" in /agentpools/runtime.js) echo "$runtime";; *=/agentpools/runtime.js) echo "\${a%=*}=$runtime";; *=/work) echo "\${a%=*}=$work";; *) echo "$a";; esac; done) ) <&3 3<&- &`,
      "exec 3<&-",
      'wait $!; code=$?; rm -f "$f"; exit $code',
    ].join("\n"),
  );
  chmodSync(file, 0o755);
  return file;
}
