// Bundles the runtime, one minified file per role, into build/bundles/. Runs after tsc:
// the role's settings JSON Schema is computed from the compiled zod schema and inlined,
// so the bundles carry the schema's names and defaults without carrying zod.
// Every byte counts against EC2's 16 KB of user-data: `node scripts/bundle.mjs --analyze`
// prints what each source file costs once compressed as user-data carries it.
import { build } from "esbuild";
import { minify } from "terser";
import { createRequire, SourceMap } from "node:module";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { internalNames, jsonKeys } from "./internal-names.mjs";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const { settingsJsonSchema, runPolicyJsonSchema } = require(path.join(root, "build/agent/config/settings-schema.js"));
const { ROLES } = require(path.join(root, "build/agent/config/roles.js"));
const { EC2_VARIANTS, bundleFile } = require(path.join(root, "build/agent/config/variants.js"));

/** JSON Schema keywords the runtime's validator (agent/config/validate.ts) never reads: left out of bundles. */
const UNREAD = ["minItems", "$schema"];
const without = (schema, keys) =>
  JSON.parse(JSON.stringify(schema, (key, value) => (keys.includes(key) ? undefined : value)));

/**
 * What an EC2 bundle reads of its settings schema (servedSettings, runRole): the secret settings' variables, the
 * metadata tags' key, the executor or vendor it serves, and which of those are required. The rest of its settings
 * come typed in the instance file, as the component checked them.
 */
function ec2Properties({ properties, required = [] }) {
  const kept = Object.entries(properties)
    .filter(([key, p]) => p.secret || p.encoding === "map" || key === "executor" || key === "vendor")
    .map(([key, p]) => [key, { env: p.env, secret: p.secret, encoding: p.encoding }]);
  return { properties: Object.fromEntries(kept), required: required.filter((key) => kept.some(([k]) => k === key)) };
}

/** A role's settings schema as a variant reads it: validateSettings reads the top level's properties and required. */
export function variantSchema(role, variant) {
  const schema = settingsJsonSchema(role);
  if (variant.platform === "ec2") return ec2Properties(schema);
  return { properties: without(schema.properties, UNREAD), required: schema.required };
}

/** The settings schema inlined (no zod in a bundle), and BUILT_FOR fixed to the variant (agent/config/variants.ts). */
const inlineModules = (role, variant) => ({
  name: "inline-modules",
  setup(b) {
    b.onLoad({ filter: /agent[\\/]config[\\/]settings-schema\.ts$/ }, () => ({
      contents: [
        `export function settingsJsonSchema() { return ${JSON.stringify(variantSchema(role, variant))}; }`,
        `export function runPolicyJsonSchema() { return ${JSON.stringify(without(runPolicyJsonSchema(), UNREAD))}; }`,
      ].join("\n"),
      loader: "ts",
    }));
    b.onLoad({ filter: /agent[\\/]config[\\/]variants\.ts$/ }, () => ({
      contents: `export const BUILT_FOR = ${JSON.stringify(variant)};`,
      loader: "ts",
    }));
  },
});

/**
 * Node's built-in modules as plain `require`s. esbuild wraps a default or namespace import of
 * an external module in an interop helper (and reaches each member through `.default`), and
 * calls a named import as `(0, module.name)(...)`; a built-in is already the CommonJS object
 * those imports mean, so `const http = require("node:http")` and `const { spawn } = ...` are
 * the same modules, and the destructured names shrink to one letter like any variable.
 */
const BUILTIN_IMPORT = /^import\s+(?!type\s)([^;]+?)\s+from\s+"(node:[\w/]+)";/gm;
export function builtinsAsRequires(source) {
  return source.replace(BUILTIN_IMPORT, (statement, clause, module) => {
    const namespace = /^(?:\*\s+as\s+)?(\w+)$/.exec(clause.trim());
    if (namespace) return `const ${namespace[1]} = require("${module}");`;
    const named = /^\{([^}]*)\}$/.exec(clause.trim());
    if (!named) throw new Error(`scripts/bundle.mjs cannot rewrite ${JSON.stringify(statement)}`);
    const names = named[1]
      .split(",")
      .map((name) => name.trim())
      .filter((name) => name && !name.startsWith("type "))
      .map((name) => name.replace(/^(\w+)\s+as\s+(\w+)$/, "$1: $2"));
    return names.length > 0 ? `const { ${names.join(", ")} } = require("${module}");` : "";
  });
}

/**
 * `BUILT_FOR.platform`, `.executor` and `.vendor` (agent/config/variants.ts) as the variant's values, written into
 * the source as esbuild's `define` would (which reaches globals only, not an imported name): the comparisons become
 * constant, and the minifier leaves out the code they exclude. (A value in a variable, even a constant, is not
 * folded where a hoisted function may read it before it is set.)
 */
export const withVariant = (source, variant) =>
  source.replace(/\bBUILT_FOR\.(platform|executor|vendor)\b/g, (_, key) => JSON.stringify(variant[key]) ?? "undefined");

const sourceRewrites = (variant) => ({
  name: "source-rewrites",
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, (args) => ({
      contents: withVariant(builtinsAsRequires(readFileSync(args.path, "utf8")), variant),
      loader: "ts",
    }));
  },
});

// The settings schemas' keys are data the bundles read by name: never shortened.
const schemaKeys = jsonKeys([...ROLES.map((role) => settingsJsonSchema(role)), runPolicyJsonSchema()]);
const privateNames = internalNames(root, [...schemaKeys]);

/** The same bytes every run: Brotli at its best, as user-data carries the bundle. */
export const brotli = (text) =>
  brotliCompressSync(Buffer.from(text), {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_LGWIN]: 22 },
  });

/** One role's bundle (the full one, or a variant: agent/config/variants.ts): esbuild joins the modules, terser shrinks them. */
export async function bundleRole(role, { sourceMap = false, variant = {} } = {}) {
  const result = await build({
    entryPoints: [path.join(root, "agent/roles", `${role}.ts`)],
    outfile: path.join(root, "build/bundles", `${role}.js`),
    absWorkingDir: root,
    bundle: true,
    platform: "node",
    target: "node22",
    format: "cjs",
    charset: "ascii",
    legalComments: "none",
    sourcemap: sourceMap ? "external" : false,
    metafile: true,
    write: false,
    logLevel: "error",
    // Class fields as constructor assignments, as TypeScript always wrote them: no declarations
    // repeated beside the parameter properties.
    tsconfigRaw: { compilerOptions: { useDefineForClassFields: false } },
    // Registered first, so the schema is inlined rather than read.
    plugins: [inlineModules(role, variant), sourceRewrites(variant)],
  });
  // Checked before anything is written, so a bad bundle never replaces a good one.
  const external = Object.keys(result.metafile.inputs).filter((input) => input.includes("node_modules"));
  if (external.length > 0)
    throw new Error(`the ${role} bundle must use Node built-ins only, but includes ${external.join(", ")}`);
  const output = (suffix) => result.outputFiles.find((file) => file.path.endsWith(suffix)).text;
  // terser after esbuild: smaller by a few percent, which count against 16 KB. Members the
  // code marks private get short names too (scripts/internal-names.mjs says which are safe).
  const minified = await minify(output(".js"), {
    ecma: 2022,
    toplevel: true,
    compress: { passes: 3 },
    mangle: { toplevel: true, properties: { regex: new RegExp(`^(?:${privateNames.join("|")})$`) } },
    format: { ascii_only: true },
    sourceMap: sourceMap ? { content: output(".map"), asObject: true } : false,
  });
  return { code: minified.code, map: minified.map };
}

/** What each source file costs in the compressed bundle: the bytes Brotli saves without its code. */
function compressedCost(code, map) {
  const sourceMap = new SourceMap(map);
  const owners = [];
  let line = 0;
  let column = 0;
  for (const char of code) {
    const entry = sourceMap.findEntry(line, column);
    owners.push(
      entry?.originalSource
        ? path.relative(root, path.resolve(root, "build/bundles", entry.originalSource))
        : "(esbuild)",
    );
    if (char === "\n") {
      line++;
      column = 0;
    } else column++;
  }
  const total = brotli(code).length;
  return [...new Set(owners)]
    .map((file) => ({
      file,
      minified: owners.filter((owner) => owner === file).length,
      cost: total - brotli([...code].filter((_, i) => owners[i] !== file).join("")).length,
    }))
    .sort((a, b) => b.cost - a.cost);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const analyze = process.argv.includes("--analyze");
  const builds = ROLES.flatMap((role) => [{}, ...EC2_VARIANTS[role]].map((variant) => ({ role, variant })));
  // One at a time: terser is the slow part, and it is synchronous work.
  for (const { role, variant } of builds) {
    const { code, map } = await bundleRole(role, { sourceMap: analyze, variant });
    const outfile = path.join(root, "build/bundles", bundleFile(role, variant));
    mkdirSync(path.dirname(outfile), { recursive: true });
    writeFileSync(outfile, code);
    console.log(
      `bundle ${path.basename(outfile)}: ${code.length} bytes, ${brotli(code).length} Brotli (as user-data carries it), ${gzipSync(code, { level: 9 }).length} gzip`,
    );
    if (analyze) {
      console.log(
        `  ${"brotli".padStart(6)} ${"minified".padStart(8)}  source (Brotli: what the bundle saves without it)`,
      );
      for (const { file, minified, cost } of compressedCost(code, map))
        console.log(`  ${String(cost).padStart(6)} ${String(minified).padStart(8)}  ${file}`);
    }
  }
}
