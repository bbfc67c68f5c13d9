// Preloaded (node --require) into a process a test starts: prints "lookup HOST" to stderr for each name the
// process resolves itself. A request through a proxy resolves the proxy's name only, one around it the target's:
// the first lookup of a host says at once which way its request went, with no wait for the request's retries.
import dns from "node:dns";

const { lookup } = dns;
dns.lookup = function (this: unknown, hostname: string, ...rest: unknown[]) {
  process.stderr.write(`lookup ${hostname}\n`);
  return (lookup as (...args: unknown[]) => unknown).call(this, hostname, ...rest);
} as typeof dns.lookup;
