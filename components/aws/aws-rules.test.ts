import assert from "node:assert/strict";
import type { z } from "zod";
import {
  alarmAction,
  arnPlace,
  availabilityZone,
  cidrBlock,
  hasHostBits,
  kmsKeyArn,
  kmsKeyOrAliasArn,
  nameProblem,
  NETWORK_NAME,
  policyArn,
  policyStatement,
  POOL_NAME,
  regionOfZone,
  secretArn,
  tagsSchema,
} from "./aws-rules";
import { arnPlaceProblems } from "./pool-args";

const A = "123456789012";

/** Each schema with values AWS takes, unusual ones first among them, and values it refuses. */
const corpus: [string, z.ZodType, unknown[], unknown[]][] = [
  [
    "Secrets Manager ARN",
    secretArn,
    [
      `arn:aws:secretsmanager:eu-west-1:${A}:secret:vcs-AbCdEf`,
      `arn:aws-cn:secretsmanager:cn-north-1:${A}:secret:corp/agents/vcs.token+1=@-9zZ9zZ`,
      `arn:aws-us-gov:secretsmanager:us-gov-west-1:${A}:secret:a-bcdefg`,
    ],
    [
      `arn:aws:secretsmanager:eu-west-1:${A}:secret:corp/vcs`,
      `arn:aws:secretsmanager:eu-west-1:12345:secret:x-AbCdEf`,
      `arn:aws:ssm:eu-west-1:${A}:parameter/x-AbCdEf`,
      "vcs-AbCdEf",
    ],
  ],
  [
    "KMS key ARN (grants)",
    kmsKeyArn,
    [
      `arn:aws:kms:eu-west-1:${A}:key/1234abcd-12ab-34cd-56ef-1234567890ab`,
      `arn:aws:kms:eu-west-1:${A}:key/mrk-1234abcd12ab34cd56ef1234567890ab`,
      `arn:aws-iso:kms:us-iso-east-1:${A}:key/1234abcd-12ab-34cd-56ef-1234567890ab`,
    ],
    [`arn:aws:kms:eu-west-1:${A}:alias/agents`, "alias/agents", `arn:aws:kms:eu-west-1:${A}:key/not-a-key-id`],
  ],
  [
    "KMS key or alias ARN (EBS)",
    kmsKeyOrAliasArn,
    [
      `arn:aws:kms:eu-west-1:${A}:alias/aws/ebs`,
      `arn:aws:kms:eu-west-1:${A}:alias/team_a/volumes-1`,
      `arn:aws:kms:eu-west-1:${A}:key/1234abcd-12ab-34cd-56ef-1234567890ab`,
    ],
    ["alias/aws/ebs", `arn:aws:kms:eu-west-1:${A}:alias/`],
  ],
  [
    "permissions boundary",
    policyArn,
    [
      `arn:aws:iam::${A}:policy/agent-boundary`,
      "arn:aws:iam::aws:policy/PowerUserAccess",
      `arn:aws:iam::${A}:policy/teams/platform/Boundary+v2=@.,_-`,
    ],
    [`arn:aws:iam::${A}:role/agent`, "agent-boundary", `arn:aws:iam:eu-west-1:${A}:policy/x`],
  ],
  [
    "alarm action",
    alarmAction,
    [
      `arn:aws:sns:eu-west-1:${A}:pager`,
      `arn:aws:sns:eu-west-1:${A}:alerts.fifo`,
      `arn:aws:lambda:eu-west-1:${A}:function:notify`,
      `arn:aws:lambda:eu-west-1:${A}:function:notify:live`,
      `arn:aws:ssm:eu-west-1:${A}:opsitem:2#CATEGORY=Availability`,
      `arn:aws:ssm-incidents::${A}:response-plan/agents-down`,
      `arn:aws:autoscaling:eu-west-1:${A}:scalingPolicy:12345678-1234-1234-1234-123456789012:autoScalingGroupName/other:policyName/up`,
    ],
    ["arn:aws:automate:eu-west-1:ec2:stop", `arn:aws:sqs:eu-west-1:${A}:alerts`, `arn:aws:sns:eu-west-1:${A}`, "pager"],
  ],
  [
    "CIDR block",
    cidrBlock("10.0.0.0/16"),
    ["10.0.0.0/16", "0.0.0.0/0", "192.168.100.0/22", "10.1.2.3/32", "172.16.0.0/12"],
    ["10.0.0.1/16", "10.0.0.0", "10.0.0.0/33", "300.0.0.0/8"],
  ],
  [
    "zone name",
    availabilityZone,
    ["eu-west-1a", "us-west-2-lax-1a", "us-east-1-wl1-bos-wlz-1", "ap-southeast-4c", "us-gov-west-1b"],
    ["euw1-az1", "eu-west-1", "EU-WEST-1A", "eu-west-1ab"],
  ],
  [
    "user tags",
    tagsSchema(["agentpools:pool", "agentpools:component", "Name"]),
    [
      {},
      {
        "Cost Center": "42",
        "team.platform/owner": "alice@example.com",
        "aws-team": "x",
        équipe: "données",
        empty: "",
      },
      Object.fromEntries(Array.from({ length: 47 }, (_, i) => [`t${i}`, "v"])),
    ],
    [
      { "aws:owner": "x" },
      { "AWS:Owner": "x" },
      { a: "b", A: "c" },
      { name: "x" },
      { t: "a#b" },
      { "": "x" },
      { ["k".repeat(129)]: "x" },
      { t: "v".repeat(257) },
      Object.fromEntries(Array.from({ length: 48 }, (_, i) => [`t${i}`, "v"])),
    ],
  ],
  [
    "IAM statement",
    policyStatement,
    [
      { Effect: "Allow", Action: "s3:Get*", Resource: "arn:aws:s3:::bucket/*" },
      {
        Sid: "1",
        Effect: "Allow",
        Action: ["ssm:GetParameter", "ssm:GetParameters"],
        Resource: ["arn:aws:ssm:*:*:parameter/app/*"],
      },
      {
        Effect: "Deny",
        Action: "*",
        Resource: "*",
        Condition: { StringNotEquals: { "aws:SourceVpc": "vpc-0123456789abcdef0" } },
      },
      { Effect: "Deny", NotAction: ["logs:*", "secretsmanager:GetSecretValue"], Resource: "*" },
      { Effect: "Deny", Action: "s3:*", NotResource: "arn:aws:s3:::allowed/*" },
      {
        Effect: "Allow",
        Action: "ec2:DescribeInstances",
        Resource: "*",
        Condition: {
          Bool: { "aws:SecureTransport": true },
          NumericLessThan: { "s3:max-keys": 10 },
          "ForAnyValue:StringLike": { "aws:TagKeys": ["team*"] },
        },
      },
      { Effect: "Allow", Action: "iam:GetRole", Resource: `arn:aws:iam::${A}:role/agents-*` },
      { Effect: "Allow", Action: ["S3:GetObject", "SSM:GetParameter"], Resource: "arn:aws:s3:::bucket/*" },
      {
        Effect: "Allow",
        Action: "ssm:GetParameter",
        Resource: "arn:aws:ssm:${aws:RequestedRegion}:${aws:PrincipalAccount}:parameter/app/*",
      },
    ],
    [
      { Effect: "Allow", Action: "*", Resource: "*" },
      { Effect: "Allow", Action: "*:*", Resource: "*" },
      { Effect: "Allow", NotAction: "iam:*", Resource: "*" },
      { Effect: "Allow", Action: "GetObject", Resource: "*" },
      { Effect: "Allow", Action: "s3:GetObject", Resource: [] },
      { Effect: "Allow", Action: "s3:GetObject", Resource: "bucket" },
      { Effect: "Allow", Action: "s3:GetObject" },
      { Effect: "Allow", Action: "s3:GetObject", NotAction: "s3:PutObject", Resource: "*" },
      { Effect: "Allow", Action: "s3:GetObject", Resource: "*", Principal: "*" },
      { Sid: "has space", Effect: "Allow", Action: "s3:GetObject", Resource: "*" },
      { Effect: "Permit", Action: "s3:GetObject", Resource: "*" },
      { Effect: "Allow", Action: "s3:GetObject", Resource: "*", Condition: { "String Equals": { "aws:x": "y" } } },
    ],
  ],
];

describe("AWS's rules (aws-rules.ts)", () => {
  for (const [what, schema, good, bad] of corpus) {
    it(`${what}: takes ${good.length} valid values, unusual ones among them`, () => {
      for (const value of good) {
        const result = schema.safeParse(value);
        assert.ok(
          result.success,
          `${JSON.stringify(value).slice(0, 120)} refused: ${result.error?.issues.map((i) => i.message).join("; ")}`,
        );
      }
    });
    it(`${what}: refuses ${bad.length} values AWS would`, () => {
      for (const value of bad)
        assert.ok(!schema.safeParse(value).success, `${JSON.stringify(value).slice(0, 120)} accepted`);
    });
  }

  it("host bits: only the network address is a CIDR block", () => {
    assert.deepEqual(
      ["10.0.0.0/16", "10.0.1.0/24", "10.0.0.1/32", "0.0.0.0/0", "10.0.0.1/16", "10.0.0.128/24"].map(hasHostBits),
      [false, false, false, false, true, true],
    );
  });

  it("names: letters, digits, . _ - and the IAM role's length for a pool; longer for a Network", () => {
    for (const name of ["a", "git", "team_a.workers-1", "x".repeat(48), "0"])
      assert.equal(nameProblem(name, POOL_NAME), undefined, name);
    for (const name of ["", "my pool", "a/b", "x".repeat(49), "pool:1", "é"])
      assert.match(nameProblem(name, POOL_NAME) as string, /^name: /, name);
    assert.equal(nameProblem("x".repeat(200), NETWORK_NAME), undefined);
    assert.ok(nameProblem("x".repeat(201), NETWORK_NAME));
  });

  it("zones' regions, and ARNs' partition and region", () => {
    assert.deepEqual(["eu-west-1a", "us-west-2-lax-1a", "us-gov-east-1c"].map(regionOfZone), [
      "eu-west-1",
      "us-west-2",
      "us-gov-east-1",
    ]);
    assert.deepEqual(arnPlace(`arn:aws-cn:sns:cn-north-1:${A}:x`), { partition: "aws-cn", region: "cn-north-1" });
    assert.deepEqual(arnPlace(`arn:aws:iam::${A}:policy/x`), { partition: "aws", region: "" });
    const given = [
      { field: "secretKmsKeyArn", arn: `arn:aws:kms:eu-west-1:${A}:key/1234abcd-12ab-34cd-56ef-1234567890ab` },
      { field: "permissionsBoundaryArn", arn: `arn:aws:iam::${A}:policy/b` },
      { field: "alarmActions[0]", arn: `arn:aws:sns:eu-west-1:${A}:pager` },
    ];
    assert.deepEqual(arnPlaceProblems(given), []);
    assert.deepEqual(arnPlaceProblems(given, { partition: "aws", region: "eu-west-1" }), []);
    assert.deepEqual(arnPlaceProblems(given, { partition: "aws", region: "eu-central-1" }), [
      "secretKmsKeyArn: is in region eu-west-1, the pool in eu-central-1: alarms, keys and secrets are used from the pool's region",
      "alarmActions[0]: is in region eu-west-1, the pool in eu-central-1: alarms, keys and secrets are used from the pool's region",
    ]);
    assert.match(
      arnPlaceProblems(given, { partition: "aws-cn", region: "cn-north-1" })[1],
      /^permissionsBoundaryArn: is in partition "aws", the pool in "aws-cn"$/,
    );
  });
});
