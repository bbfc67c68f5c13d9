import assert from "node:assert/strict";
import { Network } from "../components";
import { byType, invokeResults, settled, valueOf, REGION } from "../devkit/pulumi-mocks";
import { VcsAgentPool } from "../components";
import { vcsArgs } from "../devkit/fixtures";

const T = {
  vpc: "aws:ec2/vpc:Vpc",
  subnet: "aws:ec2/subnet:Subnet",
  nat: "aws:ec2/natGateway:NatGateway",
  routeTable: "aws:ec2/routeTable:RouteTable",
  endpoint: "aws:ec2/vpcEndpoint:VpcEndpoint",
  sg: "aws:ec2/securityGroup:SecurityGroup",
  defaultSg: "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
};

describe("Network (AWS)", () => {
  it("a new VPC: private subnets in two zones, public ones only for one NAT, none assigning public IPs", async () => {
    const network = new Network("net-new");
    const privateIds = await valueOf(network.privateSubnetIds);
    const resources = await settled("net-new");
    assert.equal(byType(resources, T.vpc).length, 1);
    const subnets = byType(resources, T.subnet);
    assert.equal(subnets.length, 4);
    assert.ok(subnets.every((s) => s.inputs.mapPublicIpOnLaunch === false));
    const privateSubnets = subnets.filter((s) => s.name.includes("private"));
    assert.deepEqual(privateSubnets.map((s) => s.id).sort(), [...privateIds].sort());
    assert.deepEqual(
      privateSubnets.map((s) => s.inputs.availabilityZone),
      [`${REGION}a`, `${REGION}b`],
    );
    assert.deepEqual(
      privateSubnets.map((s) => s.inputs.cidrBlock),
      ["10.0.0.0/18", "10.0.64.0/18"],
    );
    const nats = byType(resources, T.nat);
    assert.equal(nats.length, 1);
    const privateRoutes = byType(resources, T.routeTable).filter((r) => r.name.includes("private"));
    assert.ok(privateRoutes.every((r) => r.inputs.routes[0].natGatewayId === nats[0].id));
    const locked = byType(resources, T.defaultSg)[0];
    assert.deepEqual([locked.inputs.ingress, locked.inputs.egress], [[], []]);
  });

  it("a new VPC in three given zones with a NAT gateway each", async () => {
    const network = new Network("net-ha", {
      cidrBlock: "10.8.0.0/20",
      availabilityZones: ["eu-west-1a", "eu-west-1b", "eu-west-1c"],
      natGateways: "perZone",
    });
    await valueOf(network.privateSubnetIds);
    const resources = await settled("net-ha");
    const nats = byType(resources, T.nat);
    assert.equal(nats.length, 3);
    const privateRoutes = byType(resources, T.routeTable).filter((r) => r.name.includes("private"));
    assert.deepEqual(
      privateRoutes.map((r) => r.inputs.routes[0].natGatewayId),
      nats.map((n) => n.id),
    );
    assert.deepEqual(
      byType(resources, T.subnet)
        .filter((s) => s.name.includes("private"))
        .map((s) => s.inputs.cidrBlock),
      ["10.8.0.0/22", "10.8.4.0/22", "10.8.8.0/22"],
    );
  });

  it("endpoints: interface ones with private DNS behind an HTTPS-only group, S3 as a gateway on the private routes", async () => {
    const network = new Network("net-ep", { endpoints: ["secretsmanager", "logs", "autoscaling", "ssm", "ecr", "s3"] });
    await valueOf(network.privateSubnetIds);
    const resources = await settled("net-ep");
    const endpoints = byType(resources, T.endpoint);
    assert.deepEqual(
      endpoints.map((e) => e.inputs.serviceName).sort(),
      ["autoscaling", "ec2messages", "ecr.api", "ecr.dkr", "logs", "s3", "secretsmanager", "ssm", "ssmmessages"]
        .map((s) => `com.amazonaws.${REGION}.${s}`)
        .sort(),
    );
    const s3 = endpoints.find((e) => e.inputs.serviceName.endsWith(".s3"));
    assert.equal(s3?.inputs.vpcEndpointType, "Gateway");
    assert.equal(s3?.inputs.routeTableIds.length, 2);
    const interfaces = endpoints.filter((e) => e !== s3);
    assert.ok(
      interfaces.every(
        (e) =>
          e.inputs.vpcEndpointType === "Interface" &&
          e.inputs.privateDnsEnabled === true &&
          e.inputs.subnetIds.length === 2,
      ),
    );
    const group = byType(resources, T.sg)[0];
    assert.deepEqual(
      group.inputs.ingress.map((r: Record<string, unknown>) => [r.protocol, r.fromPort, r.toPort, r.cidrBlocks]),
      [["tcp", 443, 443, ["10.0.0.0/16"]]],
    );
  });

  it("an existing VPC: nothing new but the endpoints, one endpoint subnet per zone", async () => {
    const subnets = ["subnet-0123456789abcdef1", "subnet-0123456789abcdef4", "subnet-0123456789abcdef2"]; // ...1 and ...4 share a zone
    const network = new Network("net-old", {
      existingVpcId: "vpc-0123456789abcdef0",
      existingSubnetIds: subnets,
      existingRouteTableIds: ["rtb-0123456789abcdef0"],
      endpoints: ["secretsmanager", "s3"],
    });
    assert.deepEqual(await valueOf(network.privateSubnetIds), subnets);
    assert.equal(await valueOf(network.vpcId), "vpc-0123456789abcdef0");
    const resources = await settled("net-old");
    assert.equal(
      byType(resources, T.vpc).length + byType(resources, T.subnet).length + byType(resources, T.nat).length,
      0,
    );
    const endpoints = byType(resources, T.endpoint);
    const secrets = endpoints.find((e) => e.inputs.serviceName.endsWith("secretsmanager"));
    assert.deepEqual(secrets?.inputs.subnetIds, ["subnet-0123456789abcdef4", "subnet-0123456789abcdef2"]);
    assert.deepEqual(endpoints.find((e) => e.inputs.serviceName.endsWith("s3"))?.inputs.routeTableIds, [
      "rtb-0123456789abcdef0",
    ]);
    // With Secrets Manager's, SSM's (a pool's configuration parameter is read at boot the same way), not Session Manager's.
    assert.deepEqual(endpoints.map((e) => e.inputs.serviceName.split(".").at(-1)).sort(), [
      "s3",
      "secretsmanager",
      "ssm",
    ]);
    assert.deepEqual(byType(resources, T.sg)[0].inputs.ingress[0].cidrBlocks, ["10.20.0.0/16"], "the VPC's own range");
  });

  it("an existing VPC: a subnet of another VPC is refused at preview", async () => {
    const network = new Network("net-stray", {
      existingVpcId: "vpc-0123456789abcdef0",
      existingSubnetIds: ["subnet-0123456789abcdef1", "subnet-0ff00000000000001"],
    });
    await assert.rejects(
      (network.privateSubnetIds as unknown as { promise(): Promise<unknown> }).promise(),
      /existingSubnetIds: "subnet-0ff00000000000001" belongs to vpc-0ff000000000000aa, not to existingVpcId "vpc-0123456789abcdef0"/,
    );
  });

  it("a pool placed in a Network's outputs runs in its private subnets", async () => {
    const network = new Network("net-use");
    const pool = new VcsAgentPool(
      "net-use-pool",
      vcsArgs({ vpcId: network.vpcId, subnetIds: network.privateSubnetIds }),
    );
    await valueOf(pool.autoScalingGroupName);
    const resources = await settled("net-use");
    const group = resources.find((r) => r.type === "aws:autoscaling/group:Group");
    assert.deepEqual(group?.inputs.vpcZoneIdentifiers, await valueOf(network.privateSubnetIds));
    assert.equal(
      resources.find((r) => r.name === "net-use-pool-agents" && r.type === T.sg)?.inputs.vpcId,
      await valueOf(network.vpcId),
    );
  });

  it("a pool in its subnets waits for the endpoints too: it calls AWS at boot through them", async () => {
    const network = new Network("net-wait", { endpoints: ["secretsmanager", "logs"] });
    const pool = new VcsAgentPool(
      "net-wait-pool",
      vcsArgs({ vpcId: network.vpcId, subnetIds: network.privateSubnetIds }),
    );
    await valueOf(pool.autoScalingGroupName);
    const group = (await settled("net-wait-pool")).find((r) => r.type === "aws:autoscaling/group:Group");
    for (const needed of [
      "aws:ec2/vpcEndpoint:VpcEndpoint::net-wait-secretsmanager",
      "aws:ec2/vpcEndpoint:VpcEndpoint::net-wait-logs",
      "aws:ec2/natGateway:NatGateway::net-wait-nat-0",
    ]) {
      assert.ok(group?.dependsOn.includes(needed), `the group does not wait for ${needed}`);
    }
  });

  it("endpoint service names as the partition names them (China's differ), never a hard-coded prefix", async () => {
    const saved = invokeResults["aws:ec2/getVpcEndpointService:getVpcEndpointService"];
    const asked: Record<string, unknown>[] = [];
    invokeResults["aws:ec2/getVpcEndpointService:getVpcEndpointService"] = (args) => (
      asked.push(args),
      { serviceName: `cn.com.amazonaws.cn-north-1.${args.service}`, id: args.service }
    );
    try {
      const network = new Network("net-cn", { endpoints: ["ecr", "s3"] });
      await valueOf(network.privateSubnetIds);
      const endpoints = byType(await settled("net-cn"), T.endpoint);
      assert.deepEqual(endpoints.map((e) => e.inputs.serviceName).sort(), [
        "cn.com.amazonaws.cn-north-1.ecr.api",
        "cn.com.amazonaws.cn-north-1.ecr.dkr",
        "cn.com.amazonaws.cn-north-1.s3",
      ]);
      assert.deepEqual(asked.map((a) => [a.service, a.serviceType]).sort(), [
        ["ecr.api", "Interface"],
        ["ecr.dkr", "Interface"],
        ["s3", "Gateway"],
      ]);
    } finally {
      invokeResults["aws:ec2/getVpcEndpointService:getVpcEndpointService"] = saved;
    }
  });

  it("tags every resource with the user's tags and the kit's Name", async () => {
    const network = new Network("net-tags", { tags: { team: "platform" }, endpoints: ["logs"] });
    await valueOf(network.privateSubnetIds);
    const resources = await settled("net-tags");
    const taggable = resources.filter(
      (r) => r.type.startsWith("aws:") && r.type !== "aws:ec2/routeTableAssociation:RouteTableAssociation",
    );
    assert.ok(
      taggable.every((r) => r.inputs.tags?.team === "platform" && typeof r.inputs.tags?.Name === "string"),
      JSON.stringify(taggable.map((r) => [r.type, r.inputs.tags])),
    );
  });
});
