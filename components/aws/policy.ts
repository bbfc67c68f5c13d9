import type { PolicyStatement } from "./aws-rules";

/** The Sids of the kit's own statements: a user's statements may not reuse them. */
export const KIT_SIDS = [
  "ReadPoolSecret",
  "WritePoolLogs",
  "CompletePoolLifecycleActions",
  "ReplaceUnhealthyPoolInstance",
  "ProtectBusyPoolInstance",
  "ReadPoolParameters",
  "DecryptPoolSecret",
  "SessionManagerChannels",
] as const;

/** The ARN pattern of an Auto Scaling group by name (its ARN also carries a generated ID). */
export const autoScalingGroupArn = (partition: string, region: string, account: string, group: string) =>
  `arn:${partition}:autoscaling:${region}:${account}:autoScalingGroup:*:autoScalingGroupName/${group}`;

export interface PoolPolicyInput {
  secretArn: string;
  /** The pool's own SSM parameters (CA certificates, configuration), if it has any. */
  parameterArns?: string[];
  secretKmsKeyArn?: string;
  region: string;
  /** The partition's DNS suffix (amazonaws.com, amazonaws.com.cn, ...), for kms:ViaService. */
  dnsSuffix: string;
  logGroupArn: string;
  autoScalingGroupArn: string;
  /** SSM Session Manager: the agent's registration and its session channels, nothing of SSM's other parts. */
  sessionManager?: boolean;
  extraStatements?: PolicyStatement[];
}

/**
 * The instance role's policy: read this pool's secret (and its parameters, if it has any),
 * write this pool's logs, complete lifecycle actions of this pool's group, report its own
 * instance unhealthy and protect it from scale-in while busy; with Session Manager, open its
 * channels. Nothing else, unless the user adds statements. (Auto Scaling has no condition key
 * for the instance: the group is the scope.)
 */
export function poolPolicyDocument(input: PoolPolicyInput): { Version: string; Statement: PolicyStatement[] } {
  const group = input.autoScalingGroupArn;
  const statements: PolicyStatement[] = [
    { Sid: "ReadPoolSecret", Effect: "Allow", Action: "secretsmanager:GetSecretValue", Resource: input.secretArn },
    {
      Sid: "WritePoolLogs",
      Effect: "Allow",
      Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
      Resource: `${input.logGroupArn}:log-stream:*`,
    },
    {
      Sid: "CompletePoolLifecycleActions",
      Effect: "Allow",
      Action: ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
      Resource: group,
    },
    { Sid: "ReplaceUnhealthyPoolInstance", Effect: "Allow", Action: "autoscaling:SetInstanceHealth", Resource: group },
    { Sid: "ProtectBusyPoolInstance", Effect: "Allow", Action: "autoscaling:SetInstanceProtection", Resource: group },
  ];
  // Named one by one: a read by version (name:version) is authorized against the parameter's own ARN.
  if (input.parameterArns?.length)
    statements.push({
      Sid: "ReadPoolParameters",
      Effect: "Allow",
      Action: "ssm:GetParameter",
      Resource: input.parameterArns,
    });
  if (input.secretKmsKeyArn) {
    statements.push({
      Sid: "DecryptPoolSecret",
      Effect: "Allow",
      Action: "kms:Decrypt",
      Resource: input.secretKmsKeyArn,
      Condition: { StringEquals: { "kms:ViaService": `secretsmanager.${input.region}.${input.dnsSuffix}` } },
    });
  }
  // The actions of AWS's own Session Manager instance profile (AWSCloud9SSMInstanceProfile). Not the managed
  // AmazonSSMManagedInstanceCore: it reads every parameter of the account (ssm:GetParameter on "*"), another
  // pool's among them. None of these actions is scoped by a resource an instance can name before it registers.
  if (input.sessionManager)
    statements.push({
      Sid: "SessionManagerChannels",
      Effect: "Allow",
      Action: [
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
      ],
      Resource: "*",
    });
  return { Version: "2012-10-17", Statement: [...statements, ...(input.extraStatements ?? [])] };
}

/** A policy's size as IAM counts it against its quota: without whitespace outside strings. */
export const policySize = (document: unknown) => JSON.stringify(document).length;
