import { request, sleep } from "./http";
import { signV4, type Credentials } from "./sigv4";

type Env = Record<string, string | undefined>;

/** What AWS answered instead of success: its error code (ThrottlingException, ...) and HTTP status. */
export interface AwsError extends Error {
  code: string;
  status: number;
}

export interface InstanceIdentity {
  region: string;
  instanceId: string;
  availabilityZone: string;
  instanceType: string;
  /** When the instance was launched (ISO 8601): boot phases count from it. */
  pendingTime: string;
}

export interface InstanceMetadata {
  get(path: string): Promise<string>;
  identity(): Promise<InstanceIdentity>;
  credentials(): Promise<Credentials>;
  /** "InService", "Terminated", ... or undefined outside an Auto Scaling group. */
  targetLifecycleState(): Promise<string | undefined>;
}

/**
 * IMDSv2 (token required): the instance's identity, role credentials and Auto Scaling
 * lifecycle state. AWS_EC2_METADATA_SERVICE_ENDPOINT overrides the address, as in the SDKs.
 * (Closures rather than classes here: the bundle shortens their names, which counts against user-data.)
 */
export function instanceMetadata(env: Env = process.env): InstanceMetadata {
  const base = new URL(env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? "http://169.254.169.254");
  let token: Promise<string> | undefined;
  let expiresAt = 0;
  const call = async (path: string, headers: Record<string, string>, method?: string) => {
    const res = await request(new URL(path, base), { method, headers, timeoutMs: 2000 });
    if (res.status !== 200) throw new Error(`IMDS ${path} answered ${res.status}`);
    return res.body;
  };
  const get = async (path: string) => {
    if (Date.now() > expiresAt) {
      expiresAt = Date.now() + 21_000_000;
      token = call("/latest/api/token", { "x-aws-ec2-metadata-token-ttl-seconds": "21600" }, "PUT");
      token.catch(() => (expiresAt = 0));
    }
    return call(path, { "x-aws-ec2-metadata-token": await token! });
  };
  const json = async (path: string) => JSON.parse(await get(path));
  const roles = "/latest/meta-data/iam/security-credentials/";
  return {
    get,
    identity: () => json("/latest/dynamic/instance-identity/document"),
    credentials: async () => json(roles + (await get(roles)).split("\n")[0].trim()),
    targetLifecycleState: () =>
      get("/latest/meta-data/autoscaling/target-lifecycle-state").then(
        (state) => state.trim(),
        () => undefined,
      ),
  };
}

/** Signed calls to the three AWS APIs the runtime needs, with retries for throttling and 5xx. */
export interface AwsClient {
  /** An AWS JSON 1.1 call (Secrets Manager, CloudWatch Logs). */
  json(service: "secretsmanager" | "logs", target: string, payload: unknown): Promise<Record<string, unknown>>;
  /** An AWS Query call (Auto Scaling). */
  query(action: string, params: Record<string, string>): Promise<string>;
}

/** `domain` is the partition's DNS suffix (amazonaws.com, amazonaws.com.cn, ...); retries pause about `retryMs` × 2, 4, 8. */
export function awsClient(
  region: string,
  domain: string,
  loadCredentials: () => Promise<Credentials>,
  env: Env = process.env,
  retryMs = 200,
): AwsClient {
  let cached: Credentials | undefined;
  const send = async (service: string, headers: Record<string, string>, body: string): Promise<string> => {
    // AWS_ENDPOINT_URL overrides every service's address, as in the SDKs (tests point it at a stand-in).
    const url = new URL(env.AWS_ENDPOINT_URL ?? `https://${service}.${region}.${domain}/`);
    for (let attempt = 1; ; attempt++) {
      try {
        if (!cached || Date.parse(cached.Expiration!) - Date.now() < 300_000) cached = await loadCredentials();
        const res = await request(url, {
          method: "POST",
          headers: signV4({
            method: "POST",
            url,
            headers,
            body,
            service,
            region,
            credentials: cached,
            now: new Date(),
          }),
          body,
        });
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
      await sleep(retryMs * 2 ** attempt * (0.5 + Math.random()));
    }
  };
  const json: AwsClient["json"] = async (service, target, payload) => {
    const body = await send(
      service,
      { "content-type": "application/x-amz-json-1.1", "x-amz-target": target },
      JSON.stringify(payload),
    );
    return body ? JSON.parse(body) : {};
  };
  const query: AwsClient["query"] = (action, params) =>
    send(
      "autoscaling",
      { "content-type": "application/x-www-form-urlencoded; charset=utf-8" },
      new URLSearchParams({ Action: action, Version: "2011-01-01", ...params }) + "",
    );
  return { json, query };
}
