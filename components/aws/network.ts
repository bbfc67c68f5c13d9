import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { formatIssues, InvalidArgumentsError } from "../shared/validation";
import { availabilityZone, cidrBlock, nameProblem, NETWORK_NAME, regionOfZone, tagsSchema } from "./aws-rules";

/** VPC endpoints a pool may need to run with no internet egress except to its gateway. */
export const ENDPOINT_SERVICES = {
  secretsmanager: ["secretsmanager"],
  logs: ["logs"],
  autoscaling: ["autoscaling"],
  ssm: ["ssm", "ssmmessages", "ec2messages"],
  ecr: ["ecr.api", "ecr.dkr"],
  s3: ["s3"],
} as const;
export type EndpointName = keyof typeof ENDPOINT_SERVICES;
const GATEWAY_ENDPOINTS: readonly string[] = ["s3"];

const subnetId = z
  .string()
  .regex(/^subnet-[0-9a-f]{8,17}$/, { error: 'must be a subnet ID such as "subnet-0123456789abcdef0"' });

export const networkArgs = z
  .strictObject({
    /** New VPC: its address range (a /16 to a /24). */
    cidrBlock: cidrBlock("10.0.0.0/16").optional(),
    /** New VPC: how many zones get a private subnet (2 or 3). */
    availabilityZoneCount: z.union([z.literal(2), z.literal(3)], { error: "must be 2 or 3" }).optional(),
    /** New VPC: the zones to use, instead of the region's first available ones. */
    availabilityZones: z.array(availabilityZone).min(2).max(3).optional(),
    /** New VPC: one NAT gateway for all zones (cheaper) or one per zone (survives a zone outage). */
    natGateways: z.enum(["single", "perZone"]).optional(),
    /** Existing VPC: its ID. */
    existingVpcId: z
      .string()
      .regex(/^vpc-[0-9a-f]{8,17}$/, { error: 'must be a VPC ID such as "vpc-0123456789abcdef0"' })
      .optional(),
    /** Existing VPC: the private subnets the pools run in. */
    existingSubnetIds: z.array(subnetId).min(1).max(16).optional(),
    /** Existing VPC: the private subnets' route tables, for a gateway (S3) endpoint. */
    existingRouteTableIds: z
      .array(
        z.string().regex(/^rtb-[0-9a-f]{8,17}$/, { error: 'must be a route table ID such as "rtb-0123456789abcdef0"' }),
      )
      .optional(),
    endpoints: z.array(z.enum(Object.keys(ENDPOINT_SERVICES) as [EndpointName, ...EndpointName[]])).default([]),
    /** Tags for every resource (the kit adds Name). */
    tags: tagsSchema(["Name"]),
  })
  .superRefine((args, ctx) => {
    const issue = (path: string, input: unknown, message: string) =>
      ctx.addIssue({ code: "custom", path: [path], input, message });
    if (args.existingVpcId !== undefined) {
      for (const key of ["cidrBlock", "availabilityZoneCount", "availabilityZones", "natGateways"] as const) {
        if (args[key] !== undefined)
          issue(key, args[key], "applies to a new VPC only; leave it out with existingVpcId");
      }
      if (!args.existingSubnetIds)
        issue("existingSubnetIds", undefined, "is required with existingVpcId: the private subnets the pools run in");
      const ids = args.existingSubnetIds ?? [];
      if (new Set(ids).size !== ids.length) issue("existingSubnetIds", ids, "lists a subnet twice");
      if (args.endpoints.includes("s3") && !args.existingRouteTableIds?.length) {
        issue(
          "existingRouteTableIds",
          args.existingRouteTableIds,
          "is required for the s3 endpoint in an existing VPC (the private subnets' route tables)",
        );
      }
    } else {
      for (const key of ["existingSubnetIds", "existingRouteTableIds"] as const) {
        if (args[key] !== undefined) issue(key, args[key], "applies with existingVpcId only");
      }
      const prefix = Number((args.cidrBlock ?? DEFAULT_CIDR).split("/")[1]);
      if (prefix < 16 || prefix > 24) issue("cidrBlock", args.cidrBlock, "must have a prefix from /16 to /24");
      const zones = args.availabilityZones ?? [];
      if (new Set(zones).size !== zones.length)
        issue("availabilityZones", zones, "lists a zone twice: each private subnet needs a zone of its own");
      if (new Set(zones.map(regionOfZone)).size > 1)
        issue("availabilityZones", zones, "names zones of different regions: a VPC lives in one");
      if (
        args.availabilityZones &&
        args.availabilityZoneCount &&
        args.availabilityZones.length !== args.availabilityZoneCount
      ) {
        issue(
          "availabilityZoneCount",
          args.availabilityZoneCount,
          `disagrees with availabilityZones (${args.availabilityZones.length} given)`,
        );
      }
    }
  });

export type NetworkArgs = z.input<typeof networkArgs>;

export const DEFAULT_CIDR = "10.0.0.0/16";

const toNumber = (ip: string) => ip.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
const toIp = (n: number) => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");

/**
 * Carve a VPC's range: a private subnet of a quarter of the range per zone (up to three),
 * and small public subnets (a sixteenth each, only for NAT) in the last quarter.
 */
export function planSubnets(cidrBlock: string, zones: number): { private: string[]; public: string[] } {
  const [ip, prefixText] = cidrBlock.split("/");
  const prefix = Number(prefixText);
  const base = toNumber(ip) - (toNumber(ip) % 2 ** (32 - prefix));
  const quarter = 2 ** (32 - prefix - 2);
  const sixteenth = 2 ** (32 - prefix - 4);
  return {
    private: Array.from({ length: zones }, (_, i) => `${toIp(base + i * quarter)}/${prefix + 2}`),
    public: Array.from({ length: zones }, (_, i) => `${toIp(base + 3 * quarter + i * sixteenth)}/${prefix + 4}`),
  };
}

/** A VPC for agent pools: new (private subnets with NAT egress) or existing (subnets reused), with optional VPC endpoints. */
export class Network extends pulumi.ComponentResource {
  readonly vpcId: pulumi.Output<string>;
  /** Where pools run: pass as a pool's subnetIds. */
  readonly privateSubnetIds: pulumi.Output<string[]>;
  /** Only for NAT gateways (new VPC); empty for an existing VPC. */
  readonly publicSubnetIds: pulumi.Output<string[]>;
  readonly endpointSecurityGroupId?: pulumi.Output<string>;

  constructor(name: string, args: NetworkArgs = {}, opts?: pulumi.ComponentResourceOptions) {
    const named = nameProblem(name, NETWORK_NAME);
    const result = networkArgs.safeParse(args, { reportInput: true });
    if (named || !result.success)
      throw new InvalidArgumentsError("Network", name, [
        ...(named ? [named] : []),
        ...(result.success ? [] : formatIssues(result.error)),
      ]);
    const parsed = result.data;
    super("agentpools:aws:Network", name, {}, opts);
    const invokeOpts = { parent: this };

    let cidr: pulumi.Output<string>;
    let endpointSubnetIds: pulumi.Output<string[]>;
    let routeTableIds: pulumi.Output<string[]>;
    if (parsed.existingVpcId) {
      const vpcId = parsed.existingVpcId;
      const subnets = (parsed.existingSubnetIds as string[]).map((id) => aws.ec2.getSubnetOutput({ id }, invokeOpts));
      // Checked at preview: a subnet of another VPC would only fail later, at launch.
      const checked = pulumi.all(subnets).apply((found) => {
        const stray = found.filter((s) => s.vpcId !== vpcId);
        if (stray.length > 0) {
          throw new InvalidArgumentsError(
            "Network",
            name,
            stray.map((s) => `existingSubnetIds: "${s.id}" belongs to ${s.vpcId}, not to existingVpcId "${vpcId}"`),
          );
        }
        return found;
      });
      this.vpcId = checked.apply(() => vpcId);
      this.privateSubnetIds = checked.apply((found) => found.map((s) => s.id));
      this.publicSubnetIds = pulumi.output([]);
      cidr = aws.ec2.getVpcOutput({ id: vpcId }, invokeOpts).cidrBlock;
      // An interface endpoint takes one subnet per zone.
      endpointSubnetIds = checked.apply((found) => [...new Map(found.map((s) => [s.availabilityZone, s.id])).values()]);
      routeTableIds = pulumi.output(parsed.existingRouteTableIds ?? []);
    } else {
      const created = this.createVpc(name, parsed);
      this.vpcId = created.vpcId;
      this.privateSubnetIds = created.privateSubnetIds;
      this.publicSubnetIds = created.publicSubnetIds;
      cidr = pulumi.output(parsed.cidrBlock ?? DEFAULT_CIDR);
      endpointSubnetIds = created.endpointSubnetIds;
      routeTableIds = created.privateRouteTableIds;
    }

    if (parsed.endpoints.length > 0) {
      const endpoints = this.createEndpoints(
        name,
        parsed.endpoints,
        cidr,
        endpointSubnetIds,
        routeTableIds,
        parsed.tags,
      );
      this.endpointSecurityGroupId = endpoints.securityGroupId;
      // A pool placed in these subnets calls AWS at boot: through the endpoints, once they exist.
      this.privateSubnetIds = waitFor(this.privateSubnetIds, endpoints.ids);
    }
    this.registerOutputs({
      vpcId: this.vpcId,
      privateSubnetIds: this.privateSubnetIds,
      publicSubnetIds: this.publicSubnetIds,
    });
  }

  private createVpc(name: string, args: z.output<typeof networkArgs>) {
    const opts = { parent: this };
    const cidrBlock = args.cidrBlock ?? DEFAULT_CIDR;
    const zoneCount = args.availabilityZones?.length ?? args.availabilityZoneCount ?? 2;
    const zones: pulumi.Output<string>[] = args.availabilityZones
      ? args.availabilityZones.map((zone) => pulumi.output(zone))
      : Array.from({ length: zoneCount }, (_, i) =>
          aws
            .getAvailabilityZonesOutput(
              { state: "available", filters: [{ name: "opt-in-status", values: ["opt-in-not-required"] }] },
              { parent: this },
            )
            .names.apply((names) => {
              if (names.length < zoneCount)
                throw new InvalidArgumentsError("Network", name, [
                  `availabilityZoneCount: ${zoneCount} zones wanted, the region has ${names.length}`,
                ]);
              return names[i];
            }),
        );
    const plan = planSubnets(cidrBlock, zoneCount);
    const tag = (suffix: string) => ({ ...args.tags, Name: `${name}-${suffix}` });

    const vpc = new aws.ec2.Vpc(
      `${name}-vpc`,
      { cidrBlock, enableDnsHostnames: true, enableDnsSupport: true, tags: tag("vpc") },
      opts,
    );
    // The default security group allows traffic between its members; nothing should use it, so empty it.
    new aws.ec2.DefaultSecurityGroup(
      `${name}-default`,
      { vpcId: vpc.id, ingress: [], egress: [], tags: tag("default-unused") },
      opts,
    );
    const gateway = new aws.ec2.InternetGateway(`${name}-igw`, { vpcId: vpc.id, tags: tag("igw") }, opts);

    const publicRoutes = new aws.ec2.RouteTable(
      `${name}-public`,
      { vpcId: vpc.id, routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: gateway.id }], tags: tag("public") },
      opts,
    );
    const publicSubnets = zones.map((zone, i) => {
      const subnet = new aws.ec2.Subnet(
        `${name}-public-${i}`,
        {
          vpcId: vpc.id,
          cidrBlock: plan.public[i],
          availabilityZone: zone,
          mapPublicIpOnLaunch: false,
          tags: tag(`public-${i}`),
        },
        opts,
      );
      new aws.ec2.RouteTableAssociation(
        `${name}-public-${i}`,
        { subnetId: subnet.id, routeTableId: publicRoutes.id },
        opts,
      );
      return subnet;
    });

    const natCount = args.natGateways === "perZone" ? zoneCount : 1;
    const nats = Array.from({ length: natCount }, (_, i) => {
      const address = new aws.ec2.Eip(`${name}-nat-${i}`, { domain: "vpc", tags: tag(`nat-${i}`) }, opts);
      return new aws.ec2.NatGateway(
        `${name}-nat-${i}`,
        { allocationId: address.id, subnetId: publicSubnets[i].id, tags: tag(`nat-${i}`) },
        { ...opts, dependsOn: [gateway] },
      );
    });

    const privateRouteTables: aws.ec2.RouteTable[] = [];
    const associations: aws.ec2.RouteTableAssociation[] = [];
    const privateSubnets = zones.map((zone, i) => {
      const subnet = new aws.ec2.Subnet(
        `${name}-private-${i}`,
        {
          vpcId: vpc.id,
          cidrBlock: plan.private[i],
          availabilityZone: zone,
          mapPublicIpOnLaunch: false,
          tags: tag(`private-${i}`),
        },
        opts,
      );
      const routes = new aws.ec2.RouteTable(
        `${name}-private-${i}`,
        {
          vpcId: vpc.id,
          routes: [{ cidrBlock: "0.0.0.0/0", natGatewayId: nats[Math.min(i, natCount - 1)].id }],
          tags: tag(`private-${i}`),
        },
        opts,
      );
      associations.push(
        new aws.ec2.RouteTableAssociation(
          `${name}-private-${i}`,
          { subnetId: subnet.id, routeTableId: routes.id },
          opts,
        ),
      );
      privateRouteTables.push(routes);
      return subnet;
    });

    return {
      vpcId: vpc.id,
      // Known only once their route out exists: a pool placed here waits for the NAT gateways
      // and the route table associations before its first instance boots.
      privateSubnetIds: waitFor(pulumi.all(privateSubnets.map((s) => s.id)), [
        ...nats.map((n) => n.id),
        ...associations.map((a) => a.id),
      ]),
      publicSubnetIds: pulumi.all(publicSubnets.map((s) => s.id)),
      privateRouteTableIds: pulumi.all(privateRouteTables.map((r) => r.id)),
      endpointSubnetIds: pulumi.all(privateSubnets.map((s) => s.id)),
    };
  }

  private createEndpoints(
    name: string,
    endpoints: EndpointName[],
    cidr: pulumi.Output<string>,
    subnetIds: pulumi.Output<string[]>,
    routeTableIds: pulumi.Output<string[]>,
    tags: Record<string, string>,
  ): { securityGroupId: pulumi.Output<string>; ids: pulumi.Output<string>[] } {
    const opts = { parent: this };
    const securityGroup = new aws.ec2.SecurityGroup(
      `${name}-endpoints`,
      {
        // AWS refuses a group name starting "sg-" (Pulumi would auto-name it "<name>-endpoints-...").
        namePrefix: `agentpools-${name.slice(0, 64)}-endpoints-`,
        description: `agentpools ${name}: HTTPS from the VPC to its interface endpoints`,
        vpcId: this.vpcId,
        ingress: [
          { description: "HTTPS from the VPC", protocol: "tcp", fromPort: 443, toPort: 443, cidrBlocks: [cidr] },
        ],
        egress: [],
        tags: { ...tags, Name: `${name}-endpoints` },
      },
      opts,
    );
    const ids: pulumi.Output<string>[] = [];
    const services = new Set(endpoints.flatMap((endpoint) => ENDPOINT_SERVICES[endpoint]));
    // A pool that reads its secret through an endpoint reads its configuration parameter (SSM) the same way.
    if (services.has("secretsmanager")) services.add("ssm");
    for (const service of services) {
      const gateway = GATEWAY_ENDPOINTS.includes(service);
      const serviceType = gateway ? "Gateway" : "Interface";
      // The name AWS gives the service here: partitions differ (com.amazonaws., cn.com.amazonaws., ...).
      const serviceName = aws.ec2.getVpcEndpointServiceOutput({ service, serviceType }, { parent: this }).serviceName;
      const created = new aws.ec2.VpcEndpoint(
        `${name}-${service.replace(".", "-")}`,
        {
          vpcId: this.vpcId,
          serviceName,
          vpcEndpointType: serviceType,
          ...(gateway
            ? { routeTableIds }
            : { subnetIds, securityGroupIds: [securityGroup.id], privateDnsEnabled: true }),
          tags: { ...tags, Name: `${name}-${service}` },
        },
        opts,
      );
      ids.push(created.id);
    }
    return { securityGroupId: securityGroup.id, ids };
  }
}

/** `value`, once every one of `others` is known: an Output that carries their resources as dependencies. */
function waitFor<T>(value: pulumi.Output<T>, others: pulumi.Output<unknown>[]): pulumi.Output<T> {
  return pulumi.all([value, ...others]).apply(([first]) => first as T);
}
