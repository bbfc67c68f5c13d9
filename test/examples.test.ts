import assert from "node:assert/strict";
import * as pulumi from "@pulumi/pulumi";
import { decodeUserData } from "../components";
import { byType, isSecretInput, settled, valueOf } from "../devkit/pulumi-mocks";
import { CA_BUNDLE, PRIVATE_KEY_B64, TOKENS } from "../devkit/fixtures";

const SECRETS = {
  "agentpools:vcsAgentToken": TOKENS.vcs,
  "agentpools:workerToken": TOKENS.worker,
  "agentpools:workerPrivateKey": PRIVATE_KEY_B64,
  "agentpools:flowsPoolToken": TOKENS.flows,
};

/** Load an example program under the mocks with its sample configuration plus secrets. */
function load(example: string, config: Record<string, string>) {
  pulumi.runtime.setAllConfig({ ...config, ...SECRETS }, Object.keys(SECRETS));
  return import(`../examples/${example}`);
}

describe("examples run under the mocks", () => {
  it("aws-new-vpc: a network and three pools, credentials secret and out of user-data", async () => {
    const program = await load("aws-new-vpc", {
      "agentpools:gitEndpoint": "https://gitlab.corp.example.com",
      "agentpools:gitVendor": "gitlab",
      "agentpools:flowsPoolId": "01JEXAMPLEPOOLID",
      "agentpools:flowsGatewayEndpoint": "https://gateway.useflows.eu",
      "agentpools:flowsBackendEndpoint": "https://useflows.eu",
    });
    const pools = (await valueOf(program.pools)) as Record<string, { group: string }>;
    assert.deepEqual(Object.keys(pools), ["git", "workers", "flows"]);
    assert.equal(((await valueOf(program.privateSubnetIds)) as string[]).length, 2);
    const resources = [
      ...(await settled("agents")),
      ...(await settled("git")),
      ...(await settled("workers")),
      ...(await settled("flows")),
    ];
    const versions = byType(resources, "aws:secretsmanager/secretVersion:SecretVersion");
    assert.equal(versions.length, 3);
    assert.ok(versions.every((v) => isSecretInput(v.inputs.secretString)));
    for (const lt of byType(resources, "aws:ec2/launchTemplate:LaunchTemplate")) {
      const text = decodeUserData(lt.inputs.userData).script;
      for (const secret of Object.values(SECRETS)) assert.ok(!text.includes(secret));
    }
  });

  it("aws-existing-vpc: reuses the subnets and passes the proxy and its CA (from SSM)", async () => {
    const program = await load("aws-existing-vpc", {
      "agentpools:vpcId": "vpc-0123456789abcdef0",
      "agentpools:subnetIds": JSON.stringify(["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"]),
      "agentpools:gitEndpoint": "https://bitbucket.corp.example.com:7990",
      "agentpools:gitVendor": "bitbucket_datacenter",
      "agentpools:httpsProxy": "http://proxy.corp.example.com:3128",
      "agentpools:noProxy": ".corp.example.com",
      "agentpools:proxyCaCertificates": CA_BUNDLE,
    });
    await valueOf(program.workerGroup);
    const resources = [...(await settled("existing")), ...(await settled("bitbucket")), ...(await settled("runners"))];
    assert.equal(byType(resources, "aws:ec2/vpc:Vpc").length, 0);
    const groups = byType(resources, "aws:autoscaling/group:Group");
    assert.ok(
      groups.every(
        (g) =>
          JSON.stringify(g.inputs.vpcZoneIdentifiers) ===
          JSON.stringify(["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"]),
      ),
    );
    // Every file an instance of a pool gets: from user-data, and from the pool's config parameter when it has one.
    const filesOf = (pool: string) =>
      decodeUserData(
        byType(resources, "aws:ec2/launchTemplate:LaunchTemplate").find((lt) => lt.name === `${pool}-agents`)?.inputs
          .userData,
        byType(resources, "aws:ssm/parameter:Parameter").find((p) => p.name === `${pool}-config`)?.inputs.value.value,
      ).files;
    const config = JSON.parse(filesOf("bitbucket").get("/etc/agentpools/vcs-agent.json")?.content as string);
    assert.equal(config.settings.httpsProxy, "http://proxy.corp.example.com:3128");
    // The runtime's process gets it from its unit too, with the AWS APIs of the region around it.
    const unit = filesOf("bitbucket").get("/etc/systemd/system/agentpools-vcs-agent.service")?.content as string;
    assert.match(unit, /^Environment="HTTPS_PROXY=http:\/\/proxy.corp.example.com:3128"$/m);
    assert.match(unit, /^Environment="NO_PROXY=\.corp\.example\.com,\.eu-west-1\.amazonaws\.com,169\.254\.169\.254"$/m);
    assert.equal(config.settings.parallelism, 8);
    // The CA is read at boot from each pool's parameter, through the VPC's ssm endpoint; so is a pool's
    // configuration when it does not fit in user-data beside the bundle: each travels one way only.
    const parameters = byType(resources, "aws:ssm/parameter:Parameter").map((p) => p.name);
    const inUserData = (pool: string) =>
      [
        ...decodeUserData(
          byType(resources, "aws:ec2/launchTemplate:LaunchTemplate").find((lt) => lt.name.startsWith(`${pool}-`))
            ?.inputs.userData,
        ).files.keys(),
      ].some((path) => /^\/etc\/agentpools\/[\w-]+\.json$/.test(path));
    assert.deepEqual(parameters.sort(), [
      "bitbucket-ca-certificates",
      ...(inUserData("bitbucket") ? [] : ["bitbucket-config"]),
      "runners-ca-certificates",
      ...(inUserData("runners") ? [] : ["runners-config"]),
    ]);
    assert.ok(
      byType(resources, "aws:ec2/vpcEndpoint:VpcEndpoint").some((e) => String(e.inputs.serviceName).endsWith(".ssm")),
    );
    for (const lt of byType(resources, "aws:ec2/launchTemplate:LaunchTemplate")) {
      const decoded = decodeUserData(lt.inputs.userData);
      assert.ok(!decoded.files.has("/etc/pki/ca-trust/source/anchors/agentpools.pem"));
      assert.match(decoded.script, /^retry aws ssm get-parameter /m);
    }
  });
});
