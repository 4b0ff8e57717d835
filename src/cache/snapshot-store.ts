// SnapshotStore: prefix snapshots on disk (`--prefix-cache-dir`), so that they outlive their place in
// memory and the process: a restarted server resumes a long document from its snapshot instead of
// prefilling it again. CacheManager writes a snapshot here when memory evicts it, and all of them at
// shutdown. One file per snapshot, named by its key (the prefix-cache hash chain), in a
// folder per model build and page size (the caller names it), bounded by bytes, least recently used
// first out.
//
// File: "SPKSNAP1" | u32 header bytes | header JSON | padding to 4 bytes | float32 data:
//   the GLA states (stateLengths[i] floats each), then numPages KV pages of floatsPerPage each
//   (BlockPool's page layout). Writes go to a temporary file renamed into place, so a crash never
//   leaves half a snapshot; a file that does not match this model's layout is deleted on read.
//
// Writes are asynchronous (the step loop never waits for the disk). The scheduler reads asynchronously
// too (readAsync, started when a request is queued); read() is the synchronous form.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync } from 'node:fs';
import { readFile, rename, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const MAGIC = 'SPKSNAP1';
const SUFFIX = '.snap';

/** What every snapshot of this model has: floats per GLA state and per KV page. */
export interface SnapshotLayout {
  readonly stateLengths: readonly number[];
  readonly floatsPerPage: number;
}

export interface StoredSnapshot {
  readonly numTokens: number;
  /** Logical index of the first page. */
  readonly firstPage: number;
  readonly glaStates: readonly Float32Array[];
  /** numPages · floatsPerPage floats, page after page. */
  readonly pageData: Float32Array;
  readonly numPages: number;
}

interface Header {
  readonly numTokens: number;
  readonly firstPage: number;
  readonly numPages: number;
  readonly stateLengths: readonly number[];
  readonly floatsPerPage: number;
}

/** Prefix keys are base64 sha256 digests; file names use the URL-safe alphabet. */
const fileNameOf = (key: string): string => `${key.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')}${SUFFIX}`;

export class SnapshotStore {
  readonly dir: string;
  readonly maxBytes: number;
  private readonly layout: SnapshotLayout;
  /** file name → bytes, least recently used first. */
  private readonly files = new Map<string, number>();
  private totalBytes = 0;
  /** Writes not finished yet (a second write of the same key is skipped). */
  private readonly writing = new Set<string>();
  private readonly onError: (message: string) => void;

  /** Opens (creating it if needed) and indexes `dir`; trims it to `maxBytes`. */
  constructor(dir: string, maxBytes: number, layout: SnapshotLayout, onError: (message: string) => void = () => {}) {
    this.dir = dir;
    this.maxBytes = maxBytes;
    this.layout = layout;
    this.onError = onError;
    mkdirSync(dir, { recursive: true });
    const found: { name: string; bytes: number; used: number }[] = [];
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (!name.endsWith(SUFFIX)) {
        if (name.includes('.tmp-')) rmSync(path, { force: true }); // a write that never finished
        continue;
      }
      const st = statSync(path);
      found.push({ name, bytes: st.size, used: st.mtimeMs });
    }
    found.sort((a, b) => a.used - b.used);
    for (const f of found) this.add(f.name, f.bytes);
    this.trim();
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get size(): number {
    return this.files.size;
  }

  has(key: string): boolean {
    return this.files.has(fileNameOf(key));
  }

  /** Index of the longest key in `keys` (keys[i] ↔ (i+1)·P tokens) stored here, above `above`; −1 if none. */
  longest(keys: readonly string[], above = -1): number {
    for (let i = keys.length - 1; i > above; i--) if (this.files.has(fileNameOf(keys[i] as string))) return i;
    return -1;
  }

  /** Reads a snapshot and marks it recently used; null (and the file deleted) when it is unreadable or of another layout. */
  read(key: string): StoredSnapshot | null {
    const name = fileNameOf(key);
    if (!this.files.has(name)) return null;
    const path = join(this.dir, name);
    try {
      const snapshot = this.accept(name, readFileSync(path));
      const now = new Date();
      utimesSync(path, now, now);
      return snapshot;
    } catch (err) {
      return this.drop(name, err);
    }
  }

  /** read(), without blocking the thread: the scheduler starts it when a request is queued. */
  async readAsync(key: string): Promise<StoredSnapshot | null> {
    const name = fileNameOf(key);
    if (!this.files.has(name)) return null;
    const path = join(this.dir, name);
    try {
      const snapshot = this.accept(name, await readFile(path));
      const now = new Date();
      await utimes(path, now, now);
      return snapshot;
    } catch (err) {
      return this.drop(name, err);
    }
  }

  /** The snapshot in a file's bytes, marked most recently used; throws when it is not this model's. */
  private accept(name: string, buf: Buffer): StoredSnapshot {
    const snapshot = this.decode(buf);
    if (snapshot === null) throw new Error('its layout is not this model’s');
    const bytes = this.files.get(name);
    if (bytes !== undefined) {
      this.files.delete(name);
      this.files.set(name, bytes);
    }
    return snapshot;
  }

  /** A file that could not be read: reported and deleted. */
  private drop(name: string, err: unknown): null {
    this.onError(`prefix snapshot ${name} dropped: ${(err as Error).message}`);
    this.remove(name);
    return null;
  }

  /**
   * Writes a snapshot in the background (the arrays are copied first, so the caller may reuse its
   * memory at once). Resolves when the file is in place or the write failed (reported to onError).
   */
  write(key: string, numTokens: number, firstPage: number, glaStates: readonly Float32Array[], pageData: Float32Array): Promise<void> {
    const name = fileNameOf(key);
    if (this.files.has(name) || this.writing.has(name)) return Promise.resolve();
    const header: Header = {
      numTokens,
      firstPage,
      numPages: pageData.length / Math.max(1, this.layout.floatsPerPage),
      stateLengths: this.layout.stateLengths,
      floatsPerPage: this.layout.floatsPerPage,
    };
    const buf = this.encode(header, glaStates, pageData);
    if (buf.length > this.maxBytes) return Promise.resolve();
    this.writing.add(name);
    const tmp = join(this.dir, `${name}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`);
    return writeFile(tmp, buf)
      .then(() => rename(tmp, join(this.dir, name)))
      .then(() => {
        this.add(name, buf.length);
        this.trim();
      })
      .catch(async (err: unknown) => {
        this.onError(`prefix snapshot ${name} not written: ${(err as Error).message}`);
        await unlink(tmp).catch(() => {});
      })
      .finally(() => this.writing.delete(name));
  }

  private add(name: string, bytes: number): void {
    this.files.set(name, bytes);
    this.totalBytes += bytes;
  }

  private remove(name: string): void {
    const bytes = this.files.get(name);
    if (bytes === undefined) return;
    this.files.delete(name);
    this.totalBytes -= bytes;
    rmSync(join(this.dir, name), { force: true });
  }

  /** Deletes least recently used files until the folder is within maxBytes. */
  private trim(): void {
    for (const name of this.files.keys()) {
      if (this.totalBytes <= this.maxBytes) break;
      this.remove(name);
    }
  }

  private encode(header: Header, glaStates: readonly Float32Array[], pageData: Float32Array): Buffer {
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    const headBytes = MAGIC.length + 4 + json.length;
    const pad = (4 - (headBytes % 4)) % 4;
    const floats = glaStates.reduce((n, s) => n + s.length, 0) + pageData.length;
    const buf = Buffer.alloc(headBytes + pad + floats * 4);
    buf.write(MAGIC, 0, 'latin1');
    buf.writeUInt32LE(json.length, MAGIC.length);
    json.copy(buf, MAGIC.length + 4);
    const data = new Float32Array(buf.buffer, buf.byteOffset + headBytes + pad, floats);
    let at = 0;
    for (const s of glaStates) {
      data.set(s, at);
      at += s.length;
    }
    data.set(pageData, at);
    return buf;
  }

  private decode(buf: Buffer): StoredSnapshot | null {
    if (buf.length < MAGIC.length + 4 || buf.toString('latin1', 0, MAGIC.length) !== MAGIC) return null;
    const jsonBytes = buf.readUInt32LE(MAGIC.length);
    const headBytes = MAGIC.length + 4 + jsonBytes;
    const header = JSON.parse(buf.toString('utf8', MAGIC.length + 4, headBytes)) as Header;
    const { stateLengths, floatsPerPage } = this.layout;
    if (
      header.floatsPerPage !== floatsPerPage ||
      header.stateLengths.length !== stateLengths.length ||
      header.stateLengths.some((n, i) => n !== stateLengths[i])
    ) {
      return null;
    }
    const pad = (4 - (headBytes % 4)) % 4;
    const stateFloats = stateLengths.reduce((a, b) => a + b, 0);
    const floats = stateFloats + header.numPages * floatsPerPage;
    if (buf.length !== headBytes + pad + floats * 4) return null;
    // A copy: the Buffer may sit in Node's shared pool, at an offset not aligned for Float32Array.
    const data = new Float32Array(floats);
    new Uint8Array(data.buffer).set(buf.subarray(headBytes + pad));
    const glaStates: Float32Array[] = [];
    let at = 0;
    for (const n of stateLengths) {
      glaStates.push(data.subarray(at, at + n));
      at += n;
    }
    return { numTokens: header.numTokens, firstPage: header.firstPage, glaStates, pageData: data.subarray(at), numPages: header.numPages };
  }

  /** Waits for the writes in flight (tests, shutdown). */
  async flush(): Promise<void> {
    while (this.writing.size > 0) await new Promise((r) => setTimeout(r, 5));
  }

  /** For tests: is the file of `key` on disk? */
  fileExists(key: string): boolean {
    return existsSync(join(this.dir, fileNameOf(key)));
  }
}
