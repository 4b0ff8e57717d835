// The package's root folder, found from a module's own URL: the nearest folder above it that holds a
// package.json. The same answer whether the module runs from src/ (TypeScript, through tsx or vitest)
// or from its compiled copy under .cache/js/<hash>/ (bin/spikeserve.js), which sits deeper.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The nearest folder above the file `moduleUrl` (a file: URL) that holds a package.json. */
export function packageRoot(moduleUrl: string): string {
  let dir = dirname(fileURLToPath(moduleUrl));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(moduleUrl)}`);
    dir = parent;
  }
}
