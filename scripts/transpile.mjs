// The fast build `npm test` uses: esbuild transpiles each TypeScript file of tsconfig.json's
// tree on its own into build/, in the layout tsc writes (build/agent/..., build/test/...), in
// about a second. It checks no types: `npm run lint` runs `tsc --noEmit` (tsconfig's
// isolatedModules makes tsc refuse what a file-by-file transpile cannot honour).
// `npm run build` stays tsc, with declarations, for `npm start`, the benchmarks and packaging.
import { build } from "esbuild";
import { globSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const tsconfig = JSON.parse(readFileSync(path.join(root, "tsconfig.json"), "utf8"));
const { outDir, rootDir } = tsconfig.compilerOptions;
const excluded = tsconfig.exclude.map((dir) => path.join(root, dir) + path.sep);
const files = globSync(tsconfig.include, { cwd: root })
  .map((file) => path.join(root, file))
  .filter((file) => !file.endsWith(".d.ts") && !excluded.some((dir) => file.startsWith(dir)));

rmSync(path.join(root, outDir), { recursive: true, force: true });
await build({
  entryPoints: files,
  outdir: path.join(root, outDir),
  outbase: path.join(root, rootDir),
  absWorkingDir: root,
  bundle: false,
  platform: "node",
  format: "cjs",
  target: "node22",
  sourcemap: tsconfig.compilerOptions.sourceMap,
  // import() as require(), as tsc writes it for CommonJS: the emitted paths carry no extension, which
  // Node's ESM resolution would not find (gateway/main.ts and tests import modules on demand).
  supported: { "dynamic-import": false },
  // Read for useDefineForClassFields and the like, as tsc reads them.
  tsconfig: path.join(root, "tsconfig.json"),
  logLevel: "warning",
});
console.log(`transpiled ${files.length} files into ${outDir}/`);
