/** What the page shows of a pool (the gateway's summary has this and more). */
export interface PoolStatus {
  name: string;
  kind: string;
  connections: number;
  activeRequests: number;
  agents: {
    id: string;
    remote: string;
    active: number;
    parallelism: number;
    draining?: boolean;
    metadata: Record<string, string>;
  }[];
}

const escape = (text: unknown) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A small page of pools and their agents; it refreshes itself every five seconds. */
export function renderStatusPage(pools: PoolStatus[]): string {
  const rows = pools
    .map((pool) => {
      const agents = pool.agents
        .map(
          (a) =>
            `<li>${escape(a.id.slice(0, 8))} from ${escape(a.remote)}, ${a.active}/${a.parallelism} busy${a.draining ? ", draining" : ""} ${escape(
              Object.entries(a.metadata)
                .map(([k, v]) => `${k}=${v}`)
                .join(" "),
            )}</li>`,
        )
        .join("");
      return `<tr><td>${escape(pool.name)}</td><td>${escape(pool.kind)}</td><td>${pool.connections}</td><td>${pool.activeRequests}</td><td><ul>${agents}</ul></td></tr>`;
    })
    .join("\n");
  return `<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>agentpools gateway</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em .8em;text-align:left;vertical-align:top}ul{margin:0;padding-left:1.2em}</style></head>
<body><h1>agentpools gateway</h1>
<table><tr><th>pool</th><th>kind</th><th>connected agents</th><th>requests in flight</th><th>agents</th></tr>
${rows}
</table><p>JSON: <a href="/_agentpools/api/pools">/_agentpools/api/pools</a></p></body></html>
`;
}
