// Starting a worker thread whose entry module is TypeScript (the engine's inference worker, the
// tokenizer worker). Node 20 does not apply `--import tsx` hooks (from execArgv) to a worker's entry
// module, so the worker is a tiny bootstrap that registers tsx's loader in its own thread first and
// then imports the entry. Works under `node --import tsx` and inside vitest; from the compiled copy
// (bin/spikeserve.js) the worker starts from the compiled entry directly.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Resolved once, when this module loads: under `--import tsx` a resolve waits synchronously for the
 * loader's hooks thread (~0.1-0.3 s on a loaded machine), which must not happen on the HTTP thread
 * when a worker is first started to serve a request. Compiled to JavaScript (bin/spikeserve.js runs
 * the server from .cache/js/), this module is a .js file and needs no tsx.
 */
const TSX_API_URL = import.meta.url.endsWith('.ts') ? tsxApiUrl() : null;

/**
 * Starts `entry` (a file: URL of a .ts module) in a new worker thread. From the compiled copy the
 * entry beside this module is a .js file: that one starts as it is, without tsx.
 */
export function spawnTsWorker(entry: URL, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  if (TSX_API_URL === null) return new Worker(new URL(entry.href.replace(/\.ts$/, '.js')), options);
  const bootstrap =
    `import(${JSON.stringify(TSX_API_URL)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(entry.href)}); })` +
    `.catch((err) => { setImmediate(() => { throw err; }); });`;
  return new Worker(bootstrap, { ...options, eval: true });
}

/** file: URL of tsx's ESM API (its `register()` installs the TypeScript loader in the calling thread). */
function tsxApiUrl(): string {
  try {
    return import.meta.resolve('tsx/esm/api');
  } catch {
    // Runtimes without import.meta.resolve: the package's CommonJS entry sits next to the ESM one.
    return pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs')).href;
  }
}
