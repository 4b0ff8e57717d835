#!/usr/bin/env node
// Entry point of the `spikeserve` command (and of `npm start`): runs the CLI from the JavaScript copy
// of src/ that ./compile.js keeps under .cache/js/ (compiled on the first start after a change, in
// about a second; reused after that). Where that copy is missing and cannot be written (a read-only
// install whose sources changed), it runs the TypeScript through tsx's loader instead, at ~90 MiB
// more resident memory, and says so.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PACKAGE_ROOT, compile, compiledDir } from './compile.js';

const READ_ONLY = new Set(['EACCES', 'EPERM', 'EROFS']);

let entry;
const dir = compiledDir();
try {
  await compile(dir);
  entry = join(dir, 'main', 'cli.js');
} catch (err) {
  if (!READ_ONLY.has(err?.code)) throw err;
  process.stderr.write(`spikeserve: cannot write ${dir} (${err.code}); running the TypeScript sources through tsx\n`);
  const { register } = await import('tsx/esm/api');
  register();
  entry = join(PACKAGE_ROOT, 'src', 'main', 'cli.ts');
}
await import(pathToFileURL(entry).href);
