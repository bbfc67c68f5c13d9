// The property names a runtime bundle may shorten: members our classes mark `private` or
// `protected`, which TypeScript lets only the class itself (and its subclasses) touch, and
// which a private or protected member cannot be the override of a Node.js one. Read from the
// sources' syntax (fast, no type checking), so the rule holds for code still to be written.
// A name is kept as written if it occurs anywhere in any other role: a public member, an
// object literal or destructured key, an interface or type member, a string, or an access
// through anything but `this` in a class's own code. So the wire messages, the settings, the
// instance configuration, log fields and Node.js APIs keep their names: they are written as
// object literals, interfaces and strings, never as private members.
import ts from "typescript";
import path from "node:path";
import { readdirSync, readFileSync } from "node:fs";

/** The folders the runtime bundles are made from. */
const DIRECTORIES = ["agent", "lib", "protocol"];
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

function sources(root) {
  const files = [];
  for (const directory of DIRECTORIES) {
    for (const entry of readdirSync(path.join(root, directory), { recursive: true })) {
      if (entry.endsWith(".ts") && !entry.endsWith(".test.ts")) files.push(path.join(root, directory, entry));
    }
  }
  return files.sort();
}

const isMember = (node) =>
  (ts.isClassElement(node) && !ts.isConstructorDeclaration(node)) ||
  (ts.isParameter(node) && ts.isParameterPropertyDeclaration(node, node.parent));

const isPrivate = (node) => ts.getCombinedModifierFlags(node) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected);

/** The class whose instance `this` is at this node, if it is one of ours (not a function's own `this`). */
function thisClass(node) {
  for (let scope = node.parent; scope; scope = scope.parent) {
    if (ts.isArrowFunction(scope)) continue;
    if (ts.isClassLike(scope)) return scope;
    if (ts.isFunctionLike(scope))
      return ts.isClassLike(scope.parent) && !ts.hasStaticModifier(scope) ? scope.parent : undefined;
    if (ts.isPropertyDeclaration(scope)) return ts.hasStaticModifier(scope) ? undefined : scope.parent;
  }
  return undefined;
}

/** The names that are safe to shorten, sorted; `reserved` adds names known to leave the bundle. */
export function internalNames(root, reserved = []) {
  const candidates = new Set();
  const kept = new Set(reserved);
  const parsed = sources(root).map((file) =>
    ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true),
  );
  // Our classes by name, with the names they declare: `this.x` is ours only if x is declared on
  // the class or an ancestor of ours, not inherited from Node.js (an EventEmitter's `emit`).
  const classes = new Map();
  const collect = (node) => {
    if (ts.isClassDeclaration(node) && node.name) {
      const members = new Set();
      for (const member of node.members) if (member.name && ts.isIdentifier(member.name)) members.add(member.name.text);
      for (const parameter of node.members.find(ts.isConstructorDeclaration)?.parameters ?? []) {
        if (ts.isParameterPropertyDeclaration(parameter, parameter.parent) && ts.isIdentifier(parameter.name))
          members.add(parameter.name.text);
      }
      const base = node.heritageClauses?.find((clause) => clause.token === ts.SyntaxKind.ExtendsKeyword)?.types[0]
        ?.expression;
      classes.set(node.name.text, { members, base: base && ts.isIdentifier(base) ? base.text : undefined });
    }
    ts.forEachChild(node, collect);
  };
  parsed.forEach(collect);
  const declares = (owner, name) => {
    for (let cls = owner?.name && classes.get(owner.name.text); cls; cls = cls.base && classes.get(cls.base)) {
      if (cls.members.has(name)) return true;
    }
    return false;
  };
  for (const source of parsed) {
    const visit = (node) => {
      const name = node.name && ts.isIdentifier(node.name) ? node.name.text : undefined;
      if (isMember(node) && name) {
        (isPrivate(node) ? candidates : kept).add(name);
      } else if (ts.isPropertyAccessExpression(node) && name) {
        const own = node.expression.kind === ts.SyntaxKind.ThisKeyword && declares(thisClass(node), name);
        if (!own) kept.add(name);
      } else if ((ts.isObjectLiteralElementLike(node) || ts.isTypeElement(node) || ts.isEnumMember(node)) && name) {
        kept.add(name);
      } else if (ts.isBindingElement(node) && ts.isObjectBindingPattern(node.parent)) {
        const key = node.propertyName ?? node.name;
        if (ts.isIdentifier(key)) kept.add(key.text);
      } else if (ts.isStringLiteralLike(node) && IDENTIFIER.test(node.text)) {
        kept.add(node.text);
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return [...candidates].filter((name) => !kept.has(name)).sort();
}

/** Every key of a JSON value (the inlined settings schemas): their names are data. */
export function jsonKeys(value, keys = new Set()) {
  if (Array.isArray(value)) for (const item of value) jsonKeys(item, keys);
  else if (value && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) {
      keys.add(key);
      jsonKeys(item, keys);
    }
  }
  return keys;
}

/**
 * Members of the runtime's own interfaces that a class's `private` cannot mark: AwsClient, InstanceMetadata, Logger,
 * RoleContext, a launcher's executor and run, a Flows runtime. Each one is set and read only inside a bundle: never a
 * wire message's or a JSON file's key, never a Node.js API's option or member (which rules out keepAlive, flush,
 * ready: an http.Agent option, a Transform's, a Flows runner's message). The end-to-end tests run the bundles.
 */
export const INTERNAL_MEMBERS = [
  "answers",
  "busy",
  "busyChanged",
  "cancelled",
  "cleanup",
  "credentials",
  "delivering",
  "describe",
  "exited",
  "getSecretString",
  "identity",
  "jobs",
  "lifecycleAction",
  "memoryPid",
  "onCancel",
  "onOutput",
  "outcome",
  "passed",
  "redact",
  "sinks",
  "stateFile",
  "stopped",
  "take",
  "targetLifecycleState",
  "wake",
  "workspaceInRun",
];

/** INTERNAL_MEMBERS, refused if one is also data: a key of `reserved` (the settings schemas) or a quoted string. */
export function internalMembers(root, reserved = []) {
  const quoted = new Set();
  for (const file of sources(root))
    for (const [, name] of readFileSync(file, "utf8").matchAll(/["']([A-Za-z_$][\w$]*)["']/g)) quoted.add(name);
  const data = INTERNAL_MEMBERS.filter((name) => reserved.includes(name) || quoted.has(name));
  if (data.length > 0)
    throw new Error(`scripts/internal-names.mjs: ${data.join(", ")} are data, never to be shortened`);
  return INTERNAL_MEMBERS;
}
