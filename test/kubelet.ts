// A small stand-in for the kubelet, for tests: it runs a rendered pod's containers as local
// processes and stops them in the order the Kubernetes docs give for pod termination. It
// gives each volume a scratch directory (configMap volumes filled from the ConfigMap) and
// rewrites the paths a container sees under its mounts, so the rendered wiring is what runs.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { eventually, scratchDir } from "../devkit/helpers";

type Spec = Record<string, any>;

/**
 * The termination rule (kubernetes.io, "Termination of Pods" and "Sidecar Containers"): every
 * regular container gets SIGTERM at once, in no particular order; init containers with
 * restartPolicy Always (sidecars, Kubernetes 1.29+) only once every regular container has
 * exited, one after the other in the reverse of their order in the spec; at the end of the
 * grace period whatever is left gets SIGKILL.
 */
export function terminationOrder(spec: Spec): { first: string[]; thenOneByOne: string[] } {
  const sidecars = (spec.initContainers ?? [])
    .filter((c: Spec) => c.restartPolicy === "Always")
    .map((c: Spec) => c.name as string);
  return { first: spec.containers.map((c: Spec) => c.name as string), thenOneByOne: sidecars.reverse() };
}

export interface PodInputs {
  name: string;
  spec: Spec;
  configMaps: Record<string, Record<string, string>>;
  secrets: Record<string, Record<string, string>>;
  /** What runs for an image: the entrypoint's argv (the container's command replaces it). */
  entrypoints: Record<string, string[]>;
  /** Commands by name (`node`, `docker`), for commands and exec probes. */
  binaries: Record<string, string>;
  /** PATH inside the containers. */
  path: string;
}

export class SimulatedKubelet {
  readonly events: string[] = [];
  private readonly processes = new Map<string, ChildProcess>();
  private readonly exits = new Map<string, Promise<number | null>>();
  private readonly volumes = new Map<string, string>();
  readonly output = new Map<string, string>();

  constructor(private readonly pod: PodInputs) {
    const root = scratchDir("pod-");
    for (const volume of pod.spec.volumes ?? []) {
      const dir = path.join(root, volume.name);
      mkdirSync(dir, { recursive: true });
      if (volume.configMap) {
        const data = pod.configMaps[volume.configMap.name];
        for (const item of volume.configMap.items) writeFileSync(path.join(dir, item.path), data[item.key]);
      }
      this.volumes.set(volume.name, dir);
    }
  }

  /** A container's view of a string: each mount path inside it replaced by its volume's directory (one pass). */
  private mapped(container: Spec, text: string): string {
    const mounts = [...(container.volumeMounts ?? [])]
      .filter((m) => this.volumes.has(m.name))
      .sort((a, b) => b.mountPath.length - a.mountPath.length);
    if (mounts.length === 0) return text;
    const escape = (p: string) => p.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    const pattern = new RegExp(`(${mounts.map((m) => escape(m.mountPath)).join("|")})(?=/|$|")`, "g");
    return text.replace(
      pattern,
      (mountPath) => this.volumes.get(mounts.find((m) => m.mountPath === mountPath).name) as string,
    );
  }

  private envOf(container: Spec): Record<string, string> {
    const env: Record<string, string> = { PATH: this.pod.path };
    for (const variable of container.env ?? []) {
      const from = variable.valueFrom;
      if (variable.value !== undefined) env[variable.name] = this.mapped(container, variable.value);
      else if (from?.secretKeyRef) env[variable.name] = this.pod.secrets[from.secretKeyRef.name][from.secretKeyRef.key];
      else if (from?.fieldRef)
        env[variable.name] = from.fieldRef.fieldPath === "metadata.name" ? this.pod.name : "node-1";
    }
    return env;
  }

  private argv(container: Spec): string[] {
    const [command, ...rest] = container.command ?? this.pod.entrypoints[container.image];
    const args = [...rest, ...(container.args ?? [])].map((arg) => this.mapped(container, arg));
    return [this.pod.binaries[command] ?? command, ...args];
  }

  private run(container: Spec): void {
    const [file, ...args] = this.argv(container);
    const child = spawn(file, args, { env: this.envOf(container), stdio: ["ignore", "pipe", "pipe"] });
    this.output.set(container.name, "");
    const collect = (chunk: Buffer) =>
      this.output.set(container.name, this.output.get(container.name) + chunk.toString());
    child.stdout?.on("data", collect);
    child.stderr?.on("data", collect);
    this.processes.set(container.name, child);
    this.exits.set(
      container.name,
      new Promise((resolve) =>
        child.once("exit", (code) => {
          this.events.push(`exited ${container.name} ${code}`);
          resolve(code);
        }),
      ),
    );
    this.events.push(`started ${container.name}`);
  }

  /** An exec probe, run as the container would (its binaries, its env, its paths). */
  private probe(container: Spec, probe: Spec): boolean {
    const [command, ...args] = probe.exec.command.map((arg: string) => this.mapped(container, arg));
    return (
      spawnSync(this.pod.binaries[command] ?? command, args, { env: this.envOf(container), timeout: 5000 }).status === 0
    );
  }

  /** Whether a container's rendered probe ("livenessProbe", "readinessProbe") passes right now. */
  probePasses(name: string, probe: "livenessProbe" | "readinessProbe" | "startupProbe"): boolean {
    const container = [...(this.pod.spec.initContainers ?? []), ...this.pod.spec.containers].find(
      (c: Spec) => c.name === name,
    );
    return this.probe(container, container[probe]);
  }

  /** Start the pod: sidecars in order, each once its startup probe passes, then the regular containers. */
  async start(): Promise<void> {
    for (const sidecar of (this.pod.spec.initContainers ?? []).filter((c: Spec) => c.restartPolicy === "Always")) {
      this.run(sidecar);
      if (sidecar.startupProbe)
        await eventually(() => this.probe(sidecar, sidecar.startupProbe), 10_000, `${sidecar.name}'s startup probe`);
    }
    for (const container of this.pod.spec.containers) this.run(container);
  }

  /** Delete the pod: the documented termination sequence, within the grace period. */
  async terminate(): Promise<void> {
    const order = terminationOrder(this.pod.spec);
    const killer = setTimeout(() => {
      for (const [name, child] of this.processes) {
        if (child.exitCode !== null) continue;
        this.events.push(`SIGKILL ${name}`);
        child.kill("SIGKILL");
      }
    }, this.pod.spec.terminationGracePeriodSeconds * 1000);
    killer.unref();
    const stop = (name: string) => {
      this.events.push(`SIGTERM ${name}`);
      this.processes.get(name)?.kill("SIGTERM");
      return this.exits.get(name);
    };
    await Promise.all(order.first.map(stop));
    for (const name of order.thenOneByOne) await stop(name);
    clearTimeout(killer);
  }

  /** Stop everything at once (test clean-up). */
  kill(): void {
    for (const child of this.processes.values()) if (child.exitCode === null) child.kill("SIGKILL");
  }
}
