// The reference gateway's command line:
//   node build/gateway/main.js serve --config gateway.json
//   node build/gateway/main.js add-pool --config gateway.json --name NAME --kind vcs|flows
//   node build/gateway/main.js add-pool --config gateway.json --name NAME --kind worker --csr spacelift.csr
//   node build/gateway/main.js add-key --config gateway.json --name NAME [--pools a,b]
//   node build/gateway/main.js remove-key --config gateway.json --id ID
//   node build/gateway/main.js rotate-key --config gateway.json --id ID
//   node build/gateway/main.js hand-over-runs --config gateway.json --from ID|none --to ID
// add-pool stores only the SHA-256 of the new pool's secret and prints the token once. A
// worker pool's CSR is signed by the gateway's worker CA (kept in dataDir). add-key makes a
// service key (every service-side endpoint needs one), stores its SHA-256 and prints it once;
// rotate-key gives a key a new secret under the same id, so its worker runs stay its own.
// hand-over-runs gives one key's worker runs (or those stored before runs had owners) to another.
import { existsSync, readFileSync, renameSync, watch, writeFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { z } from "zod";
import { createServiceKey, KEY_ID } from "./auth";
import { Gateway, PUBLIC_TIMEOUTS } from "./gateway";
import { QUEUE_DEFAULTS } from "./vcs-hub";
import { EXCHANGE_DEFAULTS } from "./vcs-proxy";
import { createPool, MAX_AGENTS_PER_POOL, POOL_KINDS, POOL_NAME } from "./pools";
import { GATEWAY_URLS, gatewayUrlProblem, PING_INTERVAL_MS, PING_TIMEOUT_MS } from "../protocol/link";
import { FLOWS_ANSWER_BUDGET_BYTES, FLOWS_ANSWER_GRACE_MS } from "./flows-hub";
import { servingGateway, WORKER_DEFAULTS } from "./worker-hub";

const DAY_MS = 86_400_000;
const RETENTION = {
  runsPerKey: WORKER_DEFAULTS.retention.runsPerKey,
  maxAgeDays: WORKER_DEFAULTS.retention.maxAgeMs / DAY_MS,
};

export const gatewayConfig = z.strictObject({
  listen: z
    .strictObject({ host: z.string().default("127.0.0.1"), port: z.int().min(0).max(65535).default(8443) })
    .default({ host: "127.0.0.1", port: 8443 }),
  /** The address agents dial, written into each pool's token. */
  publicUrl: z.url({ protocol: /^https?$/ }).refine((url) => !gatewayUrlProblem(new URL(url)), {
    error: `must be ${GATEWAY_URLS}: agents send their pool's token there`,
  }),
  tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1) }).optional(),
  /** VCS pools: how long a request waits for a stream, how many may wait, one client's share of streams and queue. */
  queueTimeoutMs: z.int().min(0).max(600_000).default(QUEUE_DEFAULTS.queueTimeoutMs),
  maxQueued: z.int().min(0).max(100_000).default(QUEUE_DEFAULTS.maxQueued),
  clientShare: z.number().gt(0).max(1).default(QUEUE_DEFAULTS.clientShare),
  /** Flows runs: beyond a run's timeout, the wait for its answer; the most bytes of answers given and not yet taken. */
  flowsAnswerGraceMs: z.int().min(100).max(600_000).default(FLOWS_ANSWER_GRACE_MS),
  flowsAnswerBudgetBytes: z
    .int()
    .min(8 * 1024 * 1024)
    .default(FLOWS_ANSWER_BUDGET_BYTES),
  /** Agent connections one pool may hold at once (any kind): more are refused with 503. */
  maxAgentsPerPool: z.int().min(1).max(100_000).default(MAX_AGENTS_PER_POOL),
  /** The public side's deadlines: a request head, a whole request, an idle connection, a reader that stalls, a whole exchange. */
  headersTimeoutMs: z.int().min(100).max(600_000).default(PUBLIC_TIMEOUTS.headersTimeoutMs),
  requestTimeoutMs: z.int().min(100).max(3_600_000).default(PUBLIC_TIMEOUTS.requestTimeoutMs),
  idleTimeoutMs: z.int().min(100).max(3_600_000).default(PUBLIC_TIMEOUTS.idleTimeoutMs),
  stallTimeoutMs: z.int().min(100).max(3_600_000).default(EXCHANGE_DEFAULTS.stallTimeoutMs),
  exchangeTimeoutMs: z.int().min(100).max(86_400_000).default(EXCHANGE_DEFAULTS.exchangeTimeoutMs),
  /** The status page without a key for browsers on the gateway's own host. */
  statusOnLoopback: z.boolean().default(false),
  /** Worker runs, their logs and sealed state (gateway.db, state/), the worker pool CA: kept across restarts. */
  dataDir: z.string().min(1).optional(),
  /** A worker run's lease lasts this long unless its launcher renews it (every third of it). */
  leaseMs: z.int().min(1000).max(3_600_000).default(WORKER_DEFAULTS.leaseMs),
  /** Keepalive on every agent link: an agent that leaves a ping unanswered for pingTimeoutMs is dropped. */
  pingIntervalMs: z.int().min(1000).max(300_000).default(PING_INTERVAL_MS),
  pingTimeoutMs: z.int().min(1000).max(300_000).default(PING_TIMEOUT_MS),
  /** Finished worker runs kept (with logs and state): each key's newest runsPerKey in each pool, none older than maxAgeDays. */
  retention: z
    .strictObject({
      runsPerKey: z.int().min(1).default(RETENTION.runsPerKey),
      maxAgeDays: z.number().positive().default(RETENTION.maxAgeDays),
    })
    .default(RETENTION),
  pools: z
    .array(
      z.strictObject({
        name: z.string().regex(POOL_NAME),
        kind: z.enum(POOL_KINDS),
        secretSha256: z.string().regex(/^[0-9a-f]{64}$/),
        certificate: z.string().startsWith("-----BEGIN CERTIFICATE-----").optional(),
      }),
    )
    .default([]),
  /** Service keys: the SHA-256 of each secret, never the key. */
  keys: z
    .array(
      z.strictObject({
        id: z.string().regex(KEY_ID),
        name: z.string().min(1).max(64),
        secretSha256: z.string().regex(/^[0-9a-f]{64}$/),
        pools: z.array(z.string().regex(POOL_NAME)).optional(),
      }),
    )
    .default([]),
});
export type GatewayConfig = z.output<typeof gatewayConfig>;

function option(args: string[], name: string): string | undefined {
  const index = args.indexOf(`--${name}`);
  return index === -1 ? undefined : args[index + 1];
}

function loadConfig(file: string): GatewayConfig {
  const result = gatewayConfig.safeParse(JSON.parse(readFileSync(file, "utf8")));
  if (!result.success)
    throw new Error(`${file}: ${result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return result.data;
}

export async function main(args: string[]): Promise<void> {
  const [command] = args;
  const file = option(args, "config");
  if (!file || !["serve", "add-pool", "add-key", "remove-key", "rotate-key", "hand-over-runs"].includes(command)) {
    throw new Error(
      "usage: main.js serve --config FILE | add-pool --config FILE --name NAME --kind vcs|flows|worker [--csr FILE]" +
        " | add-key --config FILE --name NAME [--pools a,b] | remove-key --config FILE --id ID" +
        " | rotate-key --config FILE --id ID | hand-over-runs --config FILE --from ID|none --to ID",
    );
  }
  // Only what the file says, changed: defaults stay defaults.
  const save = (change: Partial<GatewayConfig>) => {
    const raw = existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : { publicUrl: option(args, "public-url") };
    // Written whole, then renamed over the file: a serving gateway never reads half of it.
    writeFileSync(`${file}.new`, JSON.stringify({ ...raw, ...change }, null, 2) + "\n", { mode: 0o600 });
    renameSync(`${file}.new`, file);
  };
  if (command === "add-key") {
    const config = loadConfig(file);
    const pools = option(args, "pools")?.split(",").filter(Boolean);
    const unknown = pools?.filter((name) => !config.pools.some((p) => p.name === name)) ?? [];
    if (unknown.length > 0) throw new Error(`no pool named ${unknown.join(", ")}`);
    const { definition, key } = createServiceKey(option(args, "name") ?? "", pools);
    save({ keys: [...config.keys, definition] });
    process.stdout.write(`${key}\n`);
    return;
  }
  if (command === "remove-key") {
    const config = loadConfig(file);
    const id = option(args, "id");
    if (!config.keys.some((k) => k.id === id)) throw new Error(`no key with id ${id}`);
    save({ keys: config.keys.filter((k) => k.id !== id) });
    return;
  }
  if (command === "rotate-key") {
    const config = loadConfig(file);
    const id = option(args, "id");
    const old = config.keys.find((k) => k.id === id);
    if (!old) throw new Error(`no key with id ${id}`);
    // The same id, name and pools: its runs stay its own. The old secret is refused as soon as the file is written.
    const { definition, key } = createServiceKey(old.name, old.pools);
    const secret = key.split(".")[2];
    save({ keys: config.keys.map((k) => (k === old ? { ...definition, id: old.id } : k)) });
    process.stdout.write(`apk1.${old.id}.${secret}\n`);
    return;
  }
  if (command === "hand-over-runs") {
    const config = loadConfig(file);
    const [from, to] = [option(args, "from"), option(args, "to")];
    if (!config.dataDir) throw new Error(`${file}: no dataDir, so no stored runs to hand over`);
    if (!from || (from !== "none" && !KEY_ID.test(from))) throw new Error("--from must be a key id or none");
    if (!config.keys.some((k) => k.id === to)) throw new Error(`no key with id ${to} (--to)`);
    // A serving gateway holds its live runs' owners in memory: it would go on with the old ones.
    const pid = servingGateway(config.dataDir);
    if (pid !== undefined)
      throw new Error(`a gateway (pid ${pid}) serves ${config.dataDir}: stop it, hand the runs over, then start it`);
    const { SqliteStore } = await import("./sqlite-store");
    const store = new SqliteStore(config.dataDir);
    try {
      const moved = await store.handOverRuns(from === "none" ? undefined : from, to as string);
      process.stdout.write(`${moved} runs handed over to key ${to}\n`);
    } finally {
      await store.close();
    }
    return;
  }
  if (command === "add-pool") {
    const config = existsSync(file) ? loadConfig(file) : gatewayConfig.parse({ publicUrl: option(args, "public-url") });
    const kind = z.enum(POOL_KINDS).parse(option(args, "kind"));
    const name = option(args, "name") ?? "";
    if (config.pools.some((p) => p.name === name)) throw new Error(`pool ${name} exists already`);
    let certificate: string | undefined;
    if (kind === "worker") {
      const csr = option(args, "csr");
      if (!csr)
        throw new Error(
          "a worker pool needs --csr FILE: make it with openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key -out spacelift.csr",
        );
      if (!config.dataDir) throw new Error(`${file}: set dataDir; the worker pool CA and the runs are kept there`);
      // Loaded only here: the X.509 library costs the serving gateway ~0.1 s of start-up.
      const { loadOrCreateAuthority, signPoolRequest } = await import("./certificates");
      certificate = await signPoolRequest(await loadOrCreateAuthority(config.dataDir), readFileSync(csr, "utf8"), name);
    }
    const { pool, token } = createPool(name, kind, config.publicUrl, certificate);
    save({ pools: [...config.pools, pool] });
    process.stdout.write(`${token}\n`);
    return;
  }
  const config = loadConfig(file);
  const { listen, tls, publicUrl: _, retention, ...settings } = config;
  const gateway = new Gateway({
    ...settings,
    host: listen.host,
    port: listen.port,
    tls: tls ? { cert: readFileSync(tls.certFile), key: readFileSync(tls.keyFile) } : undefined,
    retention: { runsPerKey: retention.runsPerKey, maxAgeMs: retention.maxAgeDays * DAY_MS },
  });
  if (config.keys.length === 0)
    process.stderr.write(
      `no service key: only agents are served until one is made with add-key --config ${file} --name NAME\n`,
    );
  await gateway.listen();
  // add-key and remove-key edit the file: its keys are in force as soon as it is written (or on SIGHUP).
  const reload = () => {
    try {
      gateway.setKeys(loadConfig(file).keys);
    } catch (error) {
      process.stderr.write(`service keys not reloaded: ${(error as Error).message}\n`);
    }
  };
  const watcher = watch(dirname(resolve(file)), (_, name) => name === basename(file) && reload());
  process.on("SIGHUP", reload);
  for (const signal of ["SIGTERM", "SIGINT"] as const)
    process.once(signal, () => void (watcher.close(), gateway.close().then(() => process.exit(0))));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error: Error) => {
    process.stderr.write(`${error.message}\n`);
    process.exit(2);
  });
}
