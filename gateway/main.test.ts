import assert from "node:assert/strict";
import { gatewayConfig } from "./main";

describe("gateway.json", () => {
  it("publicUrl, written into every pool's token: https:// any host, plain http:// only to a loopback host", () => {
    for (const publicUrl of ["https://gw.corp.example:8443/agents", "http://127.0.0.1:8080", "http://localhost:8080"])
      assert.ok(gatewayConfig.safeParse({ publicUrl }).success, publicUrl);
    const refused = gatewayConfig.safeParse({ publicUrl: "http://gw.corp.example:8080" });
    assert.deepEqual(
      refused.error?.issues.map((issue) => [issue.path.join("."), issue.message]),
      [
        [
          "publicUrl",
          "must be https://, or http:// only to localhost, 127.0.0.0/8 or [::1]: " +
            "agents send their pool's token there",
        ],
      ],
    );
  });
});
