/**
 * A container image reference as the Docker registry's grammar defines it: an optional
 * registry host (and port), a lowercase repository path of at most 255 characters, an
 * optional tag and an optional digest. Anything else, in particular text that a command line
 * would read as an option ("--volume=/:/host"), is not one.
 */
const component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
const hostPart = "(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])";
const registry = `(?:${hostPart}(?:\\.${hostPart})*|\\[[0-9A-Fa-f:]+\\])(?::[0-9]+)?`;
const pattern = new RegExp(
  `^((?:${registry}/)?${component}(?:/${component})*)(?::\\w[\\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$`,
);

export const isImageReference = (text: unknown): text is string => typeof text === "string" && (pattern.exec(text)?.[1].length ?? 256) <= 255;
