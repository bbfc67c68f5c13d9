// Bundles the runtime, one minified file per role, into build/bundles/. Runs after tsc:
// the role's settings JSON Schema is computed from the compiled zod schema and inlined,
// so the bundles carry the schema's names and defaults without carrying zod.
// Every byte counts against EC2's 16 KB of user-data: `node scripts/bundle.mjs --analyze`
// prints what each source file costs once compressed as user-data carries it.
import { build } from "esbuild";
import { createRequire, isBuiltin, SourceMap } from "node:module";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const { settingsJsonSchema, runPolicyJsonSchema } = require(path.join(root, "build/agent/config/settings-schema.js"));
const { ROLES } = require(path.join(root, "build/agent/config/roles.js"));
const { EC2_VARIANTS, FLOWS_RUNNER_FILE, bundleFile } = require(path.join(root, "build/agent/config/variants.js"));

/** JSON Schema keywords the runtime's validator (agent/config/validate.ts) never reads: left out of bundles. */
const UNREAD = ["minItems", "$schema"];
const without = (schema, keys) =>
  JSON.parse(JSON.stringify(schema, (key, value) => (keys.includes(key) ? undefined : value)));

/**
 * What an EC2 bundle reads of its settings schema (servedSettings, runRole): the secret settings' variables, and which
 * of those are required. The rest of its settings come typed in the instance file, as the component checked them; its
 * executor or vendor is the variant's (BUILT_FOR), never read from the schema.
 */
function ec2Properties({ properties, required = [] }) {
  const kept = Object.entries(properties)
    .filter(([, p]) => p.secret)
    .map(([key, p]) => [key, { env: p.env, secret: true }]);
  return { properties: Object.fromEntries(kept), required: required.filter((key) => kept.some(([k]) => k === key)) };
}

/** A role's settings schema as a variant reads it: validateSettings reads the top level's properties and required. */
export function variantSchema(role, variant) {
  const schema = settingsJsonSchema(role);
  if (variant.platform === "ec2") return ec2Properties(schema);
  return { properties: without(schema.properties, UNREAD), required: schema.required };
}

/** The settings schema inlined (no zod in a bundle), and BUILT_FOR fixed to the variant (agent/config/built-for.ts). */
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
      contents: `export const FLOWS_RUNNER_FILE = ${JSON.stringify(FLOWS_RUNNER_FILE)};`,
      loader: "ts",
    }));
    b.onLoad({ filter: /agent[\\/]config[\\/]built-for\.ts$/ }, () => ({
      contents: `export const BUILT_FOR = ${JSON.stringify({ ...variant, role })};`,
      loader: "ts",
    }));
  },
});

/**
 * Node's built-in modules as plain `require`s. esbuild wraps a default or namespace import of
 * an external module in an interop helper (and reaches each member through `.default`), and
 * calls a named import as `(0, module.name)(...)`; a built-in is already the CommonJS object
 * those imports mean, so `const http = require("node:http")` is the same module. Named imports
 * come from one module per built-in (builtinModules below), which every source file importing
 * it shares: the bundle requires node:fs once, however many files take names from it, and the
 * names shrink to one letter like any variable.
 */
const BUILTIN_IMPORT = /^import\s+(?!type\s)([^;]+?)\s+from\s+"(node:[\w/]+)";/gm;
const BUILTIN_NAMESPACE = "agentpools-builtin:";
export function builtinsAsRequires(source) {
  return source.replace(BUILTIN_IMPORT, (statement, clause, module) => {
    const namespace = /^(?:\*\s+as\s+)?(\w+)$/.exec(clause.trim());
    if (namespace) return `import ${namespace[1]} from "${BUILTIN_NAMESPACE}${module}";`;
    const named = /^\{([^}]*)\}$/.exec(clause.trim());
    if (!named) throw new Error(`scripts/bundle.mjs cannot rewrite ${JSON.stringify(statement)}`);
    const names = named[1]
      .split(",")
      .map((name) => name.trim())
      .filter((name) => name && !name.startsWith("type "));
    return names.length > 0 ? `import { ${names.join(", ")} } from "${BUILTIN_NAMESPACE}${module}";` : "";
  });
}

/**
 * The module a built-in's named imports come from: every export of the built-in as one destructuring of its
 * require (terser keeps only the names the bundle uses, and drops the require if it uses none).
 */
const builtinModules = {
  name: "builtin-modules",
  setup(b) {
    b.onResolve({ filter: new RegExp(`^${BUILTIN_NAMESPACE}`) }, (args) => ({
      path: args.path.slice(BUILTIN_NAMESPACE.length),
      namespace: "builtin",
    }));
    b.onLoad({ filter: /.*/, namespace: "builtin" }, (args) => {
      const names = Object.keys(require(args.path)).filter(
        (name) => /^[A-Za-z_$][\w$]*$/.test(name) && name !== "default",
      );
      // Without "node:" where Node knows the bare name (a bare built-in name always loads the built-in): 5 bytes less.
      const bare = args.path.replace(/^node:/, "");
      const module = `require("${isBuiltin(bare) ? bare : args.path}")`;
      return { contents: `export default ${module};\nexport const { ${names.join(", ")} } = ${module};`, loader: "js" };
    });
  },
};

/**
 * `BUILT_FOR.platform`, `.executor`, `.vendor` (agent/config/variants.ts) and `.role` (the bundle's) as the variant's
 * values, written into the source as esbuild's `define` would (which reaches globals only, not an imported name): the
 * comparisons become constant, and the minifier leaves out the code they exclude. (A value in a variable, even a
 * constant, is not folded where a hoisted function may read it before it is set.)
 */
export const withVariant = (source, variant) =>
  source.replace(
    /\bBUILT_FOR\.(platform|executor|vendor|role)\b/g,
    (_, key) => JSON.stringify(variant[key]) ?? "undefined",
  );

const sourceRewrites = (built) => ({
  name: "source-rewrites",
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, (args) => ({
      contents: withVariant(builtinsAsRequires(readFileSync(args.path, "utf8")), built),
      loader: "ts",
    }));
  },
});

// The settings schemas' keys are data the bundles read by name: never shortened. Read (with the TypeScript
// parser and terser) when a bundle is made, not when the last build's are reused.
let privateNames;
async function shortenable() {
  const { internalMembers, internalNames, jsonKeys } = await import("./internal-names.mjs");
  const keys = [...jsonKeys([...ROLES.map((role) => settingsJsonSchema(role)), runPolicyJsonSchema()])];
  return (privateNames ??= [...internalNames(root, keys), ...internalMembers(root, keys)]);
}

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
    plugins: [inlineModules(role, variant), sourceRewrites({ ...variant, role }), builtinModules],
  });
  // Checked before anything is written, so a bad bundle never replaces a good one.
  const external = Object.keys(result.metafile.inputs).filter((input) => input.includes("node_modules"));
  if (external.length > 0)
    throw new Error(`the ${role} bundle must use Node built-ins only, but includes ${external.join(", ")}`);
  const output = (suffix) => result.outputFiles.find((file) => file.path.endsWith(suffix)).text;
  // terser after esbuild: smaller by a few percent, which count against 16 KB. Members the
  // code marks private get short names too (scripts/internal-names.mjs says which are safe).
  const { minify } = await import("terser");
  const compress = {
    // A built-in's require is pure: a module whose only user the variant leaves out (node:net where Node's own
    // clients dial) is not loaded either.
    pure_funcs: ["require"],
    // Reading a property has no effect in the runtime: its getters (busy, connected) only compute, and no code
    // reads a property to make it throw.
    pure_getters: true,
    // Built-ins called the short way (String(x) as ""+x, new Error as Error): the runtime overrides none of them and
    // passes them no Symbol; functions that use no `this` become arrows, and none is called with `new`.
    unsafe: true,
    unsafe_arrows: true,
  };
  const first = await minify(output(".js"), {
    ecma: 2022,
    toplevel: true,
    compress: {
      ...compress,
      passes: 3,
      unsafe_methods: true,
      // Function declarations first in their scope, where JavaScript hoists them anyway: the same code, in an order
      // Brotli packs smaller (launcher -29 B, VCS -31, Flows -8/-16).
      hoist_funs: true,
    },
    mangle: {
      toplevel: true,
      // builtins: names that are also DOM properties (context, link, current) are shortened too; only ours match.
      properties: { regex: new RegExp(`^(?:${(await shortenable()).join("|")})$`), builtins: true },
    },
    format: { ascii_only: true },
    sourceMap: sourceMap ? { content: output(".map"), asObject: true } : false,
  });
  // One more pass without unsafe_methods, which leaves some object members as methods (`m(a){return f(a)}`) that
  // this pass makes arrows (`m:a=>f(a)`, only where they use no `this` nor `arguments`): 5 to 20 bytes Brotli a bundle.
  const minified = await minify(first.code, {
    ecma: 2022,
    toplevel: true,
    compress: { ...compress, passes: 2 },
    mangle: false,
    format: { ascii_only: true },
    sourceMap: sourceMap ? { content: first.map, asObject: true } : false,
  });
  // A text file's last line ends in a newline (user-data writes files with heredocs, which always end so).
  return { code: `${minified.code}\n`, map: minified.map, inputs: Object.keys(result.metafile.inputs) };
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

/** The folders bundles are made from: every input esbuild reads must be in one (checked before a result is kept). */
const SOURCES = ["agent", "lib", "protocol"];
/** Earlier results, kept where `npm ci` (not a wiped build/) clears them. */
const CACHE_DIR = path.join(root, "node_modules/.cache/agentpools-bundles");

/**
 * What every bundle is a function of: the sources they are made from (the settings schemas and the
 * names terser may shorten come from them too), the bundle scripts, and the tools' versions (the lockfile).
 */
function inputsDigest() {
  const hash = createHash("sha256").update(process.version);
  // Every script module: this one, those it imports, any it may import later.
  const scripts = readdirSync(path.join(root, "scripts")).filter((file) => file.endsWith(".mjs"));
  const files = ["package-lock.json", ...scripts.map((file) => `scripts/${file}`)];
  for (const dir of SOURCES)
    for (const entry of readdirSync(path.join(root, dir), { recursive: true }))
      if (entry.endsWith(".ts")) files.push(path.join(dir, entry));
  for (const file of files.sort()) hash.update(`\0${file}\0`).update(readFileSync(path.join(root, file)));
  return hash.digest("hex").slice(0, 32);
}

/** Every role's bundles, as files of build/bundles/ and the line each prints: made, or the last run's when nothing they are made of changed. */
async function allBundles() {
  const cached = path.join(CACHE_DIR, `${inputsDigest()}.json`);
  try {
    return { ...JSON.parse(readFileSync(cached, "utf8")), from: cached };
  } catch {
    // Not made yet from these sources.
  }
  // terser is the slow part, and synchronous: the bundles are made on as many threads as there are cores.
  // Every role's full bundle and its EC2 variants, and the Flows runtimes' own (agent/roles/flows-runner.ts).
  const builds = [
    ...ROLES.flatMap((role) => [{}, ...EC2_VARIANTS[role]].map((variant) => ({ role, variant }))),
    { role: "flows-runner", variant: {} },
  ];
  const threads = Math.min(availableParallelism(), 4);
  const privateNames = await shortenable();
  const made = await Promise.all(
    Array.from({ length: threads }, (_, i) => {
      const share = builds.filter((_, j) => j % threads === i);
      const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { privateNames, builds: share } });
      return new Promise((resolve, reject) => worker.once("message", resolve).once("error", reject));
    }),
  );
  const bundles = builds.map((_, j) => made[j % threads][Math.floor(j / threads)]);
  // A built-in's module (namespace "builtin") is made here from Node's own exports: the digest has both.
  const outside = bundles.flatMap(({ inputs }) =>
    inputs.filter((input) => !input.startsWith("builtin:") && !SOURCES.includes(input.split(/[\\/]/)[0])),
  );
  for (const bundle of bundles) delete bundle.inputs;
  // Kept only when the digest covers every input; older results go.
  if (outside.length === 0) {
    rmSync(CACHE_DIR, { recursive: true, force: true });
    mkdirSync(CACHE_DIR, { recursive: true });
    writeFileSync(`${cached}.${process.pid}`, JSON.stringify({ bundles }));
    renameSync(`${cached}.${process.pid}`, cached);
  }
  return { bundles };
}

const sizes = (file, code) =>
  `bundle ${file}: ${code.length} bytes, ${brotli(code).length} Brotli (as user-data carries it), ${gzipSync(code, { level: 9 }).length} gzip`;

if (!isMainThread && workerData?.builds) {
  // A thread of allBundles: its share of the bundles, in order.
  privateNames = workerData.privateNames;
  const bundles = [];
  for (const { role, variant } of workerData.builds) {
    const { code, inputs } = await bundleRole(role, { variant });
    bundles.push({ file: bundleFile(role, variant), code, line: sizes(bundleFile(role, variant), code), inputs });
  }
  parentPort.postMessage(bundles);
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  mkdirSync(path.join(root, "build/bundles"), { recursive: true });
  if (process.argv.includes("--analyze")) {
    for (const role of ROLES)
      for (const variant of [{}, ...EC2_VARIANTS[role]]) {
        const { code, map } = await bundleRole(role, { sourceMap: true, variant });
        writeFileSync(path.join(root, "build/bundles", bundleFile(role, variant)), code);
        console.log(sizes(bundleFile(role, variant), code));
        console.log(
          `  ${"brotli".padStart(6)} ${"minified".padStart(8)}  source (Brotli: what the bundle saves without it)`,
        );
        for (const { file, minified, cost } of compressedCost(code, map))
          console.log(`  ${String(cost).padStart(6)} ${String(minified).padStart(8)}  ${file}`);
      }
  } else {
    const { bundles, from } = await allBundles();
    for (const { file, code, line } of bundles) {
      writeFileSync(path.join(root, "build/bundles", file), code);
      console.log(line);
    }
    if (from) console.log(`(the bundles of the last build from the same sources: ${path.relative(root, from)})`);
  }
}
