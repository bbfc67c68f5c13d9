import type * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { imageReference } from "../../agent/config/fields";
import { launcherSettings } from "../../agent/config/launcher";
import { byteQuantity, dnsSubdomain, quantityValue, resources } from "./api-rules";
import { KubernetesAgent, RUNTIME_UID, validateWorkload, workloadShape } from "./workload";
import type { PodSecurityLevel } from "./workload";
import {
  checkWorkerArgs,
  pointAtPolicy,
  policyFileContent,
  RUN_INITIALIZATION_POLICY_FILE,
  workerPoolExtras,
} from "../shared/worker-args";

const DOCKER_SOCKET_DIR = "/var/run/dind";
const DOCKER_HOST = `unix://${DOCKER_SOCKET_DIR}/docker.sock`;
const POLICY_DIR = "/etc/agentpools/policy";

export const kubernetesWorkerPoolArgs = z
  .strictObject({
    ...launcherSettings.omit({ token: true, poolPrivateKey: true }).shape,
    ...workloadShape("launcher", {
      replicas: 1,
      resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "256Mi" } },
      drainTimeoutSeconds: 4500,
    }),
    /** The Docker engine the launcher starts runs in (a Docker-in-Docker sidecar). */
    dockerImage: imageReference.default("docker:28.2.2-dind"),
    dockerResources: resources.default({ requests: { cpu: "1", memory: "2Gi" }, limits: { memory: "4Gi" } }),
    /** A StatefulSet with a volume per pod for the engine's images and layers, kept across restarts. */
    statefulSet: z.boolean().default(false),
    storage: z
      .strictObject({
        size: byteQuantity
          .refine((size) => (quantityValue(size) ?? 1) > 0, { error: "must be more than zero" })
          .default("50Gi"),
        storageClassName: dnsSubdomain.optional(),
      })
      .default({ size: "50Gi" }),
    ...workerPoolExtras,
  })
  .superRefine(checkWorkerArgs)
  .transform((args) => pointAtPolicy(args, `${POLICY_DIR}/${RUN_INITIALIZATION_POLICY_FILE}`));

export type KubernetesWorkerPoolArgs = z.input<typeof kubernetesWorkerPoolArgs> & {
  /** SPACELIFT_TOKEN: a Pulumi secret. Leave out with existingSecret. */
  token?: pulumi.Input<string>;
  /** SPACELIFT_POOL_PRIVATE_KEY (base64 of the key file): a Pulumi secret. */
  poolPrivateKey?: pulumi.Input<string>;
};

/**
 * The engine's command line. The image's entrypoint adds its own default arguments, among
 * them a TCP listener on 0.0.0.0 (2376 with TLS, 2375 without), whenever its first argument
 * is a flag; naming `dockerd` first turns that off, so the engine listens on the socket in
 * the pod's shared volume and nowhere else.
 */
export const dockerdArgs = ["dockerd", `--host=${DOCKER_HOST}`, `--group=${RUNTIME_UID}`];

/**
 * Worker launchers in pods, each with a Docker-in-Docker sidecar that runs the workers'
 * containers. The sidecar is privileged: a Docker engine cannot run otherwise, and it is
 * the only privileged container; the launcher itself is non-root, read-only and without
 * capabilities, and reaches the engine over a socket shared only inside the pod. The engine
 * is a native sidecar, so a drain stops it only after the launcher has finished its run.
 */
export class KubernetesWorkerPool extends KubernetesAgent {
  /** The Pod Security Standard level its pods meet: its namespace may enforce no stricter one. */
  static readonly podSecurityLevel: PodSecurityLevel = "privileged";

  constructor(name: string, args: KubernetesWorkerPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    const {
      args: parsed,
      secretEnv,
      settingsEnv,
    } = validateWorkload("kubernetes.WorkerPool", name, "launcher", kubernetesWorkerPoolArgs, args);
    const dataVolume = "docker-data";
    super(
      "agentpools:kubernetes:WorkerPool",
      name,
      {
        component: "WorkerPool",
        role: "launcher",
        podSecurityLevel: KubernetesWorkerPool.podSecurityLevel,
        args: parsed,
        settingsEnv,
        secretEnv,
        // Runs fetch providers, modules and images from anywhere: all ports unless narrowed.
        egressPorts: undefined,
        extraEnv: [{ name: "DOCKER_HOST", value: DOCKER_HOST }],
        // Runs' workspaces are bind-mounted into their containers by the sidecar's engine, so
        // both containers see them at the same path.
        extraMounts: [
          { name: "docker-socket", mountPath: DOCKER_SOCKET_DIR },
          { name: "runs", mountPath: parsed.workDirectory },
          ...(parsed.runInitializationPolicy ? [{ name: "policy", mountPath: POLICY_DIR, readOnly: true }] : []),
        ],
        configFiles: parsed.runInitializationPolicy
          ? [
              {
                volume: "policy",
                key: RUN_INITIALIZATION_POLICY_FILE,
                content: policyFileContent(parsed.runInitializationPolicy),
              },
            ]
          : [],
        extraVolumes: [
          { name: "docker-socket", emptyDir: {} },
          { name: "runs", emptyDir: {} },
          ...(parsed.statefulSet ? [] : [{ name: dataVolume, emptyDir: {} }]),
        ],
        sidecars: [
          {
            name: "docker",
            image: parsed.dockerImage,
            args: dockerdArgs,
            securityContext: { privileged: true },
            resources: parsed.dockerResources,
            // The launcher starts once the engine answers on its socket.
            startupProbe: {
              exec: { command: ["docker", `--host=${DOCKER_HOST}`, "version"] },
              periodSeconds: 2,
              failureThreshold: 90,
            },
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
                  spec: {
                    accessModes: ["ReadWriteOnce"],
                    storageClassName: parsed.storage.storageClassName,
                    resources: { requests: { storage: parsed.storage.size } },
                  },
                },
              ],
            }
          : undefined,
      },
      opts,
    );
  }
}
