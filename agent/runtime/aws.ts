import { request, sleep } from "./http";
import { signV4, type Credentials } from "./sigv4";

type Env = Record<string, string | undefined>;

/** What AWS answered instead of success: its error code (ThrottlingException, ...) and HTTP status. */
export interface AwsError extends Error {
  code: string;
  status: number;
}

/**
 * IMDSv2 (token required): the instance's identity, role credentials and Auto Scaling
 * lifecycle state. AWS_EC2_METADATA_SERVICE_ENDPOINT overrides the address, as in the SDKs.
 */
export class InstanceMetadata {
  #base: URL;
  #token?: { value: string; expiresAt: number };

  constructor(env: Env = process.env) {
    this.#base = new URL(env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? "http://169.254.169.254");
  }

  async #sessionToken(): Promise<string> {
    if (this.#token && this.#token.expiresAt > Date.now()) return this.#token.value;
    const res = await request(new URL("/latest/api/token", this.#base), {
      method: "PUT",
      headers: { "x-aws-ec2-metadata-token-ttl-seconds": "21600" },
      timeoutMs: 2000,
    });
    if (res.status !== 200) throw new Error(`IMDS token request failed with status ${res.status}`);
    this.#token = { value: res.body, expiresAt: Date.now() + 21_000_000 };
    return res.body;
  }

  async get(path: string): Promise<string> {
    const res = await request(new URL(path, this.#base), {
      headers: { "x-aws-ec2-metadata-token": await this.#sessionToken() },
      timeoutMs: 2000,
    });
    if (res.status !== 200) throw new Error(`IMDS ${path} answered ${res.status}`);
    return res.body;
  }

  async identity(): Promise<{ region: string; instanceId: string; availabilityZone: string; instanceType: string; pendingTime: string }> {
    return JSON.parse(await this.get("/latest/dynamic/instance-identity/document"));
  }

  async credentials(): Promise<Credentials> {
    const roleName = (await this.get("/latest/meta-data/iam/security-credentials/")).split("\n")[0].trim();
    const doc = JSON.parse(await this.get(`/latest/meta-data/iam/security-credentials/${roleName}`));
    return {
      accessKeyId: doc.AccessKeyId,
      secretAccessKey: doc.SecretAccessKey,
      sessionToken: doc.Token,
      expiresAt: Date.parse(doc.Expiration),
    };
  }

  /** "InService", "Terminated", ... or undefined outside an Auto Scaling group. */
  async targetLifecycleState(): Promise<string | undefined> {
    try {
      return (await this.get("/latest/meta-data/autoscaling/target-lifecycle-state")).trim();
    } catch {
      return undefined;
    }
  }
}

/** Signed calls to the three AWS APIs the runtime needs, with retries for throttling and 5xx. */
// (#private members: the bundler shortens their names, which counts against user-data.)
export class AwsClient {
  #cached?: Credentials;
  #region: string;
  #domain: string;
  #loadCredentials: () => Promise<Credentials>;
  #env: Env;
  #retryMs: number;

  /** `domain` is the partition's DNS suffix (amazonaws.com, amazonaws.com.cn, ...); retries pause about `retryMs` × 2, 4, 8. */
  constructor(region: string, domain: string, loadCredentials: () => Promise<Credentials>, env: Env = process.env, retryMs = 200) {
    this.#region = region;
    this.#domain = domain;
    this.#loadCredentials = loadCredentials;
    this.#env = env;
    this.#retryMs = retryMs;
  }

  async #credentials(): Promise<Credentials> {
    if (!this.#cached || (this.#cached.expiresAt !== undefined && this.#cached.expiresAt - Date.now() < 300_000)) {
      this.#cached = await this.#loadCredentials();
    }
    return this.#cached;
  }

  async #send(service: string, headers: Record<string, string>, body: string): Promise<string> {
    // AWS_ENDPOINT_URL overrides every service's address, as in the SDKs (tests point it at a stand-in).
    const url = new URL(this.#env.AWS_ENDPOINT_URL ?? `https://${service}.${this.#region}.${this.#domain}/`);
    for (let attempt = 1; ; attempt++) {
      try {
        const signed = signV4({ method: "POST", url, headers, body, service, region: this.#region, credentials: await this.#credentials(), now: new Date() });
        const res = await request(url, { method: "POST", headers: signed, body });
        if (res.status < 300) return res.body;
        // JSON APIs answer {"__type": "...#Code", "message": ...}, the Query API <Code> and <Message>.
        const code = /(?:"__type"\s*:\s*"(?:[^"#]*#)?|<Code>)([^"<]+)/.exec(res.body)?.[1] ?? `HTTP${res.status}`;
        const message = /(?:"message"\s*:\s*"|<Message>)([^"<]*)/i.exec(res.body)?.[1] ?? "";
        throw Object.assign(new Error(`${code}: ${message}`), { code, status: res.status });
      } catch (error) {
        // Permissions are retried by the callers that can wait (logs), not here: start-up fails fast.
        const { code = "", status = 500 } = error as Partial<AwsError>;
        if (attempt >= 4 || (status < 500 && !/Throttl|TooMany/.test(code))) throw error;
      }
      await sleep(this.#retryMs * 2 ** attempt * (0.5 + Math.random()));
    }
  }

  /** An AWS JSON 1.1 call (Secrets Manager, CloudWatch Logs). */
  async json(service: "secretsmanager" | "logs", target: string, payload: unknown): Promise<Record<string, unknown>> {
    const body = await this.#send(service, { "content-type": "application/x-amz-json-1.1", "x-amz-target": target }, JSON.stringify(payload));
    return body ? JSON.parse(body) : {};
  }

  /** An AWS Query call (Auto Scaling). */
  async query(action: string, params: Record<string, string>): Promise<string> {
    const body = new URLSearchParams({ Action: action, Version: "2011-01-01", ...params }).toString();
    return this.#send("autoscaling", { "content-type": "application/x-www-form-urlencoded; charset=utf-8" }, body);
  }

  async getSecretString(secretId: string): Promise<string> {
    const result = await this.json("secretsmanager", "secretsmanager.GetSecretValue", { SecretId: secretId });
    if (typeof result.SecretString !== "string") throw new Error(`secret ${secretId} has no string value`);
    return result.SecretString;
  }

  /** Complete this instance's lifecycle action on a hook (CONTINUE), or record a heartbeat on it. */
  async lifecycleAction(group: string, hook: string, instanceId: string, complete: boolean): Promise<void> {
    const params = { AutoScalingGroupName: group, LifecycleHookName: hook, InstanceId: instanceId };
    await this.query(complete ? "CompleteLifecycleAction" : "RecordLifecycleActionHeartbeat", complete ? { ...params, LifecycleActionResult: "CONTINUE" } : params);
  }

}
