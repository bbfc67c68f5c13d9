import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { launcherSettings } from "../../agent/config/launcher";
import { KubernetesAgent, resources, RUNTIME_UID, validateWorkload, workloadShape } from "./workload";
import { checkWorkerArgs, pointAtPolicy, policyFileContent, RUN_INITIALIZATION_POLICY_FILE, workerPoolExtras } from "../shared/worker-args";

const DOCKER_SOCKET_DIR = "/var/run/dind";
const POLICY_DIR = "/etc/agentpools/policy";

export const kubernetesWorkerPoolArgs = z
  .strictObject({
  ...launcherSettings.omit({ token: true, poolPrivateKey: true }).shape,
  ...workloadShape({ replicas: 1, resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "256Mi" } }, drainTimeoutSeconds: 4500 }),
  /** The Docker engine the launcher starts runs in (a Docker-in-Docker sidecar). */
  dockerImage: z.string().regex(/^[a-z0-9][a-z0-9._/:@-]{0,254}$/, { error: "must be a container image reference" }).default("docker:28.2.2-dind"),
  dockerResources: resources.default({ requests: { cpu: "1", memory: "2Gi" }, limits: { memory: "4Gi" } }),
  /** A StatefulSet with a volume per pod for the engine's images and layers, kept across restarts. */
  statefulSet: z.boolean().default(false),
  storage: z
    .strictObject({ size: z.string().regex(/^[0-9]+(Mi|Gi|Ti)$/, { error: 'must be a size such as "50Gi"' }).default("50Gi"), storageClassName: z.string().optional() })
    .default({ size: "50Gi" }),
    ...workerPoolExtras,
  })
  .superRefine((args, ctx) => checkWorkerArgs(args, ctx, "in a pod"))
  .transform((args) => pointAtPolicy(args, `${POLICY_DIR}/${RUN_INITIALIZATION_POLICY_FILE}`));

export type KubernetesWorkerPoolArgs = z.input<typeof kubernetesWorkerPoolArgs> & {
  /** SPACELIFT_TOKEN: a Pulumi secret. Leave out with existingSecret. */
  token?: pulumi.Input<string>;
  /** SPACELIFT_POOL_PRIVATE_KEY (base64 of the key file): a Pulumi secret. */
  poolPrivateKey?: pulumi.Input<string>;
};

/**
 * Worker launchers in pods, each with a Docker-in-Docker sidecar that runs the workers'
 * containers. The sidecar is privileged: a Docker engine cannot run otherwise, and it is
 * the only privileged container; the launcher itself is non-root, read-only and without
 * capabilities, and reaches the engine over a socket shared only inside the pod.
 */
export class KubernetesWorkerPool extends KubernetesAgent {
  constructor(name: string, args: KubernetesWorkerPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    const { args: parsed, secretEnv, settingsEnv } = validateWorkload("kubernetes.WorkerPool", name, "launcher", kubernetesWorkerPoolArgs, args);
    const dataVolume = "docker-data";
    super(
      "agentpools:kubernetes:WorkerPool",
      name,
      {
        component: "WorkerPool",
        role: "launcher",
        args: parsed,
        settingsEnv,
        secretEnv,
        // Runs fetch providers, modules and images from anywhere: all ports unless narrowed.
        egressPorts: undefined,
        extraEnv: [{ name: "DOCKER_HOST", value: `unix://${DOCKER_SOCKET_DIR}/docker.sock` }],
        // Runs' workspaces are bind-mounted into their containers by the sidecar's engine, so
        // both containers see them at the same path.
        extraMounts: [
          { name: "docker-socket", mountPath: DOCKER_SOCKET_DIR },
          { name: "runs", mountPath: parsed.workDirectory },
          ...(parsed.runInitializationPolicy ? [{ name: "policy", mountPath: POLICY_DIR, readOnly: true }] : []),
        ],
        configFiles: parsed.runInitializationPolicy ? [{ volume: "policy", key: RUN_INITIALIZATION_POLICY_FILE, content: policyFileContent(parsed.runInitializationPolicy) }] : [],
        extraVolumes: [{ name: "docker-socket", emptyDir: {} }, { name: "runs", emptyDir: {} }, ...(parsed.statefulSet ? [] : [{ name: dataVolume, emptyDir: {} }])],
        sidecars: [
          {
            name: "docker",
            image: parsed.dockerImage,
            args: [`--host=unix://${DOCKER_SOCKET_DIR}/docker.sock`, `--group=${RUNTIME_UID}`],
            securityContext: { privileged: true },
            resources: parsed.dockerResources,
            volumeMounts: [
              { name: "docker-socket", mountPath: DOCKER_SOCKET_DIR },
              { name: "runs", mountPath: parsed.workDirectory },
              { name: dataVolume, mountPath: "/var/lib/docker" },
            ],
          },
        ],
        statefulSet: parsed.statefulSet
          ? {
              volumeClaimTemplates: [
                {
                  metadata: { name: dataVolume },
                  spec: { accessModes: ["ReadWriteOnce"], storageClassName: parsed.storage.storageClassName, resources: { requests: { storage: parsed.storage.size } } },
                },
              ],
            }
          : undefined,
      },
      opts,
    );
  }
}
