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

const positiveBytes = byteQuantity.refine((size) => (quantityValue(size) ?? 1) > 0, {
  error: "must be more than zero",
});

/** A share of the node's disk: a request, and a limit above zero and not below it. */
const diskShare = (request: string, limit: string) =>
  z
    .strictObject({ request: byteQuantity.default(request), limit: positiveBytes.default(limit) })
    .superRefine((share, ctx) => {
      if ((quantityValue(share.request) ?? 0) > (quantityValue(share.limit) ?? Infinity))
        ctx.addIssue({
          code: "custom",
          path: ["request"],
          input: share.request,
          message: `must not exceed limit (${share.limit})`,
        });
    })
    .default({ request, limit });

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
        size: positiveBytes.default("50Gi"),
        storageClassName: dnsSubdomain.optional(),
      })
      .default({ size: "50Gi" }),
    /**
     * Node disk (ephemeral storage) each part of a pod may fill: the runs' workspaces (the `runs` volume) and the
     * engine's images, layers and containers (`docker-data`, unless statefulSet keeps them on a claim). `limit` is the
     * volume's sizeLimit and its container's ephemeral-storage limit: past it the kubelet evicts this pod, and only it.
     * `request` is what the scheduler sets aside, and what node-pressure eviction measures pods by (over it, first).
     */
    disk: z
      .strictObject({ runs: diskShare("1Gi", "10Gi"), engine: diskShare("5Gi", "30Gi") })
      .default({ runs: { request: "1Gi", limit: "10Gi" }, engine: { request: "5Gi", limit: "30Gi" } }),
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

/** A container's resources with its share of the node's disk. */
const withDisk = ({ requests, limits }: z.output<typeof resources>, disk: { request: string; limit: string }) => ({
  requests: { ...requests, "ephemeral-storage": disk.request },
  limits: { ...limits, "ephemeral-storage": disk.limit },
});

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
        // Root with CAP_DAC_OVERRIDE and CAP_FOWNER only: what removing a run's leftovers takes (the engine's containers
        // are root, and leave 0700 directories of root's), as Kubernetes gives a non-root user no capability. It sees
        // only the pod's volumes, and the engine's socket it already has is the node's root.
        agentUser: {
          runAsNonRoot: false,
          runAsUser: 0,
          runAsGroup: 0,
          capabilities: { drop: ["ALL"], add: ["DAC_OVERRIDE", "FOWNER"] },
        },
        agentResources: withDisk(parsed.resources, parsed.disk.runs),
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
          { name: "docker-socket", emptyDir: { sizeLimit: "1Mi" } },
          { name: "runs", emptyDir: { sizeLimit: parsed.disk.runs.limit } },
          ...(parsed.statefulSet ? [] : [{ name: dataVolume, emptyDir: { sizeLimit: parsed.disk.engine.limit } }]),
        ],
        sidecars: [
          {
            name: "docker",
            image: parsed.dockerImage,
            args: dockerdArgs,
            securityContext: { privileged: true },
            resources: withDisk(parsed.dockerResources, parsed.disk.engine),
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
