import { chmodSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";

/**
 * Removes a directory tree that code we do not trust has written, and never throws: a run
 * may have taken the write or search permission off its own directories (chmod 0500) so that
 * a plain recursive removal fails. As their owner we may give it back (directories only, and
 * never through a symbolic link), then remove again. Returns why it could not, if it could not.
 */
export function removeTree(dir: string): string | undefined {
  try {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  } catch {
    // Permissions taken away: restore them below and try once more.
  }
  const reopen = (at: string): void => {
    chmodSync(at, 0o700);
    for (const entry of readdirSync(at, { withFileTypes: true })) if (entry.isDirectory()) reopen(path.join(at, entry.name));
  };
  try {
    reopen(dir);
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
