// Bundles the runtime, one minified file per role, into build/bundles/. Runs after tsc:
// the role's settings JSON Schema is computed from the compiled zod schema and inlined,
// so the bundles carry the schema's names and defaults without carrying zod.
import { build } from "esbuild";
import { minify } from "terser";
import { createRequire } from "node:module";
import { gzipSync } from "node:zlib";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const { settingsJsonSchema, runPolicyJsonSchema } = require(path.join(root, "build/agent/config/settings-schema.js"));
const { ROLES } = require(path.join(root, "build/agent/config/roles.js"));

const inlineSchema = (role) => ({
  name: "inline-settings-schema",
  setup(b) {
    b.onLoad({ filter: /agent[\\/]config[\\/]settings-schema\.ts$/ }, () => ({
      contents: [
        `export function settingsJsonSchema() { return ${JSON.stringify(settingsJsonSchema(role))}; }`,
        `export function runPolicyJsonSchema() { return ${JSON.stringify(runPolicyJsonSchema())}; }`,
      ].join("\n"),
      loader: "ts",
    }));
  },
});

for (const role of ROLES) {
  const outfile = path.join(root, "build/bundles", `${role}.js`);
  const result = await build({
    entryPoints: [path.join(root, "agent/roles", `${role}.ts`)],
    outfile,
    bundle: true,
    minify: true,
    platform: "node",
    target: "node22",
    format: "cjs",
    charset: "ascii",
    legalComments: "none",
    metafile: true,
    write: false,
    logLevel: "error",
    plugins: [inlineSchema(role)],
    // Class fields as constructor assignments: no declarations repeated beside the parameter properties (about 100 bytes of user-data).
    tsconfigRaw: { compilerOptions: { useDefineForClassFields: false } },
  });
  // Checked before anything is written, so a bad bundle never replaces a good one.
  const external = Object.keys(result.metafile.inputs).filter((input) => input.includes("node_modules"));
  if (external.length > 0) throw new Error(`the ${role} bundle must use Node built-ins only, but includes ${external.join(", ")}`);
  // A second pass with terser: about 4% smaller than esbuild alone, which counts against 16 KB.
  const minified = await minify(result.outputFiles[0].text, { ecma: 2022, toplevel: true, compress: { passes: 3 }, mangle: { toplevel: true }, format: { ascii_only: true } });
  const code = Buffer.from(minified.code);
  mkdirSync(path.dirname(outfile), { recursive: true });
  writeFileSync(outfile, code);
  console.log(`bundle ${role}: ${code.length} bytes, ${gzipSync(code, { level: 9 }).length} gzipped`);
  // node scripts/bundle.mjs --analyze: the largest inputs of each bundle (minified bytes).
  if (process.argv.includes("--analyze")) {
    const inputs = Object.entries(Object.values(result.metafile.outputs)[0].inputs).sort(([, a], [, b]) => b.bytesInOutput - a.bytesInOutput);
    for (const [input, { bytesInOutput }] of inputs.slice(0, 12)) console.log(`  ${String(bytesInOutput).padStart(6)} ${input}`);
  }
}
