import assert from "node:assert/strict";
import { podSecurityProblems, schemaProblems } from "./kubernetes-admission";

/** A pod that meets "restricted", to break one control at a time. */
const restrictedPod = () => ({
  spec: {
    securityContext: { seccompProfile: { type: "RuntimeDefault" } },
    containers: [
      {
        name: "app",
        securityContext: { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
      },
    ],
    volumes: [{ name: "tmp", emptyDir: {} }],
  },
});

type Pod = ReturnType<typeof restrictedPod> & Record<string, any>;
const context = (pod: Pod) => pod.spec.containers[0].securityContext as Record<string, any>;

describe("Pod Security Standards check (test helper)", () => {
  it("admits a conforming pod at every level", () => {
    for (const level of ["restricted", "baseline", "privileged"] as const)
      assert.deepEqual(podSecurityProblems(restrictedPod(), level), []);
  });

  // [control, break it, the lowest level that refuses it]
  const controls: [string, (pod: Pod) => void, "baseline" | "restricted"][] = [
    ["privileged", (p) => (context(p).privileged = true), "baseline"],
    ["hostNetwork", (p) => ((p.spec as any).hostNetwork = true), "baseline"],
    ["hostPID", (p) => ((p.spec as any).hostPID = true), "baseline"],
    ["a hostPath volume", (p) => p.spec.volumes.push({ name: "host", hostPath: { path: "/" } } as never), "baseline"],
    ["a host port", (p) => ((p.spec.containers[0] as any).ports = [{ containerPort: 80, hostPort: 80 }]), "baseline"],
    ["SYS_ADMIN", (p) => (context(p).capabilities.add = ["SYS_ADMIN"]), "baseline"],
    ["seccomp Unconfined", (p) => (context(p).seccompProfile = { type: "Unconfined" }), "baseline"],
    [
      "an unsafe sysctl",
      (p) => ((p.spec.securityContext as any).sysctls = [{ name: "kernel.msgmax", value: "1" }]),
      "baseline",
    ],
    ["procMount Unmasked", (p) => (context(p).procMount = "Unmasked"), "baseline"],
    ["an SELinux user", (p) => (context(p).seLinuxOptions = { user: "system_u" }), "baseline"],
    ["AppArmor unconfined", (p) => (context(p).appArmorProfile = { type: "Unconfined" }), "baseline"],
    ["privilege escalation", (p) => (context(p).allowPrivilegeEscalation = true), "restricted"],
    ["root allowed", (p) => delete context(p).runAsNonRoot, "restricted"],
    ["uid 0", (p) => (context(p).runAsUser = 0), "restricted"],
    ["capabilities not dropped", (p) => (context(p).capabilities = {}), "restricted"],
    ["CHOWN added", (p) => (context(p).capabilities.add = ["CHOWN"]), "restricted"],
    ["no seccomp profile", (p) => delete (p.spec.securityContext as any).seccompProfile, "restricted"],
    [
      "an NFS volume",
      (p) => p.spec.volumes.push({ name: "nfs", nfs: { server: "x", path: "/" } } as never),
      "restricted",
    ],
    [
      "an init container as root",
      (p) =>
        ((p.spec as any).initContainers = [
          { name: "init", securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } } },
        ]),
      "restricted",
    ],
  ];
  for (const [control, breakIt, refusedFrom] of controls) {
    it(`${control}: refused from ${refusedFrom} on`, () => {
      const pod = restrictedPod() as Pod;
      breakIt(pod);
      assert.notDeepEqual(podSecurityProblems(pod, "restricted"), [], "restricted admits it");
      assert.equal(
        podSecurityProblems(pod, "baseline").length > 0,
        refusedFrom === "baseline",
        `baseline: ${podSecurityProblems(pod, "baseline")}`,
      );
      assert.deepEqual(podSecurityProblems(pod, "privileged"), []);
    });
  }

  it("schema check: the Kubernetes OpenAPI schema from kubernetes-models", async () => {
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "p" },
      spec: { containers: [{ name: "c", image: "i", ports: [{ containerPort: "http" }] }] },
    };
    assert.match((await schemaProblems(pod)).join(), /containerPort must be integer/);
    assert.deepEqual(await schemaProblems({ ...pod, spec: { containers: [{ name: "c", image: "i" }] } }), []);
    assert.match((await schemaProblems({ apiVersion: "v1", kind: "Pot" })).join(), /no such kind/);
  });
});
