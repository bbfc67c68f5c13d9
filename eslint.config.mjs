import js from "@eslint/js";
import tseslint from "typescript-eslint";

/**
 * Which part of the tree may import which: the architecture of README.md's layout section,
 * enforced. Each rule forbids imports (matched as paths relative to the importing file).
 */
const rule = (forbid, why) => ({ group: forbid, message: why });
const componentsRule = rule(
  ["**/gateway/**", "**/devkit/**", "**/scripts/**", "**/test/**", "**/agent/*/**", "!**/agent/config/**"],
  "components import agent/config/ (the settings) and nothing else of the runtime",
);
const otherPlatform = (platform) =>
  rule([`**/${platform}`, `**/${platform}/**`], "one platform never imports the other");
const boundaries = [
  // The wire contract and the utilities beneath it stand on Node alone.
  {
    files: ["protocol/**/*.ts", "lib/**/*.ts"],
    rules: [
      rule(
        ["**/agent/**", "**/gateway/**", "**/components/**", "**/devkit/**", "**/scripts/**", "**/test/**"],
        "protocol/ and lib/ depend on nothing of the project but lib/",
      ),
    ],
  },
  // The runtime is bundled into user-data: Node built-ins and its own code only.
  {
    files: ["agent/**/*.ts"],
    rules: [
      rule(
        ["**/gateway/**", "**/components/**", "**/devkit/**", "**/scripts/**", "**/test/**"],
        "the agent runtime imports only agent/, protocol/ and lib/",
      ),
    ],
  },
  // The service side speaks the protocol; it never imports an agent role.
  {
    files: ["gateway/**/*.ts"],
    rules: [
      rule(
        ["**/agent/**", "**/components/**", "**/devkit/**", "**/scripts/**", "**/test/**"],
        "the gateway imports only protocol/ and lib/",
      ),
    ],
  },
  { files: ["components/*.ts"], rules: [componentsRule] },
  {
    files: ["components/shared/**/*.ts"],
    rules: [
      componentsRule,
      rule(
        ["**/aws", "**/aws/**", "**/kubernetes", "**/kubernetes/**"],
        "components/shared/ holds what both platforms use",
      ),
    ],
  },
  { files: ["components/aws/**/*.ts"], rules: [componentsRule, otherPlatform("kubernetes")] },
  { files: ["components/kubernetes/**/*.ts"], rules: [componentsRule, otherPlatform("aws")] },
  {
    files: ["devkit/**/*.ts", "scripts/**/*.ts", "examples/**/*.ts"],
    rules: [rule(["**/test/**"], "only tests import test code")],
  },
];

export default tseslint.config(
  { ignores: ["build/", "node_modules/", "examples/*/node_modules/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: "readonly",
        console: "readonly",
        Buffer: "readonly",
        __dirname: "readonly",
        require: "readonly",
        module: "writable",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        structuredClone: "readonly",
        URL: "readonly",
        URLSearchParams: "readonly",
      },
    },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
  ...boundaries.map(({ files, rules }) => ({
    files,
    ignores: ["**/*.test.ts"],
    rules: { "no-restricted-imports": ["error", { patterns: rules }] },
  })),
  {
    files: ["test/**/*.ts", "devkit/**/*.ts", "**/*.test.ts"],
    rules: { "@typescript-eslint/no-explicit-any": "off", "@typescript-eslint/no-non-null-assertion": "off" },
  },
  {
    files: ["**/*.js", "**/*.cjs"],
    rules: { "@typescript-eslint/no-require-imports": "off" },
  },
);
