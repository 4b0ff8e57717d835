// The identity of a checkpoint on disk: sha256 over config.json and, per weight file, its name, size
// and the sha256 of its whole content. Built graphs (onnx/build-cache.ts) and prefix snapshots on disk
// are named by it, so a fine-tune that changes any byte of any weight — including one that keeps the
// first and last MiB of every file — never reuses the old model's graph or snapshots.
//
// Hashing 15 GB of weights takes a minute, so each file's digest is remembered in a small JSON file
// (`<cacheDir>/weights-identity.json`) keyed by real path, size and mtime: a restart rehashes only a
// file that changed. The file is replaced atomically (temporary file + rename), so processes that
// share the cache folder never read half of it; one that loses a race only rehashes.
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

export const IDENTITY_CACHE_FILE = 'weights-identity.json';

/** Bytes read per call while hashing (the digest is streamed; memory stays at this). */
const READ_CHUNK_BYTES = 16 * 1024 * 1024;

interface CachedDigest {
  readonly bytes: number;
  readonly mtimeMs: number;
  readonly sha256: string;
}

type DigestCache = Record<string, CachedDigest>;

function readCache(path: string): DigestCache {
  try {
    const parsed: unknown = JSON.parse(readFileSync(path, 'utf8'));
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as DigestCache) : {};
  } catch {
    return {}; // absent or damaged: everything is hashed again
  }
}

/** sha256 (hex) of a whole file, read in chunks. */
export function fileSha256(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(n === buf.length ? buf : buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

export interface WeightsIdentityOptions {
  /** Folder of the digest cache; unset = hash every file every time. */
  readonly cacheDir?: string;
  /** Called once per file that is actually hashed (not found in the cache), for logs and tests. */
  readonly onHash?: (path: string, bytes: number) => void;
}

/**
 * Identity (hex sha256) of config.json plus the weight files, each by name, size and content digest.
 * File order matters (it is the shard order of the checkpoint).
 */
export function weightsIdentity(configPath: string, weightFiles: readonly string[], opts: WeightsIdentityOptions = {}): string {
  const cachePath = opts.cacheDir === undefined ? null : join(opts.cacheDir, IDENTITY_CACHE_FILE);
  const cache = cachePath === null ? {} : readCache(cachePath);
  let changed = false;
  const h = createHash('sha256');
  h.update(readFileSync(configPath));
  for (const file of weightFiles) {
    const real = realpathSync(file);
    const st = statSync(real);
    let entry = cache[real];
    if (entry === undefined || entry.bytes !== st.size || entry.mtimeMs !== st.mtimeMs) {
      opts.onHash?.(real, st.size);
      entry = { bytes: st.size, mtimeMs: st.mtimeMs, sha256: fileSha256(real) };
      cache[real] = entry;
      changed = true;
    }
    h.update(`\0${basename(file)}\0${st.size}\0${entry.sha256}`);
  }
  if (changed && cachePath !== null && opts.cacheDir !== undefined) {
    const tmp = `${cachePath}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
    try {
      mkdirSync(opts.cacheDir, { recursive: true });
      writeFileSync(tmp, JSON.stringify(cache, null, 1));
      renameSync(tmp, cachePath);
    } catch {
      rmSync(tmp, { force: true }); // a read-only cache folder only costs a rehash next time
    }
  }
  return h.digest('hex');
}
