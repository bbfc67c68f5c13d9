import { chmodSync, readdirSync, rmSync } from "node:fs";

/**
 * Removes a directory tree that code we do not trust has written, and never throws: a run
 * may have taken the write or search permission off its own directories (chmod 0500), so a
 * first removal fails. As their owner we may give it back (directories only, never through a
 * symbolic link), and remove again. Returns why it could not, if it could not.
 */
export function removeTree(dir: string): string | undefined {
  const reopen = (at: string): void => {
    chmodSync(at, 0o700);
    for (const entry of readdirSync(at, { withFileTypes: true })) if (entry.isDirectory()) reopen(`${at}/${entry.name}`);
  };
  for (let attempt = 0; ; attempt++) {
    try {
      if (attempt) reopen(dir);
      return void rmSync(dir, { recursive: true, force: true });
    } catch (error) {
      if (attempt) return (error as Error).message;
    }
  }
}
