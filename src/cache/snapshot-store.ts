// SnapshotStore: prefix snapshots in a folder that many server processes share (`--prefix-cache-dir`,
// a ReadWriteMany volume in Kubernetes), so a long document read by one replica resumes on every other
// one. The store keeps no index of its own: a file's name is its prefix key (the hash chain of the
// token ids, prefix-cache.ts) inside a folder named by the model build (the caller names it), so any
// process finds a prefix by hashing its own prompt and listing the folder.
//
//   publication  encode (one copy of the arrays) → checksum in slices → temporary file (O_EXCL) →
//                fsync → rename over the final name → fsync of the folder. Readers see a whole file
//                or none; two writers of one key each rename a whole file (the last one stays).
//   reading      the header is checked first (model identity, page size, key, token count = the key's
//                prefix length, layout, size), then the whole file is read, its checksum verified and
//                the arrays handed out as views of the bytes read (snapshot-file.ts). A file deleted
//                under a reader, damaged, truncated, of another model or slower than the timeout is a
//                miss: logged, counted by reason, never thrown. Damaged files are deleted.
//   bound        least recently used out, by file mtime (a read touches its file): any process may
//                trim, after its own writes; they all enforce the same byte bound on the same folder.
//   stale        temporary files older than STALE_TMP_MS (a writer killed mid-write) are deleted.
//
// Everything here is asynchronous and off the step loop except encode's single copy; checksums are
// computed in slices of a few milliseconds (snapshot-file.ts).
import { mkdirSync } from 'node:fs';
import { access, open, readdir, rename, stat, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  decodeSnapshot,
  encodeSnapshot,
  expectedFileBytes,
  readSnapshotHeader,
  sealSnapshot,
  SNAPSHOT_FIXED_BYTES,
  SnapshotFileError,
  type PageGroupData,
  type SnapshotData,
  type SnapshotExpectation,
  type SnapshotHeader,
} from './snapshot-file.ts';

const SUFFIX = '.snap';
/** A temporary file this old belongs to a writer that died. */
const STALE_TMP_MS = 60 * 60 * 1000;
/** Bytes read per call while reading a file (a timeout is checked between calls). */
const READ_CHUNK_BYTES = 8 * 1024 * 1024;
/** Header JSON larger than this is not believed (a full-attention snapshot of 4M tokens lists ~400 KB of blocks). */
const MAX_HEADER_JSON_BYTES = 16 * 1024 * 1024;
/**
 * Publications running at once; the others wait (their bytes count in the write bound). Each holds
 * a libuv thread while the disk answers: a stuck volume must not take the whole thread pool.
 */
const MAX_PUBLISHING = 2;

/** Why a read found no usable snapshot (a metric label). */
export type ReadFailureReason = 'missing' | 'io' | 'timeout' | 'format' | 'checksum' | 'header' | 'truncated';
export const READ_FAILURE_REASONS: readonly ReadFailureReason[] = ['missing', 'io', 'timeout', 'format', 'checksum', 'header', 'truncated'];

/** Cumulative counters of this process's use of the store, and the folder's size at the last scan. */
export interface SnapshotStoreStats {
  /** Snapshots read and accepted. */
  readonly hits: number;
  readonly bytesRead: number;
  readonly readFailures: Readonly<Record<ReadFailureReason, number>>;
  /** Files published by this process. */
  readonly writes: number;
  readonly bytesWritten: number;
  readonly writeFailures: number;
  /** Writes not attempted: the snapshot was larger than the bound, or too many bytes were being written. */
  readonly writesSkipped: number;
  /** Files and bytes in the folder (every process's) at the last scan. */
  readonly diskFiles: number;
  readonly diskBytes: number;
}

export type WriteOutcome = 'written' | 'exists' | 'skipped' | 'failed';

/** One file as list() reports it. */
export interface StoredSnapshotInfo {
  readonly key: string;
  readonly numTokens: number;
  readonly bytes: number;
  /** mtime: the last write or read by any process (ms since the epoch). */
  readonly lastUsedMs: number;
}

export interface SnapshotStoreOptions {
  /** The folder of this model build and page size. */
  readonly dir: string;
  /** Byte bound of the folder, enforced by every process that writes to it. */
  readonly maxBytes: number;
  readonly expect: SnapshotExpectation;
  /** A read that takes longer is a miss. */
  readonly readTimeoutMs: number;
  /** Bound of the bytes of writes in flight (encoded, not yet on disk); more are skipped. */
  readonly maxWriteBytesInFlight: number;
  readonly log?: (message: string) => void;
  /** Called when a read or write ended (stats changed), e.g. to post them. */
  readonly onActivity?: () => void;
}

/** A read in progress: `result` settles at the timeout at the latest; `settled` when the bytes are let go. */
export interface SnapshotRead {
  readonly result: Promise<SnapshotData | null>;
  readonly settled: Promise<void>;
}

/** Prefix keys are base64 sha256 digests; ids and file names use the URL-safe alphabet without padding. */
export const snapshotIdOf = (key: string): string => key.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
/** The key of an id (inverse of snapshotIdOf for base64 digests). */
export function keyOfSnapshotId(id: string): string {
  const b64 = id.replace(/-/g, '+').replace(/_/g, '/');
  return b64 + '='.repeat((4 - (b64.length % 4)) % 4);
}
const fileNameOf = (key: string): string => `${snapshotIdOf(key)}${SUFFIX}`;

const errnoOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | null)?.code;

export class SnapshotStore {
  readonly dir: string;
  readonly maxBytes: number;
  readonly expect: SnapshotExpectation;
  private readonly opts: SnapshotStoreOptions;
  private readonly log: (message: string) => void;
  private readonly writes = new Set<Promise<unknown>>();
  private writeBytesInFlight = 0;
  private publishing = 0;
  private readonly publishQueue: (() => void)[] = [];
  /** One directory listing shared by the lookups that arrive while it runs. */
  private listing: Promise<Set<string>> | null = null;
  private trimming: Promise<void> | null = null;
  private trimAgain = false;
  private counters = {
    hits: 0,
    bytesRead: 0,
    writes: 0,
    bytesWritten: 0,
    writeFailures: 0,
    writesSkipped: 0,
    diskFiles: 0,
    diskBytes: 0,
  };
  private readonly failures: Record<ReadFailureReason, number> = { missing: 0, io: 0, timeout: 0, format: 0, checksum: 0, header: 0, truncated: 0 };

  /** Creates the folder if needed and starts a first scan (size, stale temporary files, the bound). */
  constructor(opts: SnapshotStoreOptions) {
    this.opts = opts;
    this.dir = opts.dir;
    this.maxBytes = opts.maxBytes;
    this.expect = opts.expect;
    this.log = opts.log ?? (() => {});
    mkdirSync(this.dir, { recursive: true });
    void this.trim();
  }

  stats(): SnapshotStoreStats {
    return { ...this.counters, readFailures: { ...this.failures } };
  }

  /** Index of the longest key in `keys` (keys[i] ↔ (i+1)·P tokens) with a file, above `above`; −1 if none. */
  async findLongest(keys: readonly string[], above = -1): Promise<number> {
    if (keys.length - 1 <= above) return -1;
    const names = await this.names();
    for (let i = keys.length - 1; i > above; i--) if (names.has(fileNameOf(keys[i]!))) return i;
    return -1;
  }

  /** Those of `keys` that have a file now (one directory listing). */
  async existing(keys: Iterable<string>): Promise<Set<string>> {
    const names = await this.names();
    const out = new Set<string>();
    for (const key of keys) if (names.has(fileNameOf(key))) out.add(key);
    return out;
  }

  private names(): Promise<Set<string>> {
    if (this.listing === null) {
      this.listing = readdir(this.dir)
        .then((names) => new Set(names), (err: unknown) => {
          this.log(`prefix snapshot folder ${this.dir} cannot be listed: ${(err as Error).message}`);
          return new Set<string>();
        })
        .finally(() => (this.listing = null));
    }
    return this.listing;
  }

  /**
   * Reads the snapshot of `key`, a prefix of `numTokens` tokens. `result` is null on any failure
   * (counted by reason and logged; a damaged file is deleted) or when the read outlasts the timeout.
   */
  read(key: string, numTokens: number): SnapshotRead {
    const state = { timedOut: false };
    const work = this.readFile(key, numTokens, state);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.opts.readTimeoutMs);
      timer.unref();
    });
    const name = fileNameOf(key);
    const result = Promise.race([work.then((data) => ({ data }), (error: unknown) => ({ error })), timeout]).then((r) => {
      clearTimeout(timer);
      if (r === 'timeout') {
        state.timedOut = true;
        this.fail('timeout', name, new Error(`not read within ${this.opts.readTimeoutMs} ms`));
        return null;
      }
      if ('error' in r) {
        this.onReadError(name, r.error);
        return null;
      }
      this.counters.hits++;
      this.counters.bytesRead += r.data.bytes;
      this.opts.onActivity?.();
      return r.data;
    });
    return { result, settled: work.then(() => undefined, () => undefined) };
  }

  private async readFile(key: string, numTokens: number, state: { timedOut: boolean }): Promise<SnapshotData> {
    const path = join(this.dir, fileNameOf(key));
    const fh = await open(path, 'r');
    let buf: Buffer;
    try {
      const { size } = await fh.stat();
      // The header first: another model's file or a lying token count is refused before GBs are read.
      const header = await readHeader(fh, size);
      checkHeader(header, this.expect, key, numTokens);
      const want = expectedFileBytes(this.expect, key, numTokens);
      if (size !== want) throw new SnapshotFileError(size < want ? 'truncated' : 'format', `the file has ${size} bytes, not ${want}`);
      // Its own ArrayBuffer: the payload is then 4-byte aligned and viewed in place (no copy).
      buf = Buffer.from(new ArrayBuffer(size));
      for (let at = 0; at < size; ) {
        if (state.timedOut) throw new Error('read abandoned after the timeout');
        const { bytesRead } = await fh.read(buf, at, Math.min(READ_CHUNK_BYTES, size - at), at);
        if (bytesRead === 0) throw new SnapshotFileError('truncated', `the file ended at ${at} of ${size} bytes`);
        at += bytesRead;
      }
    } finally {
      await fh.close();
    }
    const data = await decodeSnapshot(buf, this.expect, key, numTokens);
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined); // recency for the shared LRU bound
    return data;
  }

  private onReadError(name: string, err: unknown): void {
    if (err instanceof SnapshotFileError) {
      this.fail(err.reason, name, err);
      // A damaged or foreign file in this model's folder is of no use to anyone: remove it.
      void unlink(join(this.dir, name)).catch(() => undefined);
    } else if (errnoOf(err) === 'ENOENT') {
      this.fail('missing', name, err); // deleted (trimmed) under us
    } else {
      this.fail('io', name, err);
    }
  }

  private fail(reason: ReadFailureReason, name: string, err: unknown): void {
    this.failures[reason]++;
    this.log(`prefix snapshot ${name} not used (${reason}): ${(err as Error).message}`);
    this.opts.onActivity?.();
  }

  /**
   * Publishes a snapshot in the background. The arrays are copied once, now (the caller may reuse
   * their memory at once); everything else happens off this call. Resolves to what happened:
   * 'written', 'exists' (another process, or an earlier write, published it), 'skipped' (larger than
   * the bound, or too many bytes being written) or 'failed' (reported to the log).
   */
  write(key: string, numTokens: number, arrays: readonly Float32Array[], pageGroups: readonly PageGroupData[]): Promise<WriteOutcome> {
    let floats = arrays.reduce((n, a) => n + a.length, 0);
    for (const g of pageGroups) floats += g.blocks.reduce((n, b) => n + b.length, 0);
    if (floats * 4 > this.maxBytes || this.writeBytesInFlight + floats * 4 > this.opts.maxWriteBytesInFlight) {
      this.counters.writesSkipped++;
      return Promise.resolve('skipped');
    }
    const buf = encodeSnapshot({ modelIdentity: this.expect.modelIdentity, pageTokens: this.expect.pageTokens, numTokens, key }, arrays, pageGroups);
    this.writeBytesInFlight += buf.length;
    const p = this.publish(fileNameOf(key), buf).finally(() => {
      this.writeBytesInFlight -= buf.length;
      this.writes.delete(p);
      this.opts.onActivity?.();
    });
    this.writes.add(p);
    return p;
  }

  private async publish(name: string, buf: Buffer): Promise<WriteOutcome> {
    if (this.publishing >= MAX_PUBLISHING) await new Promise<void>((resolve) => this.publishQueue.push(resolve));
    this.publishing++;
    try {
      return await this.publishNow(name, buf);
    } finally {
      this.publishing--;
      this.publishQueue.shift()?.();
    }
  }

  private async publishNow(name: string, buf: Buffer): Promise<WriteOutcome> {
    const final = join(this.dir, name);
    if (await access(final).then(() => true, () => false)) return 'exists'; // another process (or an earlier spill) wrote it
    const tmp = join(this.dir, `.${name}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
    try {
      await sealSnapshot(buf);
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(buf);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, final);
      await this.syncDir();
    } catch (err) {
      this.counters.writeFailures++;
      this.log(`prefix snapshot ${name} not written: ${(err as Error).message}`);
      await unlink(tmp).catch(() => undefined);
      return 'failed';
    }
    this.counters.writes++;
    this.counters.bytesWritten += buf.length;
    void this.trim();
    return 'written';
  }

  /** Makes the rename durable (where the file system supports fsync of a directory). */
  private async syncDir(): Promise<void> {
    const dh = await open(this.dir, 'r').catch(() => null);
    if (dh === null) return;
    await dh.sync().catch(() => undefined);
    await dh.close();
  }

  /** Deletes the file of `key`; false when there was none. */
  async delete(key: string): Promise<boolean> {
    return unlink(join(this.dir, fileNameOf(key))).then(
      () => true,
      (err: unknown) => {
        if (errnoOf(err) !== 'ENOENT') this.log(`prefix snapshot ${fileNameOf(key)} not deleted: ${(err as Error).message}`);
        return false;
      },
    );
  }

  /** The `limit` most recently used files of this model (header read from each), newest first. */
  async list(limit: number): Promise<StoredSnapshotInfo[]> {
    const files = (await this.scan()).sort((a, b) => b.mtimeMs - a.mtimeMs);
    const out: StoredSnapshotInfo[] = [];
    for (const f of files) {
      if (out.length >= limit) break;
      const header = await this.headerOf(f.name);
      if (header === null || header.modelIdentity !== this.expect.modelIdentity) continue;
      out.push({ key: header.key, numTokens: header.numTokens, bytes: f.bytes, lastUsedMs: f.mtimeMs });
    }
    return out;
  }

  private async headerOf(name: string): Promise<SnapshotHeader | null> {
    try {
      const fh = await open(join(this.dir, name), 'r');
      try {
        return await readHeader(fh, (await fh.stat()).size);
      } finally {
        await fh.close();
      }
    } catch {
      return null;
    }
  }

  /** Snapshot files of the folder with size and mtime; removes stale temporary files on the way. */
  private async scan(): Promise<{ name: string; bytes: number; mtimeMs: number }[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const now = Date.now();
    const files: { name: string; bytes: number; mtimeMs: number }[] = [];
    await Promise.all(
      names.map(async (name) => {
        const st = await stat(join(this.dir, name)).catch(() => null);
        if (st === null) return; // deleted meanwhile
        if (name.endsWith(SUFFIX)) files.push({ name, bytes: st.size, mtimeMs: st.mtimeMs });
        else if (name.includes('.tmp-') && now - st.mtimeMs > STALE_TMP_MS) await unlink(join(this.dir, name)).catch(() => undefined);
      }),
    );
    return files;
  }

  /**
   * Deletes least recently used files until the folder is within maxBytes (every process's files:
   * they share the bound). One scan at a time; a request during a scan runs one more after it.
   */
  trim(): Promise<void> {
    if (this.trimming !== null) {
      this.trimAgain = true;
      return this.trimming;
    }
    this.trimming = (async () => {
      do {
        this.trimAgain = false;
        const files = (await this.scan()).sort((a, b) => a.mtimeMs - b.mtimeMs);
        let total = files.reduce((n, f) => n + f.bytes, 0);
        let count = files.length;
        for (const f of files) {
          if (total <= this.maxBytes) break;
          await unlink(join(this.dir, f.name)).catch(() => undefined);
          total -= f.bytes;
          count--;
        }
        this.counters.diskBytes = total;
        this.counters.diskFiles = count;
      } while (this.trimAgain);
    })().finally(() => {
      this.trimming = null;
      this.opts.onActivity?.();
    });
    return this.trimming;
  }

  /** Waits for the writes in flight and the scan they started (shutdown, tests). */
  async flush(): Promise<void> {
    while (this.writes.size > 0) await Promise.allSettled([...this.writes]);
    await this.trimming;
  }
}

/** The header of an open snapshot file: the fixed part, then exactly its JSON (snapshot-file.ts). */
async function readHeader(fh: FileHandle, size: number): Promise<SnapshotHeader> {
  const fixed = Buffer.alloc(Math.min(size, SNAPSHOT_FIXED_BYTES));
  await fh.read(fixed, 0, fixed.length, 0);
  const jsonBytes = fixed.length === SNAPSHOT_FIXED_BYTES ? fixed.readUInt32LE(8) : 0;
  if (jsonBytes > MAX_HEADER_JSON_BYTES) throw new SnapshotFileError('header', `a header of ${jsonBytes} bytes`);
  const head = Buffer.alloc(Math.min(size, SNAPSHOT_FIXED_BYTES + jsonBytes));
  await fh.read(head, 0, head.length, 0);
  return readSnapshotHeader(head);
}

/** Header checks that need no payload (snapshot-file.ts decodeSnapshot repeats them with the checksum). */
function checkHeader(header: SnapshotHeader, expect: SnapshotExpectation, key: string, numTokens: number): void {
  if (header.modelIdentity !== expect.modelIdentity) throw new SnapshotFileError('header', `written by another model (${header.modelIdentity.slice(0, 16)}…)`);
  if (header.pageTokens !== expect.pageTokens) throw new SnapshotFileError('header', `page size ${header.pageTokens}, not ${expect.pageTokens}`);
  if (header.key !== key) throw new SnapshotFileError('header', 'the header names another prefix key');
  if (header.numTokens !== numTokens) throw new SnapshotFileError('header', `the header says ${header.numTokens} tokens; its key names a prefix of ${numTokens}`);
}
