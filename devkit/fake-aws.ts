import http from "node:http";
import type { AddressInfo } from "node:net";
import { signV4 } from "../agent/runtime/sigv4";

/** An answer AWS gives instead of success, queued for the next calls of one action. */
export interface InjectedFailure {
  status: number;
  code: string;
  message?: string;
}

/** A data point read back out of an embedded-metric-format log line. */
export interface MetricPoint {
  namespace: string;
  name: string;
  value: number;
  dimensions: Record<string, string>;
  timestamp: number;
}

/**
 * The Auto Scaling group's view of its instances, shared by the fake instances of one group:
 * scale-in protection as SetInstanceProtection sets it, and which instances a scale-in may
 * take (AWS never takes a protected one; among the others, the oldest first, as the pools'
 * termination policies say).
 */
export class FakeGroup {
  readonly instances = new Map<
    string,
    { launchedAt: number; protected: boolean; state: "InService" | "Terminating" }
  >();
  constructor(readonly name: string) {}

  /** The instances a scale-in by `count` terminates: unprotected ones in service, the oldest first. */
  chooseForScaleIn(count: number): string[] {
    const candidates = [...this.instances]
      .filter(([, i]) => i.state === "InService" && !i.protected)
      .sort(([, a], [, b]) => a.launchedAt - b.launchedAt);
    return candidates.slice(0, count).map(([id]) => id);
  }
}

/**
 * A stand-in for what the runtime reaches on an instance: IMDSv2 (token required) and the
 * Secrets Manager and Auto Scaling APIs, every call's Signature Version 4 checked against the
 * credentials IMDS handed out; and the log group, as the CloudWatch agent fills it from the
 * runtime's output (tail). Tests queue error answers per action. Loopback only.
 */
export class FakeAws {
  readonly credentials = {
    AccessKeyId: "ASIAFAKE",
    SecretAccessKey: "fake-secret-key/abc",
    Token: "fake-session",
  };
  readonly identity = {
    region: "eu-west-1",
    instanceId: "i-0123456789abcdef0",
    availabilityZone: "eu-west-1b",
    instanceType: "c7i.large",
    pendingTime: new Date(Date.now() - 90_000).toISOString().replace(/\.\d+Z$/, "Z"),
  };
  /** The group this instance is in (its name is checked on each Auto Scaling call that names one). */
  group = new FakeGroup("agentpools-git-1a2b");
  /** IMDS spot/instance-action (a spot interruption notice), absent (404) unless set. */
  spotAction?: { action: "terminate" | "stop" | "hibernate"; time: string };
  /** IMDS events/recommendations/rebalance, absent (404) unless set. */
  rebalance?: { noticeTime: string };
  /** IMDS services/domain: the partition's DNS suffix. */
  domain = "amazonaws.com";
  secrets = new Map<string, string>();
  lifecycleState = "InService";
  /** Make CompleteLifecycleAction and RecordLifecycleActionHeartbeat answer as AWS does when no action is pending. */
  noPendingAction = false;
  /** The health SetInstanceHealth last set (Auto Scaling replaces an Unhealthy instance). */
  instanceHealth = "Healthy";
  /** Every API call that passed the signature check, with when it arrived. */
  readonly calls: { action: string; body: Record<string, unknown>; at: number }[] = [];
  /** The instance's log events, in order (see tail). */
  readonly logEvents: string[] = [];
  readonly metrics: MetricPoint[] = [];
  readonly rejected: string[] = [];
  private readonly failures = new Map<string, InjectedFailure[]>();
  private server = http.createServer((req, res) => void this.handle(req, res));
  private imdsToken = "imds-token-" + Math.random().toString(36).slice(2);

  constructor() {
    this.inGroup();
  }

  /** This instance in its group, in service (as once its launch hook completed). */
  inGroup(group: FakeGroup = this.group): this {
    this.group = group;
    group.instances.set(this.identity.instanceId, { launchedAt: Date.now(), protected: false, state: "InService" });
    return this;
  }

  /** Auto Scaling terminates this instance: its target lifecycle state says so, and it is no longer in service. */
  terminate(): void {
    this.lifecycleState = "Terminated";
    const instance = this.group.instances.get(this.identity.instanceId);
    if (instance) instance.state = "Terminating";
  }

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /**
   * Ends this instance as Auto Scaling would: terminated. A runtime run in the test's own process polls its lifecycle
   * state until told Terminated (on EC2 its process exits first): the fake keeps answering that one question, and no
   * other, until this process ends, so that no poll outlives its test (they went on for the rest of a mocha worker,
   * hundreds of requests a second, through a later test's proxy).
   */
  stop(): Promise<void> {
    this.terminate();
    this.stopped = true;
    this.server.closeAllConnections();
    this.server.unref();
    return Promise.resolve();
  }
  private stopped = false;

  /** The environment a runtime needs to find this fake instead of AWS. */
  env(base: string): Record<string, string> {
    return { AWS_EC2_METADATA_SERVICE_ENDPOINT: base, AWS_ENDPOINT_URL: `${base}/api/` };
  }

  /** Answer the next `times` calls of `action` (e.g. "secretsmanager.GetSecretValue", "SetInstanceHealth") with an error. */
  fail(action: string, times: number, failure: InjectedFailure): void {
    this.failures.set(action, [...(this.failures.get(action) ?? []), ...Array.from({ length: times }, () => failure)]);
  }

  /** The calls of one action so far. */
  callsOf(action: string): Record<string, unknown>[] {
    return this.calls.filter((c) => c.action === action).map((c) => c.body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (
      this.stopped &&
      new URL(req.url ?? "/", "http://x").pathname !== "/latest/meta-data/autoscaling/target-lifecycle-state"
    )
      return void req.socket.destroy();
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://fake");
    const send = (status: number, text: string, type = "application/json") => {
      res.writeHead(status, { "content-type": type });
      res.end(text);
    };

    if (url.pathname === "/latest/api/token") {
      if (req.method !== "PUT" || !req.headers["x-aws-ec2-metadata-token-ttl-seconds"])
        return send(400, "bad token request");
      return send(200, this.imdsToken, "text/plain");
    }
    if (url.pathname.startsWith("/latest/")) {
      if (req.headers["x-aws-ec2-metadata-token"] !== this.imdsToken)
        return send(401, "IMDSv2 token required", "text/plain");
      const metadata: Record<string, string> = {
        "/latest/dynamic/instance-identity/document": JSON.stringify({ ...this.identity, accountId: "123456789012" }),
        "/latest/meta-data/iam/security-credentials/": "agentpools-role",
        "/latest/meta-data/iam/security-credentials/agentpools-role": JSON.stringify({
          ...this.credentials,
          Expiration: new Date(Date.now() + 3_600_000).toISOString(),
        }),
        "/latest/meta-data/autoscaling/target-lifecycle-state": this.lifecycleState,
        "/latest/meta-data/services/domain": this.domain,
        ...(this.spotAction ? { "/latest/meta-data/spot/instance-action": JSON.stringify(this.spotAction) } : {}),
        ...(this.rebalance
          ? { "/latest/meta-data/events/recommendations/rebalance": JSON.stringify(this.rebalance) }
          : {}),
      };
      const value = metadata[url.pathname];
      return value === undefined ? send(404, "not found", "text/plain") : send(200, value, "text/plain");
    }

    const target = req.headers["x-amz-target"] as string | undefined;
    const form = target ? undefined : Object.fromEntries(new URLSearchParams(body));
    const action = target ?? form?.Action ?? "unknown";
    const service = target?.startsWith("secretsmanager.") ? "secretsmanager" : "autoscaling";
    const problem = this.checkSignature(req, url, body, service);
    if (problem) {
      this.rejected.push(`${action}: ${problem}`);
      return send(403, JSON.stringify({ __type: "InvalidSignatureException", message: problem }));
    }
    const payload = target ? JSON.parse(body || "{}") : (form as Record<string, unknown>);
    this.calls.push({ action, body: payload, at: Date.now() });
    const jsonError = (status: number, code: string, message: string) =>
      send(status, JSON.stringify({ __type: code, message }));
    const queryError = (status: number, code: string, message: string) =>
      send(
        status,
        `<ErrorResponse><Error><Code>${code}</Code><Message>${message}</Message></Error></ErrorResponse>`,
        "text/xml",
      );

    const injected = this.failures.get(action)?.shift();
    if (injected) {
      const answer = target ? jsonError : queryError;
      return answer(injected.status, injected.code, injected.message ?? "injected by the test");
    }

    switch (action) {
      case "secretsmanager.GetSecretValue": {
        const secret = this.secrets.get(payload.SecretId);
        if (secret === undefined)
          return jsonError(400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.");
        return send(200, JSON.stringify({ ARN: payload.SecretId, SecretString: secret }));
      }
      case "CompleteLifecycleAction":
      case "RecordLifecycleActionHeartbeat":
        if (this.noPendingAction)
          return queryError(
            400,
            "ValidationError",
            `No active Lifecycle Action found with instance ID ${this.identity.instanceId}`,
          );
        return send(200, `<${action}Response/>`, "text/xml");
      case "SetInstanceProtection": {
        // AWS's rules: the group by name, 1-50 instances of it (InstanceIds.member.N), ProtectedFromScaleIn true or false.
        const ids = Object.keys(payload)
          .filter((k) => /^InstanceIds\.member\.\d+$/.test(k))
          .map((k) => payload[k]);
        if (payload.AutoScalingGroupName !== this.group.name)
          return queryError(
            400,
            "ValidationError",
            `AutoScalingGroup name not found - ${payload.AutoScalingGroupName}`,
          );
        if (!["true", "false"].includes(payload.ProtectedFromScaleIn))
          return queryError(400, "ValidationError", "ProtectedFromScaleIn must be true or false");
        if (ids.length < 1 || ids.length > 50) return queryError(400, "ValidationError", "1 to 50 instance IDs");
        for (const id of ids) {
          const instance = this.group.instances.get(id);
          if (!instance)
            return queryError(
              400,
              "ValidationError",
              `The instance ${id} is not part of Auto Scaling group ${this.group.name}.`,
            );
          if (instance.state !== "InService")
            return queryError(400, "ValidationError", `The instance ${id} is not in InService or Standby.`);
        }
        for (const id of ids)
          (this.group.instances.get(id) as { protected: boolean }).protected = payload.ProtectedFromScaleIn === "true";
        return send(200, "<SetInstanceProtectionResponse/>", "text/xml");
      }
      case "SetInstanceHealth":
        if (!["Healthy", "Unhealthy"].includes(payload.HealthStatus))
          return queryError(400, "ValidationError", "HealthStatus must be Healthy or Unhealthy");
        this.instanceHealth = payload.HealthStatus;
        return send(200, "<SetInstanceHealthResponse/>", "text/xml");
      default:
        return jsonError(400, "UnknownOperationException", action);
    }
  }

  /**
   * The CloudWatch agent's part on an instance: what the runtime writes (its unit's output, the file the agent tails)
   * reaches the instance's stream a line an event, and CloudWatch Logs extracts each embedded-metric-format line.
   */
  readonly tail = (text: string | Buffer): void => {
    const lines = (this.partial + text).split("\n");
    this.partial = lines.pop() as string;
    for (const line of lines) {
      this.logEvents.push(line);
      this.readMetrics(line);
    }
  };
  private partial = "";

  /** CloudWatch's extraction of embedded-metric-format lines: each metric's value with its dimensions. */
  private readMetrics(message: string): void {
    let line: Record<string, any>;
    try {
      line = JSON.parse(message);
    } catch {
      return;
    }
    const meta = line?._aws;
    if (!meta || typeof meta.Timestamp !== "number") return;
    for (const directive of meta.CloudWatchMetrics ?? []) {
      for (const dimensionSet of directive.Dimensions as string[][]) {
        const dimensions = Object.fromEntries(dimensionSet.map((d) => [d, String(line[d])]));
        for (const { Name } of directive.Metrics as { Name: string }[]) {
          if (typeof line[Name] === "number")
            this.metrics.push({
              namespace: directive.Namespace,
              name: Name,
              value: line[Name],
              dimensions,
              timestamp: meta.Timestamp,
            });
        }
      }
    }
  }

  private checkSignature(req: http.IncomingMessage, url: URL, body: string, service: string): string | undefined {
    const auth = req.headers.authorization ?? "";
    const match =
      /^AWS4-HMAC-SHA256 Credential=([^/]+)\/[0-9]{8}\/([^/]+)\/([^/]+)\/aws4_request, SignedHeaders=([^,]+), Signature=[0-9a-f]{64}$/.exec(
        auth,
      );
    if (!match) return "missing or malformed authorization";
    const [, keyId, region, signedService, signedHeaders] = match;
    if (keyId !== this.credentials.AccessKeyId) return "unknown access key";
    if (region !== this.identity.region) return `signed for region ${region}`;
    if (signedService !== service) return `signed for service ${signedService}, not ${service}`;
    if (req.headers["x-amz-security-token"] !== this.credentials.Token) return "session token missing";
    const amzDate = req.headers["x-amz-date"] as string;
    const now = new Date(
      `${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`,
    );
    const added = new Set(["host", "x-amz-date", "x-amz-security-token"]);
    const headers = Object.fromEntries(
      signedHeaders
        .split(";")
        .filter((h) => !added.has(h))
        .map((h) => [h, String(req.headers[h])]),
    );
    const expected = signV4({
      method: req.method ?? "POST",
      url: new URL(url.pathname + url.search, `http://${req.headers.host}`),
      headers,
      body,
      service,
      region,
      credentials: this.credentials,
      now,
    });
    return expected.authorization === auth ? undefined : "signature does not match";
  }
}
