import http from "node:http";
import type { AddressInfo } from "node:net";
import { signV4 } from "../agent/runtime/sigv4";

/**
 * A stand-in for what the runtime reaches on an instance: IMDSv2 (token required) and the
 * Secrets Manager, Auto Scaling and CloudWatch Logs APIs. Every API call's Signature
 * Version 4 is checked against the credentials IMDS handed out. Loopback only.
 */
export class FakeAws {
  readonly credentials = { accessKeyId: "ASIAFAKE", secretAccessKey: "fake-secret-key/abc", sessionToken: "fake-session" };
  readonly identity = { region: "eu-west-1", instanceId: "i-0123456789abcdef0", availabilityZone: "eu-west-1b", instanceType: "c7i.large" };
  secrets = new Map<string, string>();
  lifecycleState = "InService";
  /** Make CompleteLifecycleAction answer as AWS does when no action is pending. */
  noPendingAction = false;
  readonly calls: { action: string; body: Record<string, unknown> }[] = [];
  readonly logEvents: string[] = [];
  readonly rejected: string[] = [];
  private server = http.createServer((req, res) => void this.handle(req, res));
  private imdsToken = "imds-token-" + Math.random().toString(36).slice(2);

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** The environment a runtime needs to find this fake instead of AWS. */
  env(base: string): Record<string, string> {
    return { AWS_EC2_METADATA_SERVICE_ENDPOINT: base, AWS_ENDPOINT_URL: `${base}/api/` };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://fake");
    const send = (status: number, text: string, type = "application/json") => {
      res.writeHead(status, { "content-type": type });
      res.end(text);
    };

    if (url.pathname === "/latest/api/token") {
      if (req.method !== "PUT" || !req.headers["x-aws-ec2-metadata-token-ttl-seconds"]) return send(400, "bad token request");
      return send(200, this.imdsToken, "text/plain");
    }
    if (url.pathname.startsWith("/latest/")) {
      if (req.headers["x-aws-ec2-metadata-token"] !== this.imdsToken) return send(401, "IMDSv2 token required", "text/plain");
      const metadata: Record<string, string> = {
        "/latest/dynamic/instance-identity/document": JSON.stringify({ ...this.identity, accountId: "123456789012" }),
        "/latest/meta-data/iam/security-credentials/": "agentpools-role",
        "/latest/meta-data/iam/security-credentials/agentpools-role": JSON.stringify({
          AccessKeyId: this.credentials.accessKeyId,
          SecretAccessKey: this.credentials.secretAccessKey,
          Token: this.credentials.sessionToken,
          Expiration: new Date(Date.now() + 3_600_000).toISOString(),
        }),
        "/latest/meta-data/autoscaling/target-lifecycle-state": this.lifecycleState,
      };
      const value = metadata[url.pathname];
      return value === undefined ? send(404, "not found", "text/plain") : send(200, value, "text/plain");
    }

    const target = req.headers["x-amz-target"] as string | undefined;
    const form = target ? undefined : Object.fromEntries(new URLSearchParams(body));
    const action = target ?? form?.Action ?? "unknown";
    const service = target?.startsWith("secretsmanager.") ? "secretsmanager" : target?.startsWith("Logs_") ? "logs" : "autoscaling";
    const problem = this.checkSignature(req, url, body, service);
    if (problem) {
      this.rejected.push(`${action}: ${problem}`);
      return send(403, JSON.stringify({ __type: "InvalidSignatureException", message: problem }));
    }
    const payload = target ? JSON.parse(body || "{}") : (form as Record<string, unknown>);
    this.calls.push({ action, body: payload });

    switch (action) {
      case "secretsmanager.GetSecretValue": {
        const secret = this.secrets.get(payload.SecretId);
        if (secret === undefined) return send(400, JSON.stringify({ __type: "ResourceNotFoundException", message: "Secrets Manager can't find the specified secret." }));
        return send(200, JSON.stringify({ ARN: payload.SecretId, SecretString: secret }));
      }
      case "Logs_20140328.CreateLogStream":
        return send(200, "{}");
      case "Logs_20140328.PutLogEvents":
        for (const event of payload.logEvents as { message: string }[]) this.logEvents.push(event.message);
        return send(200, "{}");
      case "CompleteLifecycleAction":
        if (this.noPendingAction) {
          return send(400, "<ErrorResponse><Error><Code>ValidationError</Code><Message>No active Lifecycle Action found with instance ID i-0123456789abcdef0</Message></Error></ErrorResponse>", "text/xml");
        }
        return send(200, "<CompleteLifecycleActionResponse/>", "text/xml");
      default:
        return send(400, JSON.stringify({ __type: "UnknownOperationException", message: action }));
    }
  }

  private checkSignature(req: http.IncomingMessage, url: URL, body: string, service: string): string | undefined {
    const auth = req.headers.authorization ?? "";
    const match = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/[0-9]{8}\/([^/]+)\/([^/]+)\/aws4_request, SignedHeaders=([^,]+), Signature=[0-9a-f]{64}$/.exec(auth);
    if (!match) return "missing or malformed authorization";
    const [, keyId, region, signedService, signedHeaders] = match;
    if (keyId !== this.credentials.accessKeyId) return "unknown access key";
    if (region !== this.identity.region) return `signed for region ${region}`;
    if (signedService !== service) return `signed for service ${signedService}, not ${service}`;
    if (req.headers["x-amz-security-token"] !== this.credentials.sessionToken) return "session token missing";
    const amzDate = req.headers["x-amz-date"] as string;
    const now = new Date(`${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`);
    const added = new Set(["host", "x-amz-date", "x-amz-security-token"]);
    const headers = Object.fromEntries(signedHeaders.split(";").filter((h) => !added.has(h)).map((h) => [h, String(req.headers[h])]));
    const expected = signV4({ method: req.method ?? "POST", url: new URL(url.pathname + url.search, `http://${req.headers.host}`), headers, body, service, region, credentials: this.credentials, now });
    return expected.authorization === auth ? undefined : "signature does not match";
  }
}
