import assert from "node:assert/strict";
import { imageReference } from "../../agent/config/fields";
import {
  byteQuantity,
  cidrBlock,
  cpuQuantity,
  dataKey,
  dnsLabel,
  dnsSubdomain,
  labelKey,
  labelValue,
  parseCidr,
  quantityValue,
  resources,
  toleration,
} from "./api-rules";
import { egressPeers, isOnlyMetadata, metadataAddressesIn } from "./egress";

const accepts = (schema: { safeParse(v: unknown): { success: boolean } }, values: unknown[]) =>
  values.forEach((v) => assert.ok(schema.safeParse(v).success, `refused ${JSON.stringify(v)}`));
const refuses = (schema: { safeParse(v: unknown): { success: boolean } }, values: unknown[]) =>
  values.forEach((v) => assert.ok(!schema.safeParse(v).success, `accepted ${JSON.stringify(v)}`));

describe("Kubernetes grammars (api-rules)", () => {
  it("quantities: every documented form, and their values", () => {
    assert.equal(quantityValue("1.5Ti"), 1.5 * 2 ** 40);
    assert.equal(quantityValue("250m"), 0.25);
    assert.equal(quantityValue("128e6"), 128e6);
    assert.equal(quantityValue("1E-3"), 0.001);
    assert.equal(quantityValue(".5"), 0.5);
    assert.equal(quantityValue("2k"), 2000);
    for (const bad of ["", "1.5TB", "Gi", "1 Gi", "-1", "1.2.3", "1e", "0x10", "lots"])
      assert.equal(quantityValue(bad), undefined, bad);
    accepts(cpuQuantity, ["100m", "0.5", "2", "1.5"]);
    accepts(byteQuantity, ["512Mi", "1.5Gi", "1G", "128e6", "1000"]);
    refuses(byteQuantity, ["512m", "0.5", "1.5", "1GB"]);
  });

  it("a request above its limit is refused per resource", () => {
    assert.ok(
      resources.safeParse({ requests: { cpu: "500m", memory: "1Gi" }, limits: { cpu: "0.5", memory: "1024Mi" } })
        .success,
      "equal is fine",
    );
    const result = resources.safeParse({ requests: { cpu: "2", memory: "1Gi" }, limits: { cpu: "1", memory: "1Gi" } });
    assert.deepEqual(
      result.error?.issues.map((i) => i.path.join(".")),
      ["requests.cpu"],
    );
  });

  it("names, label keys and values, Secret keys", () => {
    accepts(dnsLabel, ["a", "agents-1", "x".repeat(63)]);
    refuses(dnsLabel, ["", "A", "-a", "a-", "a.b", "a_b", "x".repeat(64)]);
    accepts(dnsSubdomain, ["gp3", "fast.ssd-1", "ebs.csi.aws.com"]);
    refuses(dnsSubdomain, ["GP3", "a..b", ".a", "a.", `${"x".repeat(250)}.com`]);
    accepts(labelKey, ["team", "app.kubernetes.io/name", "corp.example/Team_1", "a.b-c"]);
    refuses(labelKey, ["", "/x", "Corp.example/x", "a/b/c", "team name", "x".repeat(64), "-x"]);
    accepts(labelValue, ["", "v1", "A.b_c-9", "x".repeat(63)]);
    refuses(labelValue, ["x".repeat(64), "a b", "-a", "a/b"]);
    accepts(dataKey, ["token", ".hidden", "a.b_c-D"]);
    refuses(dataKey, [".", "..", "..x", "a/b", "a b", ""]);
  });

  it("tolerations: the API server's rules between fields", () => {
    accepts(toleration, [
      { operator: "Exists" },
      { key: "k", value: "v", effect: "NoSchedule" },
      { key: "k", operator: "Exists", effect: "NoExecute", tolerationSeconds: 0 },
    ]);
    refuses(toleration, [
      { key: "k", operator: "Exists", value: "v" },
      { key: "k", effect: "NoSchedule", tolerationSeconds: 5 },
      { value: "v" },
      { key: "k", value: "a b" },
    ]);
  });

  it("image references: the distribution grammar (upper case in tags and hosts, not in paths)", () => {
    accepts(imageReference, [
      "node",
      "node:24.21.0-alpine",
      "docker:28.2.2-dind",
      "library/node:LTS",
      "registry.corp.example:5000/team/agent:V1.2_rc-1",
      "Registry.Corp/team/agent",
      "localhost:5000/a__b/c---d.e",
      `node@sha256:${"0".repeat(64)}`,
      `node:24@sha256:${"a".repeat(64)}`,
      "[fd00::1]:5000/agent:1",
    ]);
    refuses(imageReference, [
      "",
      "Node:24",
      "team/Agent",
      "node:",
      "node:-x",
      `node:${"x".repeat(129)}`,
      "node@sha256:abc",
      "a b",
      "node:1 2",
      "-node",
      "node/",
      "//node",
    ]);
  });

  it("CIDR blocks and the metadata addresses in them", () => {
    accepts(cidrBlock, ["0.0.0.0/0", "10.0.0.0/8", "::/0", "fd00:ec2::254/128", "169.254.169.254/32"]);
    accepts(cidrBlock, ["fe80::/64", "2001:db8:0:0:0:0:0:0/32", "::1.2.3.4/128", "64:ff9b::/96", "10.0.0.10/32"]);
    refuses(cidrBlock, ["10.0.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/8/1", "host/8", "10.0.0.0/x"]);
    // What Node's isIP takes and the API server's strict CIDR parsing does not: a zone, an IPv4-mapped IPv6 address,
    // bits after the prefix, a prefix with a leading zero.
    refuses(cidrBlock, ["fe80::1%eth0/64", "::ffff:10.0.0.0/104", "10.0.0.10/8", "fd00::1/64", "10.0.0.0/08", "::/00"]);
    assert.deepEqual(parseCidr("::1.2.3.4/128"), { family: 6, prefix: 128, bits: 0x01020304n });
    assert.deepEqual(parseCidr("fd00:53::/48"), { family: 6, prefix: 48, bits: 0xfd000053n << 96n });
    assert.deepEqual(parseCidr("10.1.0.0/16"), { family: 4, prefix: 16, bits: 0x0a010000n });
    assert.deepEqual(metadataAddressesIn("0.0.0.0/0"), ["169.254.169.254"]);
    assert.deepEqual(metadataAddressesIn("169.254.0.0/16"), ["169.254.169.254"]);
    assert.deepEqual(metadataAddressesIn("::/0"), ["fd00:ec2::254"]);
    assert.deepEqual(metadataAddressesIn("10.0.0.0/8"), []);
    assert.ok(
      isOnlyMetadata("169.254.169.254/32") &&
        isOnlyMetadata("fd00:ec2::254/128") &&
        !isOnlyMetadata("169.254.169.0/24"),
    );
    assert.deepEqual(egressPeers(["169.254.0.0/16", "fd00::/8"], false), [
      { ipBlock: { cidr: "169.254.0.0/16", except: ["169.254.169.254/32"] } },
      { ipBlock: { cidr: "fd00::/8", except: ["fd00:ec2::254/128"] } },
    ]);
    assert.deepEqual(egressPeers(["0.0.0.0/0"], true), [{ ipBlock: { cidr: "0.0.0.0/0" } }]);
  });
});
