// A container image reference as registries and runtimes parse it (the distribution reference
// grammar): [host[:port]/]path[:tag][@digest]. The host may have capitals, the path may not,
// the tag may (letters, digits, _ . -, at most 128). A lower-case first part without a dot or
// port is read as a path by runtimes, and is a valid path component too, so one regex serves.
// Anything else, in particular text a command line would read as an option ("--volume=/:/host"),
// is not one.
const HOST_PART = String.raw`[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?`;
const IMAGE_HOST = String.raw`(?:${HOST_PART}(?:\.${HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?`;
const PATH_PART = String.raw`[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`;
const TAG = String.raw`(?::[\w][\w.-]{0,127})?`;
const DIGEST = String.raw`(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?`;
/** The name (host and path) is the first group: at most 255 characters. */
export const IMAGE_REFERENCE = new RegExp(`^((?:${IMAGE_HOST}/)?${PATH_PART}(?:/${PATH_PART})*)${TAG}${DIGEST}$`);

export const isImageReference = (text: unknown): text is string =>
  typeof text === "string" && (IMAGE_REFERENCE.exec(text)?.[1].length ?? 256) <= 255;
