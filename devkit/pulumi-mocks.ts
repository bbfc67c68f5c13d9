// Loaded by mocha before any test file (.mocharc.json "require"): Pulumi's mocks are
// global, so they are set once here. Every registered resource is recorded; an invoke
// with no mock throws, naming its token, instead of hanging.
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import * as pulumi from "@pulumi/pulumi";
import { MockMonitor } from "@pulumi/pulumi/runtime/mocks";
import { specialSecretSig, specialSigKey } from "@pulumi/pulumi/runtime/rpc";

export interface RecordedResource {
  type: string;
  name: string;
  inputs: Record<string, any>;
  id: string;
  /** The resources this one waits for ("type::name"): explicit dependsOn and those its inputs come from. */
  dependsOn: string[];
  /** The inputs whose changes the engine ignores after creation. */
  ignoreChanges: string[];
}

export const recorded: RecordedResource[] = [];

export const ACCOUNT = "123456789012";
export const REGION = "eu-west-1";

/** Invoke results, by token; a test may add to this (a subnet of another VPC, say). */
export const invokeResults: Record<string, (args: Record<string, any>) => Record<string, unknown>> = {
  "aws:index/getPartition:getPartition": () => ({
    partition: "aws",
    dnsSuffix: "amazonaws.com",
    reverseDnsPrefix: "com.amazonaws",
    id: "aws",
  }),
  "aws:index/getServicePrincipal:getServicePrincipal": (args) => ({
    name: `${args.serviceName}.amazonaws.com`,
    suffix: "amazonaws.com",
    serviceName: args.serviceName,
    region: REGION,
    id: `${args.serviceName}.${REGION}.amazonaws.com`,
  }),
  "aws:ec2/getVpcEndpointService:getVpcEndpointService": (args) => ({
    service: args.service,
    serviceName: `com.amazonaws.${REGION}.${args.service}`,
    serviceType: args.serviceType,
    id: args.service,
  }),
  "aws:index/getRegion:getRegion": () => ({
    region: REGION,
    name: REGION,
    id: REGION,
    endpoint: `ec2.${REGION}.amazonaws.com`,
  }),
  "aws:index/getCallerIdentity:getCallerIdentity": () => ({
    accountId: ACCOUNT,
    arn: `arn:aws:iam::${ACCOUNT}:user/test`,
    userId: "AIDATEST",
    id: ACCOUNT,
  }),
  "aws:index/getAvailabilityZones:getAvailabilityZones": () => ({
    names: [`${REGION}a`, `${REGION}b`, `${REGION}c`],
    zoneIds: ["euw1-az1", "euw1-az2", "euw1-az3"],
    id: REGION,
  }),
  "aws:ssm/getParameter:getParameter": (args) => ({
    name: args.name,
    value: args.name.includes("arm64") ? "ami-0aaaaaaaaaaaaaaa1" : "ami-0bbbbbbbbbbbbbbb2",
    type: "String",
    id: args.name,
  }),
  "aws:ec2/getSubnet:getSubnet": (args) => ({
    id: args.id,
    vpcId: args.id.startsWith("subnet-0ff") ? "vpc-0ff000000000000aa" : "vpc-0123456789abcdef0",
    availabilityZone: `${REGION}${"abc"[parseInt(args.id.slice(-1), 16) % 3]}`,
    cidrBlock: "10.20.0.0/20",
  }),
  "aws:ec2/getVpc:getVpc": (args) => ({ id: args.id, cidrBlock: "10.20.0.0/16" }),
};

const hex = (text: string, length: number) => createHash("sha256").update(text).digest("hex").slice(0, length);

/** Attributes the provider would compute, for the types the components create. */
function computed(type: string, name: string, inputs: Record<string, any>): Record<string, unknown> {
  const arn = (service: string, resource: string) => `arn:aws:${service}:${REGION}:${ACCOUNT}:${resource}`;
  switch (type) {
    case "random:index/randomId:RandomId":
      return { hex: hex(name, (inputs.byteLength ?? 4) * 2), b64Url: hex(name, 8) };
    case "aws:secretsmanager/secret:Secret":
      return { arn: arn("secretsmanager", `secret:${name}-AbCdEf`) };
    case "aws:cloudwatch/logGroup:LogGroup":
      return { arn: arn("logs", `log-group:${inputs.name}`) };
    case "aws:iam/role:Role":
      return { arn: `arn:aws:iam::${ACCOUNT}:role/${name}`, name };
    case "aws:iam/instanceProfile:InstanceProfile":
      return { arn: `arn:aws:iam::${ACCOUNT}:instance-profile/${name}`, name };
    case "aws:ec2/launchTemplate:LaunchTemplate":
      return { latestVersion: 1, arn: arn("ec2", `launch-template/lt-${hex(name, 17)}`) };
    case "aws:ssm/parameter:Parameter":
      // A version past the first, as after an update: tests can tell the output from a default.
      return { arn: arn("ssm", `parameter${inputs.name}`), version: 2 };
    case "aws:autoscaling/group:Group":
      return {
        arn: arn("autoscaling", `autoScalingGroup:uuid:autoScalingGroupName/${inputs.name}`),
        name: inputs.name,
      };
    default:
      return {};
  }
}

const idPrefix: Record<string, string> = {
  "aws:ec2/vpc:Vpc": "vpc-",
  "aws:ec2/subnet:Subnet": "subnet-",
  "aws:ec2/securityGroup:SecurityGroup": "sg-",
  "aws:ec2/routeTable:RouteTable": "rtb-",
  "aws:ec2/natGateway:NatGateway": "nat-",
  "aws:ec2/launchTemplate:LaunchTemplate": "lt-",
};

// What each registration waits for and ignores, read off the engine request (the mocks' API does not carry them).
const options = new Map<string, { dependsOn: string[]; ignoreChanges: string[] }>();
/** "type::name" of a URN (urn:pulumi:stack::project::parent$type::name). */
const typeAndName = (urn: string) => {
  const [, , qualifiedType, name] = urn.split("::");
  return `${qualifiedType.split("$").pop()}::${name}`;
};
const registerResource = MockMonitor.prototype.registerResource;
MockMonitor.prototype.registerResource = function (
  this: MockMonitor,
  req: any,
  callback: (err: any, response: any) => void,
) {
  options.set(`${req.getType()}::${req.getName()}`, {
    dependsOn: (req.getDependenciesList() as string[]).map(typeAndName),
    ignoreChanges: req.getIgnorechangesList(),
  });
  return registerResource.call(this, req, callback);
};

// Pulumi stamps each promise it makes with a stack trace, which only its report of leaked promises prints, and only
// with PULUMI_DEBUG_PROMISE_LEAKS set: without it, capturing them was some 40% of the component tests' CPU.
const debuggable = createRequire(__filename)("@pulumi/pulumi/runtime/debuggable") as {
  debugPromiseLeaks: boolean;
  debuggablePromise: <T>(promise: Promise<T>, context: unknown) => Promise<T>;
};
if (!debuggable.debugPromiseLeaks) {
  const stamped = debuggable.debuggablePromise;
  debuggable.debuggablePromise = (promise, context) => {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return stamped(promise, context);
    } finally {
      Error.stackTraceLimit = limit;
    }
  };
}

pulumi.runtime.setMocks(
  {
    newResource(args) {
      const id = (idPrefix[args.type] ?? "") + hex(`${args.type}/${args.name}`, 17);
      const state = { ...args.inputs, ...computed(args.type, args.name, args.inputs) };
      recorded.push({
        type: args.type,
        name: args.name,
        inputs: args.inputs,
        id,
        dependsOn: [],
        ignoreChanges: [],
        ...options.get(`${args.type}::${args.name}`),
      });
      return { id, state };
    },
    call(args) {
      const result = invokeResults[args.token];
      if (!result) throw new Error(`no mock for invoke ${args.token}: add one to devkit/pulumi-mocks.ts`);
      return result(args.inputs);
    },
  },
  "agentpools",
  "test",
  false,
);

/** The value of an Output, or a failure after `ms` (a forgotten mock would hang forever). */
export function valueOf<T>(output: pulumi.Output<T> | pulumi.Input<T>, ms = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`output did not resolve within ${ms} ms (a missing mock?)`)), ms);
    pulumi.output(output).apply((value) => {
      clearTimeout(timer);
      resolve(value as T);
      return value;
    });
  });
}

/** Wait until no resource has registered for a while, then return those whose name starts with `prefix`. */
export async function settled(prefix: string, ms = 5000): Promise<RecordedResource[]> {
  const deadline = Date.now() + ms;
  let count = -1;
  let quiet = 0;
  while (quiet < 5) {
    if (Date.now() > deadline) throw new Error(`resources still registering after ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
    quiet = recorded.length === count ? quiet + 1 : 0;
    count = recorded.length;
  }
  return recorded.filter((r) => r.name === prefix || r.name.startsWith(`${prefix}-`));
}

/** True when a recorded input is a Pulumi secret. */
export const isSecretInput = (value: unknown): boolean =>
  typeof value === "object" && value !== null && (value as Record<string, unknown>)[specialSigKey] === specialSecretSig;

export const byType = (resources: RecordedResource[], type: string) => resources.filter((r) => r.type === type);
export const one = (resources: RecordedResource[], type: string): RecordedResource => {
  const found = byType(resources, type);
  if (found.length !== 1) throw new Error(`expected one ${type}, found ${found.length}`);
  return found[0];
};
