// `npm run preview`: runs the top-level program (examples/aws-new-vpc) offline, on an embedded
// default configuration, against the same AWS stand-in the tests use, and prints what a
// `pulumi up` would create, with each pool's security settings and user-data size.
import * as pulumi from "@pulumi/pulumi";
import { recorded, settled, valueOf } from "../devkit/pulumi-mocks";
import { decodeUserData, USER_DATA_LIMIT } from "../components/aws/userdata";

const DEFAULT_CONFIG = {
  "agentpools:gitEndpoint": "https://gitlab.corp.example.com",
  "agentpools:gitVendor": "gitlab",
  "agentpools:allowedProjects": "^(infrastructure|platform)/.*$",
  "agentpools:flowsPoolId": "01JDEMOPOOLID",
  "agentpools:flowsGatewayEndpoint": "https://gateway.useflows.eu",
  "agentpools:flowsBackendEndpoint": "https://useflows.eu",
};
// Demonstration credentials: they show where secrets go, and that they go nowhere else.
const DEMO_SECRETS = {
  "agentpools:vcsAgentToken": "demo-vcs-agent-token",
  "agentpools:workerToken": "demo-worker-token",
  "agentpools:workerPrivateKey": Buffer.from("-----BEGIN PRIVATE KEY-----\nDEMO\n-----END PRIVATE KEY-----\n").toString("base64"),
  "agentpools:flowsPoolToken": "demo-flows-token",
};

async function main(): Promise<void> {
  pulumi.runtime.setAllConfig({ ...DEFAULT_CONFIG, ...DEMO_SECRETS }, Object.keys(DEMO_SECRETS));
  const program = await import("../examples/aws-new-vpc");
  await valueOf(program.pools, 10_000);
  await settled("", 10_000);

  console.log("agentpools: offline preview of examples/aws-new-vpc (no AWS account, nothing is created)\n");
  const counts = new Map<string, number>();
  for (const r of recorded) counts.set(r.type, (counts.get(r.type) ?? 0) + 1);
  console.log(`${recorded.length} resources would be created:`);
  for (const [type, count] of [...counts].sort()) console.log(`  ${String(count).padStart(3)}  ${type}`);

  console.log("\npools:");
  for (const lt of recorded.filter((r) => r.type === "aws:ec2/launchTemplate:LaunchTemplate")) {
    const pool = lt.name.replace(/-agents$/, "");
    const group = recorded.find((r) => r.type === "aws:autoscaling/group:Group" && r.name === lt.name);
    const sg = recorded.find((r) => r.type === "aws:ec2/securityGroup:SecurityGroup" && r.name === lt.name);
    const gzipped = Buffer.from(lt.inputs.userData, "base64");
    const decoded = decodeUserData(gzipped);
    const text = decoded.parts.map((p) => p.body).join("");
    const leaked = Object.values(DEMO_SECRETS).some((secret) => text.includes(secret));
    const config = [...decoded.files.values()].find((f) => f.path.startsWith("/etc/agentpools/") && f.path.endsWith(".json"));
    console.log(`  ${pool}: ${JSON.parse(config?.content ?? "{}").role} on ${lt.inputs.instanceType}, ${group?.inputs.minSize}..${group?.inputs.maxSize} instances in group ${group?.inputs.name}`);
    console.log(`    IMDSv2 ${lt.inputs.metadataOptions.httpTokens}, hop limit ${lt.inputs.metadataOptions.httpPutResponseHopLimit}; root volume gp3 encrypted=${lt.inputs.blockDeviceMappings[0].ebs.encrypted}; public IP ${lt.inputs.networkInterfaces[0].associatePublicIpAddress}; inbound rules ${sg?.inputs.ingress.length}`);
    console.log(`    user-data ${gzipped.length} of ${USER_DATA_LIMIT} bytes gzipped; credentials in user-data: ${leaked ? "YES (bug)" : "none"}`);
  }
  console.log("\nTo deploy for real: see README.md, \"Deploy an example\".");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
