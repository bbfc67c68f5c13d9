import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";

/**
 * A stand-in for the Docker CLI (no engine runs on this machine), written to `dir/docker`: it
 * records each call in `calls` (argv, environment and env file, NUL-separated: CALL, ENV, FILE),
 * answers `kill`, and runs a `docker run`'s script with /bin/sh on this host, in the workspace
 * the run mounts, with the variables of its env file, as a container would. Returns its path.
 */
export function writeDockerStandIn(dir: string, calls = path.join(dir, "docker-calls")): string {
  const docker = path.join(dir, "docker");
  writeFileSync(
    docker,
    [
      "#!/bin/sh",
      'envfile=; prev=; for a; do [ "$prev" = --env-file ] && envfile=$a; prev=$a; done',
      // The env file as docker reads it: its mode, then its lines.
      `{ printf 'CALL\\0'; printf '%s\\0' "$@"; printf 'ENV\\0'; env -0; printf 'FILE\\0'; [ -z "$envfile" ] || { stat -c %a "$envfile"; cat "$envfile"; }; } >> '${calls}'`,
      'case "$1" in kill) exit 0;; esac',
      'for a; do case "$a" in type=bind,source=*,target=/workspace) src=${a#type=bind,source=}; src=${src%,target=/workspace};; esac; last=$a; done',
      // As docker does: NAME=VALUE sets a variable, a NAME alone takes the client's value.
      '[ -z "$envfile" ] || while IFS= read -r line || [ -n "$line" ]; do export "$line"; done < "$envfile"',
      'cd "$src" && AGENTPOOLS_STATE_FILE="$src/.agentpools/state" exec /bin/sh -ec "$last"',
    ].join("\n"),
  );
  chmodSync(docker, 0o755);
  return docker;
}
