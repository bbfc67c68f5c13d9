import assert from "node:assert/strict";
import type http from "node:http";
import { bearerToken, createServiceKey, KEY_HEADER, ServiceAuth } from "./auth";

/** A request as the check reads it: its headers and the connection it came on. */
const request = (connection: object, key: string, via: "header" | "bearer" = "header") => {
  const [name, value] = via === "header" ? [KEY_HEADER, key] : ["authorization", `Bearer ${key}`];
  return {
    headers: { [name]: value },
    rawHeaders: [name, value],
    socket: connection,
  } as unknown as http.IncomingMessage;
};

describe("service keys (gateway/auth.ts)", () => {
  const all = createServiceKey("ci");
  const limited = createServiceKey("team", ["alpha"]);
  /** The same key id with another secret of the same length. */
  const forged = (key: string) => key.replace(/.$/, (c) => (c === "A" ? "B" : "A"));
  const pools = { kind: "pools" } as const;

  it("every request on a connection is checked on its own: another secret, another key, a pool the key may not use", () => {
    const auth = new ServiceAuth([all.definition, limited.definition]);
    const connection = {};
    assert.equal(auth.check(request(connection, all.key), pools).ok, true);
    assert.deepEqual(auth.check(request(connection, forged(all.key)), pools).ok, false, "a wrong secret, same id");
    assert.equal(auth.check(request(connection, all.key, "bearer"), pools).ok, true, "the proven key, as a bearer");
    assert.equal(auth.check(request(connection, limited.key), { kind: "flows-run", pool: "alpha" }).ok, true);
    const beta = auth.check(request(connection, limited.key), { kind: "flows-run", pool: "beta" });
    assert.deepEqual(beta, { ok: false, status: 403, error: "this key may not use pool beta" });
    assert.equal(auth.check(request({}, forged(limited.key)), pools).ok, false, "another connection, a wrong secret");
  });

  it("a key removed or changed is refused at once, on a connection that had used it too", () => {
    const auth = new ServiceAuth([all.definition, limited.definition]);
    const connection = {};
    assert.equal(auth.check(request(connection, all.key), pools).ok, true);
    auth.replace([all.definition, limited.definition]);
    assert.equal(auth.check(request(connection, all.key), pools).ok, true, "the same keys, served again");
    auth.replace([limited.definition]);
    assert.equal(auth.check(request(connection, all.key), pools).ok, false, "removed");
    const renewed = createServiceKey("ci");
    auth.replace([{ ...renewed.definition, id: all.definition.id }]);
    assert.equal(auth.check(request(connection, all.key), pools).ok, false, "the same id with a new secret");
    assert.equal(
      auth.check(request(connection, `apk1.${all.definition.id}.${renewed.key.split(".")[2]}`), pools).ok,
      true,
    );
  });

  it("a bearer credential: the scheme in any case, and Authorization given once (Node keeps the first, a proxy may read another)", () => {
    const given = (...rawHeaders: string[]) => {
      const headers: Record<string, string> = {};
      for (let i = 0; i < rawHeaders.length; i += 2) headers[rawHeaders[i].toLowerCase()] ??= rawHeaders[i + 1];
      return bearerToken({ headers, rawHeaders });
    };
    assert.equal(given("Authorization", "Bearer abc"), "abc");
    assert.equal(given("authorization", "bearer abc"), "abc");
    assert.equal(given("AUTHORIZATION", "BEARER  abc"), "abc");
    assert.equal(given("authorization", "Basic abc"), undefined);
    assert.equal(given("authorization", "Bearer abc", "Authorization", "Bearer forged"), undefined);
    assert.equal(given("authorization", "Bearer forged", "authorization", "Bearer abc"), undefined);
    const auth = new ServiceAuth([all.definition]);
    const twice = {
      headers: { authorization: `Bearer ${all.key}` },
      rawHeaders: ["authorization", `Bearer ${all.key}`, "authorization", "Bearer forged"],
      socket: {},
    } as unknown as http.IncomingMessage;
    assert.equal(auth.check(twice, pools).ok, false);
    assert.equal(auth.check(request({}, all.key, "bearer"), pools).ok, true);
  });
});
