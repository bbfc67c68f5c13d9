import { spawn } from "node:child_process";

/**
 * Resolves once the engine says container `name` is gone: `docker rm -f` succeeded, or found no such container. A killed
 * client leaves its container running (with its run's secrets), so nothing less says a run is over. After an error or a
 * silence of `timeoutMs` it asks again each second; `stuck` is called once, at the first. `docker`: the CLI and its
 * global options.
 */
export const containerGone = (
  docker: string[],
  name: string,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
  stuck: () => void,
): Promise<void> =>
  new Promise((gone) => {
    const ask = (again?: boolean) => {
      let said = "";
      const rm = spawn(docker[0], [...docker.slice(1), "rm", "-f", name], { env, timeout: timeoutMs });
      rm.on("error", () => undefined).stderr.on("data", (chunk) => void (said += chunk));
      rm.on("close", (code) => {
        // Not any "no such": "no such file or directory" is an engine socket that is not there.
        if (code === 0 || /no such container/i.test(said)) return gone();
        if (!again) stuck();
        setTimeout(ask, 1000, true);
      });
    };
    ask();
  });
