/**
 * EC2 instance type rules, pure. Agents start runtimes and containers all day, which
 * drains a burstable (T-family) instance's CPU credits and then throttles it, so every
 * T type is refused.
 */

const INSTANCE_TYPE = /^([a-z]+)([0-9]*)([a-z0-9]*)(-[a-z0-9]+)?\.([a-z0-9-]+)$/;

export type Architecture = "x86_64" | "arm64";

export interface ParsedInstanceType {
  family: string;
  series: string;
  generation: number;
  attributes: string;
  size: string;
}

export function parseInstanceType(type: string): ParsedInstanceType | undefined {
  const match = INSTANCE_TYPE.exec(type);
  if (!match) return undefined;
  const [, series, generation, attributes, suffix = "", size] = match;
  return {
    family: `${series}${generation}${attributes}${suffix}`,
    series,
    generation: Number(generation || 0),
    attributes,
    size,
  };
}

/** t1, t2, t3, t3a, t4g and any later t generation. */
export function isBurstable(type: string): boolean {
  const parsed = parseInstanceType(type);
  return parsed?.series === "t" && parsed.generation > 0;
}

/** Graviton types carry a "g" among their attributes (c7g, m6gd, c7gn, is4gen); a1 is the first. */
export function architectureOf(type: string): Architecture {
  const parsed = parseInstanceType(type);
  if (!parsed) return "x86_64";
  return parsed.attributes.includes("g") || parsed.family === "a1" ? "arm64" : "x86_64";
}

/** A fixed-performance type of about the same size, for the error message. */
export function suggestFixedPerformance(type: string): string {
  const parsed = parseInstanceType(type);
  const size = parsed && /^(nano|micro|small|medium)$/.test(parsed.size) ? "large" : (parsed?.size ?? "large");
  return `${architectureOf(type) === "arm64" ? "m7g" : "m7i"}.${size}`;
}

/** Why a type is not allowed, or undefined when it is. */
export function instanceTypeProblem(type: string): string | undefined {
  if (!parseInstanceType(type))
    return `"${type}" is not an EC2 instance type (expected family.size, such as "c7i.large")`;
  if (isBurstable(type)) {
    return `"${type}" is a burstable (T-family) type, whose CPU is throttled once its credits run out; use a fixed-performance type such as "${suggestFixedPerformance(type)}"`;
  }
  return undefined;
}
