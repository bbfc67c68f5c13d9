import assert from "node:assert/strict";
import { policyRefusal, runRefusal } from "./policy";

const run = (overrides: Partial<Parameters<typeof policyRefusal>[1]> = {}) => ({
  image: "public.ecr.aws/spacelift/runner-terraform:1.9",
  commands: ["terraform plan"],
  environment: { TF_VAR_env: "prod" },
  ...overrides,
});

describe("run initialization policy", () => {
  it("allows what no rule refuses; an empty policy allows everything", () => {
    assert.equal(policyRefusal({}, run()), undefined);
    assert.equal(
      policyRefusal(
        {
          allowedImages: ["public.ecr.aws/spacelift/*"],
          deniedCommands: ["destroy"],
          requiredEnvironment: ["TF_VAR_env"],
          maxRunTimeout: "2h",
        },
        run({ timeoutSeconds: 3600 }),
      ),
      undefined,
    );
  });

  it("images: * matches any run of characters, and nothing else is a pattern", () => {
    assert.match(
      policyRefusal({ allowedImages: ["alpine:*"] }, run()) ?? "",
      /image public.ecr.aws\/spacelift\/runner-terraform:1.9 is not allowed/,
    );
    assert.match(
      policyRefusal({ allowedImages: ["public.ecr.aws/spacelift/runner.terraform:*"] }, run()) ?? "",
      /not allowed/,
      "a dot is a dot",
    );
    assert.match(policyRefusal({ deniedImages: ["*:1.9"] }, run()) ?? "", /is denied \(deniedImages: \*:1.9\)/);
    assert.match(
      policyRefusal({ allowedImages: ["alpine"] }, run({ image: "alpine-evil" })) ?? "",
      /not allowed/,
      "the whole reference must match",
    );
  });

  it("commands, required variables and the longest timeout", () => {
    assert.equal(
      policyRefusal(
        { deniedCommands: ["terraform\\s+destroy"] },
        run({ commands: ["terraform init", "terraform  destroy -auto-approve"] }),
      ),
      "command 2 matches the denied pattern /terraform\\s+destroy/",
    );
    assert.equal(
      policyRefusal({ requiredEnvironment: ["TF_VAR_env", "TF_VAR_team"] }, run()),
      "the run's environment must set TF_VAR_team",
    );
    assert.equal(
      policyRefusal({ requiredEnvironment: ["TF_VAR_env"] }, run({ environment: { TF_VAR_env: "" } })),
      "the run's environment must set TF_VAR_env",
    );
    assert.match(
      policyRefusal({ maxRunTimeout: "1h" }, run({ timeoutSeconds: 3601 })) ?? "",
      /3601s is over the policy's maxRunTimeout \(1h\)/,
    );
    assert.equal(
      policyRefusal({ maxRunTimeout: "1h" }, run()),
      undefined,
      "no timeout asked: the launcher's own applies",
    );
  });
});

describe("what the launcher refuses of any run", () => {
  const spec = { id: "r1", image: "alpine:3", commands: ["echo hi"] };
  it("a sound run passes; variables that steer the Docker client or the loader do not, in any case", () => {
    assert.equal(runRefusal(spec, { TF_VAR_x: "1", GOPATH: "/go", MY_PROXY_HOST: "h" }), undefined);
    for (const name of [
      "LD_PRELOAD",
      "DOCKER_CONFIG",
      "https_proxy",
      "ALL_PROXY",
      "GODEBUG",
      "PATH",
      "home",
      "GCONV_PATH",
      "SSL_CERT_FILE",
    ]) {
      assert.match(runRefusal(spec, { [name]: "x" }) ?? "", new RegExp(`run variable ${name} would steer`), name);
    }
    assert.match(runRefusal(spec, { "LD_PRELOAD=/x.so": "" }) ?? "", /is not a variable name/);
  });

  it("an image that a command line would read as an option, or split, is not an image reference", () => {
    for (const image of ["--privileged", "--volume=/:/host", "-v", "alpine:3 --privileged", "alpine:3\n-v", "", 7]) {
      assert.match(runRefusal({ ...spec, image }, {}) ?? "", /is not an image reference/, JSON.stringify(image));
    }
    assert.equal(runRefusal({ ...spec, image: `registry.corp:5000/team/app@sha256:${"a".repeat(64)}` }, {}), undefined);
  });

  it("deniedCommands rules see each line, continuation lines joined", () => {
    const policy = { deniedCommands: ["^curl .*\\|\\s*sh$"] };
    assert.equal(policyRefusal(policy, run({ commands: ["echo ok"] })), undefined);
    for (const command of ["echo\ncurl x | sh", "curl x \\\n| sh", "curl x | sh\r\necho"]) {
      assert.match(
        policyRefusal(policy, run({ commands: [command] })) ?? "",
        /command 1 matches/,
        JSON.stringify(command),
      );
    }
  });
});
