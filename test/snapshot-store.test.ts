// Prefix snapshots in a folder shared by many processes (src/cache/snapshot-store.ts, snapshot-file.ts,
// snapshot-reads.ts): the file round trip between two store instances (two replicas), every way a file
// can be unusable (flipped bytes, truncated, another model's, a header whose token count does not
// match its key, deleted under the reader, a read that hangs) — each a counted miss, never a throw —
// parallel writers of one key and a writer killed mid-write (only whole files), the shared LRU bound,
// one read per key within a budget, and CacheManager restoring, spilling and writing through.
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CacheManager, type AdmitRequest, type CacheSpec } from '../src/cache/cache-manager.ts';
import { prefixKeys } from '../src/cache/prefix-keys.ts';
import { encodeSnapshot, readSnapshotHeader, sealSnapshot, type SnapshotExpectation } from '../src/cache/snapshot-file.ts';
import { SnapshotReads } from '../src/cache/snapshot-reads.ts';
import { keyOfSnapshotId, snapshotIdOf, SnapshotStore, type SnapshotStoreOptions } from '../src/cache/snapshot-store.ts';
import { childExpectation, childKey } from './helpers/snapshot-fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'spikeserve-snapshots-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let dirNo = 0;
const freshDir = (): string => join(root, `d${dirNo++}`);

/** Two GLA states of 4 floats, one page group of 6-float pages; a snapshot of s tokens keeps pages [s/4 − 2, s/4). */
const EXPECT: SnapshotExpectation = {
  modelIdentity: 'model-a',
  pageTokens: 4,
  arrays: [4, 4],
  floatsPerPage: [6],
  pagesFor: (n) => [{ firstPage: Math.max(0, n / 4 - 2), numPages: Math.min(2, n / 4) }],
};
const ramp = (n: number, from: number): Float32Array => Float32Array.from({ length: n }, (_, i) => from + i / 8);
const KEY = childKey(1);
const fileOf = (dir: string, key: string): string => join(dir, `${snapshotIdOf(key)}.snap`);

function openStore(dir: string, over: Partial<SnapshotStoreOptions> = {}, log?: string[]): SnapshotStore {
  return new SnapshotStore({ dir, maxBytes: 1 << 20, expect: EXPECT, readTimeoutMs: 10_000, maxWriteBytesInFlight: 1 << 20, log: (m) => log?.push(m), ...over });
}

/** Writes the 8-token snapshot of KEY (states 1…, 2…; pages 0 and 1). */
async function writeSample(store: SnapshotStore, key = KEY, bias = 0): Promise<void> {
  expect(await store.write(key, 8, [ramp(4, 1 + bias), ramp(4, 2)], [{ firstPage: 0, blocks: [ramp(6, 3), ramp(6, 4)] }])).toBe('written');
}

describe('SnapshotStore', () => {
  it('publishes a whole file that another store on the folder (another replica) finds by key and reads back exactly', async () => {
    const dir = freshDir();
    const a = openStore(dir);
    await writeSample(a);
    expect(readdirSync(dir)).toEqual([`${snapshotIdOf(KEY)}.snap`]); // URL-safe name, no temporary file left
    expect(keyOfSnapshotId(snapshotIdOf(KEY))).toBe(KEY);
    const b = openStore(dir);
    const keys = [childKey(0), KEY, childKey(2)];
    expect(await b.findLongest(keys)).toBe(1);
    expect(await b.findLongest(keys, 1)).toBe(-1);
    const s = await b.read(KEY, 8).result;
    expect(s).not.toBeNull();
    expect({ numTokens: s?.numTokens, groups: s?.groups.length, firstPage: s?.groups[0]?.firstPage, blocks: s?.groups[0]?.blocks.length }).toEqual({ numTokens: 8, groups: 1, firstPage: 0, blocks: 2 });
    expect(Array.from(s?.arrays[1] ?? [])).toEqual(Array.from(ramp(4, 2)));
    expect(Array.from(s?.groups[0]?.blocks[1] ?? [])).toEqual(Array.from(ramp(6, 4)));
    expect(b.stats()).toMatchObject({ hits: 1, bytesRead: statSync(fileOf(dir, KEY)).size });
    expect(a.stats()).toMatchObject({ writes: 1, bytesWritten: statSync(fileOf(dir, KEY)).size });
    // A second write of the same key finds the file and does not write again.
    expect(await b.write(KEY, 8, [ramp(4, 1), ramp(4, 2)], [{ firstPage: 0, blocks: [ramp(6, 3), ramp(6, 4)] }])).toBe('exists');
  });

  it('holds any number of state arrays and page groups (a window pool and a full-attention pool), checked group by group', async () => {
    const dir = freshDir();
    const two: SnapshotExpectation = {
      modelIdentity: 'hybrid-2-groups',
      pageTokens: 4,
      arrays: [3, 5, 7], // e.g. a conv state, a recurrent state, another layer's state
      floatsPerPage: [6, 2],
      pagesFor: (n) => [
        { firstPage: Math.max(0, n / 4 - 2), numPages: Math.min(2, n / 4) }, // window
        { firstPage: 0, numPages: n / 4 }, // full attention
      ],
    };
    const store = openStore(dir, { expect: two });
    const window = [ramp(6, 10), ramp(6, 11)];
    const full = [0, 1, 2].map((i) => ramp(2, 20 + i));
    expect(await store.write(KEY, 12, [ramp(3, 1), ramp(5, 2), ramp(7, 3)], [{ firstPage: 1, blocks: window }, { firstPage: 0, blocks: full }])).toBe('written');
    const s = await store.read(KEY, 12).result;
    expect(s?.arrays.map((a) => a.length)).toEqual([3, 5, 7]);
    expect(s?.groups.map((g) => [g.firstPage, g.blocks.length])).toEqual([[1, 2], [0, 3]]);
    expect(Array.from(s?.groups[1]?.blocks[2] ?? [])).toEqual(Array.from(full[2]!));
    // The same bytes with the groups in the other order are another layout: a miss.
    const swapped = openStore(freshDir(), { expect: two });
    expect(await swapped.write(KEY, 12, [ramp(3, 1), ramp(5, 2), ramp(7, 3)], [{ firstPage: 0, blocks: full }, { firstPage: 1, blocks: window }])).toBe('written');
    expect(await swapped.read(KEY, 12).result).toBeNull();
    expect(swapped.stats().readFailures.header + swapped.stats().readFailures.format).toBe(1);
  });

  it('a full-attention snapshot of 20,000 pages (a header JSON of > 100 KB) round-trips and lists', async () => {
    const dir = freshDir();
    const expect20k: SnapshotExpectation = { modelIdentity: 'full', pageTokens: 4, arrays: [], floatsPerPage: [2], pagesFor: (n) => [{ firstPage: 0, numPages: n / 4 }] };
    const store = openStore(dir, { expect: expect20k });
    const blocks = Array.from({ length: 20_000 }, (_, i) => Float32Array.of(i, -i));
    expect(await store.write(KEY, 80_000, [], [{ firstPage: 0, blocks }])).toBe('written');
    const s = await store.read(KEY, 80_000).result;
    expect(s?.groups[0]?.blocks.length).toBe(20_000);
    expect(Array.from(s?.groups[0]?.blocks[19_999] ?? [])).toEqual([19_999, -19_999]);
    expect((await store.list(5)).map((e) => e.numTokens)).toEqual([80_000]);
  });

  /** A fresh folder with one sample file, a store that reads it, and the file's bytes. */
  async function damaged(edit: (path: string) => void | Promise<void>): Promise<{ store: SnapshotStore; log: string[]; path: string }> {
    const dir = freshDir();
    await writeSample(openStore(dir));
    const path = fileOf(dir, KEY);
    await edit(path);
    const log: string[] = [];
    return { store: openStore(dir, {}, log), log, path };
  }

  function flipBytes(path: string, at: number, count: number): void {
    const buf = readFileSync(path);
    for (let i = at; i < at + count; i++) buf[i] = (buf[i] ?? 0) ^ 0x5a;
    writeFileSync(path, buf);
  }

  /** Re-encodes a file with some header fields changed and a valid checksum (a file that lies). */
  async function rewriteHeader(path: string, patch: { modelIdentity?: string; numTokens?: number; firstPage?: number }): Promise<void> {
    const buf = readFileSync(path);
    const h = readSnapshotHeader(buf);
    const payload = new Float32Array(buf.buffer.slice(buf.byteOffset + buf.readUInt32LE(12), buf.byteOffset + buf.length));
    let at = 0;
    const take = (n: number): Float32Array => payload.subarray(at, (at += n));
    const arrays = h.layout.arrays.map(take);
    const blocks = h.layout.blocks.map(take);
    let b = 0;
    const groups = h.groups.map((g) => ({ firstPage: patch.firstPage ?? g.firstPage, blocks: blocks.slice(b, (b += g.numPages)) }));
    const out = encodeSnapshot({ modelIdentity: patch.modelIdentity ?? h.modelIdentity, pageTokens: h.pageTokens, numTokens: patch.numTokens ?? h.numTokens, key: h.key }, arrays, groups);
    await sealSnapshot(out);
    writeFileSync(path, out);
  }

  it.each([
    ['flipped payload bytes', 'checksum', (p: string) => flipBytes(p, statSync(p).size - 30, 8)],
    ['a flipped header byte', 'header', (p: string) => flipBytes(p, 60, 1)], // the header is checked before the payload is read
    ['truncated to half', 'truncated', (p: string) => truncateSync(p, Math.floor(statSync(p).size / 2))],
    ['another model’s file', 'header', (p: string) => rewriteHeader(p, { modelIdentity: 'model-b' })],
    ['a header whose token count does not match its key', 'header', (p: string) => rewriteHeader(p, { numTokens: 12, firstPage: 1 })],
    ['not a snapshot at all', 'format', (p: string) => writeFileSync(p, 'hello')],
  ])('%s: a miss, counted and logged, never thrown; the file is deleted', async (_name, reason, edit) => {
    const { store, log, path } = await damaged(edit);
    expect(await store.read(KEY, 8).result).toBeNull();
    expect(store.stats().readFailures[reason as 'checksum']).toBe(1);
    expect(store.stats().hits).toBe(0);
    expect(log.join('\n')).toContain(`(${reason})`);
    await new Promise((r) => setTimeout(r, 50)); // the delete is in the background
    expect(() => statSync(path)).toThrow();
  });

  it('a file deleted under a reader, and a read that hangs past the timeout, are misses too', async () => {
    const dir = freshDir();
    const log: string[] = [];
    const store = openStore(dir, { readTimeoutMs: 300 }, log);
    await writeSample(store);
    expect(await store.findLongest([KEY])).toBe(0);
    rmSync(fileOf(dir, KEY)); // another replica trimmed it between the lookup and the read
    expect(await store.read(KEY, 8).result).toBeNull();
    expect(store.stats().readFailures.missing).toBe(1);
    // A FIFO with no writer: opening it blocks, as a hung network volume would.
    const fifo = fileOf(dir, childKey(7));
    execFileSync('mkfifo', [fifo]);
    const read = store.read(childKey(7), 8);
    expect(await read.result).toBeNull();
    expect(store.stats().readFailures.timeout).toBe(1);
    expect(log.join('\n')).toMatch(/\(timeout\): not read within 300 ms/);
    closeSync(openSync(fifo, 'w')); // let the blocked open go (it then reads nothing)
    await read.settled;
  });

  it('at most two reads wait on a stuck volume at once: a third request is a miss at once', async () => {
    const dir = freshDir();
    const store = openStore(dir, { readTimeoutMs: 200 });
    const reads = new SnapshotReads(store, 1 << 30);
    const fifos = [20, 21, 22].map((n) => {
      const path = fileOf(dir, childKey(n));
      execFileSync('mkfifo', [path]);
      return path;
    });
    const [a, b] = await Promise.all([reads.prefetch([childKey(0), childKey(20)], -1), reads.prefetch([childKey(0), childKey(21)], -1)]);
    expect([a?.snapshot, b?.snapshot]).toEqual([null, null]); // timed out; their threads still wait
    expect(await reads.prefetch([childKey(0), childKey(22)], -1)).toBeNull();
    expect(reads.skippedForBudget).toBe(1);
    expect(store.stats().readFailures.timeout).toBe(2);
    a?.release();
    b?.release();
    for (const f of fifos.slice(0, 2)) closeSync(openSync(f, 'w')); // the stuck opens return (the third was never opened)
    for (let i = 0; i < 200 && reads.bytes > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(reads.bytes).toBe(0);
  });

  it('parallel writers of one key leave one whole, valid file and no temporary files', async () => {
    const dir = freshDir();
    const writers = Array.from({ length: 6 }, () => openStore(dir));
    // Every writer passes the existence check before any renames: all six race to publish.
    const outcomes = await Promise.all(writers.map((w, i) => w.write(KEY, 8, [ramp(4, 100 * i), ramp(4, 2)], [{ firstPage: 0, blocks: [ramp(6, 3), ramp(6, 4)] }])));
    expect(outcomes.filter((o) => o === 'written').length).toBeGreaterThanOrEqual(1);
    expect(outcomes.every((o) => o === 'written' || o === 'exists')).toBe(true);
    expect(readdirSync(dir)).toEqual([`${snapshotIdOf(KEY)}.snap`]);
    const s = await openStore(dir).read(KEY, 8).result;
    const first = s?.arrays[0]?.[0] ?? -1;
    expect([0, 100, 200, 300, 400, 500]).toContain(first);
    expect(Array.from(s?.arrays[0] ?? [])).toEqual(Array.from(ramp(4, first))); // one writer's file, whole
  });

  it('a writer killed (SIGKILL) in the middle of writing leaves only whole, valid snapshot files', async () => {
    const dir = freshDir();
    mkdirSync(dir);
    const floats = 8 * 1024 * 1024; // 32 MiB per file: the kill lands in a write
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./helpers/snapshot-writer-child.ts', import.meta.url)), dir, String(floats)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if ((out.match(/wrote/g) ?? []).length >= 2) resolve(); // two published; the third is being written
      });
      child.on('exit', (code) => reject(new Error(`writer exited early (${code})`)));
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const names = readdirSync(dir);
    const snaps = names.filter((n) => n.endsWith('.snap'));
    expect(snaps.length).toBeGreaterThanOrEqual(2);
    const store = new SnapshotStore({ dir, maxBytes: 2 ** 40, expect: childExpectation(floats), readTimeoutMs: 60_000, maxWriteBytesInFlight: 1 });
    for (let n = 0; n < snaps.length + 2; n++) {
      if (!snaps.includes(`${snapshotIdOf(childKey(n))}.snap`)) continue;
      const s = await store.read(childKey(n), 64).result;
      expect(s, `file ${n}`).not.toBeNull();
      expect(s?.arrays[0]?.[0]).toBe(n);
    }
    // Whatever the kill left is a temporary file, never read as a snapshot and removed once stale.
    const leftovers = names.filter((n) => !n.endsWith('.snap'));
    expect(leftovers.every((n) => n.includes('.tmp-'))).toBe(true);
    for (const n of leftovers) utimesSync(join(dir, n), new Date(Date.now() - 2 * 3600_000), new Date(Date.now() - 2 * 3600_000));
    await store.trim();
    expect(readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  }, 60_000);

  it('every replica enforces the byte bound on the shared folder: least recently used (by any of them) out', async () => {
    const dir = freshDir();
    const a = openStore(dir);
    await writeSample(a, childKey(10));
    const fileBytes = statSync(fileOf(dir, childKey(10))).size;
    await writeSample(a, childKey(11));
    const old = (s: number): Date => new Date(Date.now() - s * 1000);
    utimesSync(fileOf(dir, childKey(10)), old(30), old(30));
    utimesSync(fileOf(dir, childKey(11)), old(20), old(20));
    const b = openStore(dir, { maxBytes: 2 * fileBytes });
    expect(await b.read(childKey(10), 8).result).not.toBeNull(); // a read is a use: 10 is now the newest
    await writeSample(b, childKey(12));
    await b.flush();
    expect(readdirSync(dir).sort()).toEqual([fileOf(dir, childKey(10)), fileOf(dir, childKey(12))].map((p) => p.slice(dir.length + 1)).sort());
    expect(b.stats()).toMatchObject({ diskFiles: 2, diskBytes: 2 * fileBytes });
    utimesSync(fileOf(dir, childKey(10)), old(5), old(5)); // (a read and a write within one millisecond tie)
    const listed = await a.list(10);
    expect(listed.map((e) => e.key)).toEqual([childKey(12), childKey(10)]);
    expect(listed[0]).toMatchObject({ numTokens: 8, bytes: fileBytes });
    expect(await a.delete(childKey(12))).toBe(true);
    expect(await a.delete(childKey(12))).toBe(false);
  });

  it('one read per key, shared by the requests waiting for it, within a budget', async () => {
    const dir = freshDir();
    const store = openStore(dir);
    await writeSample(store);
    const fileBytes = statSync(fileOf(dir, KEY)).size;
    const reads = new SnapshotReads(store, fileBytes);
    const keys = [childKey(0), KEY];
    const [x, y] = await Promise.all([reads.prefetch(keys, -1), reads.prefetch(keys, -1)]);
    expect(x?.snapshot).not.toBeNull();
    expect(y?.snapshot).toBe(x?.snapshot); // the same bytes
    expect(store.stats().hits).toBe(1); // read once
    expect(reads.bytes).toBe(fileBytes);
    // The budget is taken: another key is not read (a miss), until the holders let go.
    await writeSample(store, childKey(5));
    expect(await reads.prefetch([childKey(0), childKey(5)], -1)).toBeNull();
    expect(reads.skippedForBudget).toBe(1);
    x?.release();
    x?.release(); // idempotent
    expect(reads.bytes).toBe(fileBytes);
    y?.release();
    expect(reads.bytes).toBe(0);
    const z = await reads.prefetch([childKey(0), childKey(5)], -1); // keys[1] ↔ 8 tokens
    expect(z?.snapshot?.numTokens).toBe(8);
    z?.release();
    expect(await reads.prefetch(keys, 1)).toBeNull(); // nothing longer than index 1
  });
});

describe('CacheManager with a snapshot folder', () => {
  const spec: CacheSpec = { stateFloats: [4], kvGroups: [{ kind: 'window', numLayers: 1, numKvHeads: 1, headDim: 2, windowTokens: 8 }] };
  const P = 4;
  const folder = (dir: string, shareMinTokens = Infinity): { snapshotFolder: { dir: string; maxBytes: number; modelIdentity: string; shareMinTokens: number; readTimeoutMs: number } } => ({
    snapshotFolder: { dir, maxBytes: 1 << 20, modelIdentity: 'tiny', shareMinTokens, readTimeoutMs: 10_000 },
  });
  const manager = (dir: string, over: { kvPages?: number; maxNumSeqs?: number; prefixCacheBytes?: number; shareMinTokens?: number } = {}): CacheManager =>
    new CacheManager(spec, {
      kvPages: over.kvPages ?? 20,
      pageTokens: P,
      maxNumSeqs: over.maxNumSeqs ?? 2,
      maxChunkTokens: P,
      prefixCacheBytes: over.prefixCacheBytes ?? 1 << 20,
      ...folder(dir, over.shareMinTokens),
    });

  const admitDoc = (keys: string[], tokens: number[], prefetched: AdmitRequest['prefetched'] = null): AdmitRequest => ({
    totalTokens: tokens.length + 1,
    firstChunkTokens: P,
    prefix: { keys, tokens, maxTokens: tokens.length - 1 },
    prefetched,
  });

  /** Runs a prompt through a cache (snapshots at page boundaries), writing recognisable KV and states. */
  async function fill(cache: CacheManager, id: string, tokens: number[]): Promise<number> {
    const keys = prefixKeys(tokens, P);
    const prefetched = await (cache.prefetchDiskPrefix(keys) ?? null);
    let next = cache.admit(id, admitDoc(keys, tokens, prefetched)) ?? -1;
    prefetched?.release();
    const restored = next;
    while (next < tokens.length) {
      const n = Math.min(P, tokens.length - next);
      cache.append(id, next, n);
      const table = cache.tableOf(id);
      for (let p = next; p < next + n; p++) {
        const page = table?.pages[Math.floor(p / P) - (table?.firstPage ?? 0)] ?? -1;
        cache.groups[0]!.pool.pageView(page).fill(p + 0.5, (p % P) * 2, (p % P) * 2 + 2); // keys of position p
      }
      next += n;
      cache.slots.state(0, cache.slotOf(id)).fill(next * 10);
      if (next % P === 0 && next <= keys.length * P) cache.snapshot(id, keys[next / P - 1]!, next);
    }
    return restored;
  }

  const doc = Array.from({ length: 21 }, (_, i) => i + 1);

  it('another CacheManager on the folder restores the longest prefix: same state, same window', async () => {
    const dir = freshDir();
    const first = manager(dir);
    expect(await fill(first, 'a', doc)).toBe(0);
    const firstTable = first.tableOf('a');
    // The snapshot at 20 holds the window before position 20: positions 12…19, logical pages 3 and 4.
    const expectedPages = [3, 4].map((l) => Array.from(first.groups[0]!.pool.pageView(firstTable?.pages[l - (firstTable?.firstPage ?? 0)] ?? -1)));
    first.free('a');
    expect(readdirSync(first.store?.dir ?? '')).toEqual([]); // below shareMinTokens: nothing written through
    await first.persistSnapshots(); // shutdown writes them all
    expect(readdirSync(first.store?.dir ?? '')).toHaveLength(5); // boundaries 4, 8, 12, 16, 20

    const second = manager(dir);
    expect(second.prefix?.size).toBe(0);
    const keys = prefixKeys(doc, P);
    const prefetched = await second.prefetchDiskPrefix(keys);
    expect(prefetched?.key).toBe(keys[4]);
    expect(second.admit('b', admitDoc(keys, doc, prefetched))).toBe(20);
    prefetched?.release();
    expect(Array.from(second.slots.state(0, second.slotOf('b')))).toEqual([200, 200, 200, 200]);
    const table = second.tableOf('b');
    expect(table?.firstPage).toBe(3);
    expect(table?.pages.map((p) => Array.from(second.groups[0]!.pool.pageView(p)))).toEqual(expectedPages);
    second.free('b');
    expect(second.prefix?.size).toBe(1); // the restored snapshot
    expect(second.usage().pagesUsed).toBe(0);
    expect(second.diskStats()).toMatchObject({ hits: 1, readBufferBytes: 0 });
    const listed = await second.listSnapshots(10);
    expect(listed.length).toBe(5);
    expect(listed.find((e) => e.numTokens === 20)).toMatchObject({ inMemory: true, onDisk: true, hits: 1 });
    expect(listed.filter((e) => !e.inMemory)).toHaveLength(4);
  });

  it('writes snapshots of at least shareMinTokens through at once, and spills the rest when memory evicts them', async () => {
    const dir = freshDir();
    // Room for two snapshots of 1 state (4 floats) + up to 3 pages in memory: the older ones are evicted, and written.
    const snapshotBytes = 4 * 4 + 3 * 16 * 4;
    const cache = manager(dir, { prefixCacheBytes: 2 * snapshotBytes, shareMinTokens: 16 });
    await fill(cache, 'a', doc);
    cache.free('a');
    await cache.store?.flush();
    const keys = prefixKeys(doc, P);
    const onDisk = new Set(readdirSync(cache.store?.dir ?? ''));
    const file = (k: string): string => `${snapshotIdOf(k)}.snap`;
    // 16 and 20 were written through (and are still in memory); 4, 8, 12 spilled on eviction.
    expect(keys.map((k) => onDisk.has(file(k)))).toEqual([true, true, true, true, true]);
    expect(keys.map((k) => cache.prefix?.has(k))).toEqual([false, false, false, true, true]);
    expect(cache.diskStats()?.writes).toBe(5);
    const deleted = await cache.deleteSnapshot(keys[4]!);
    expect(deleted).toEqual({ memory: true, disk: true });
    expect(cache.prefix?.has(keys[4]!)).toBe(false);
    expect(await cache.deleteSnapshot(keys[4]!)).toEqual({ memory: false, disk: false });
  });

  it('without a folder, lists and deletes the memory snapshots, with their hits', async () => {
    const cache = new CacheManager(spec, { kvPages: 20, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: P, prefixCacheBytes: 1 << 20 });
    expect(cache.store).toBeNull();
    await fill(cache, 'a', doc);
    cache.free('a');
    await fill(cache, 'b', doc);
    cache.free('b');
    const listed = await cache.listSnapshots(10);
    expect(listed.map((e) => e.numTokens).sort((x, y) => x - y)).toEqual([4, 8, 12, 16, 20]);
    expect(listed.find((e) => e.numTokens === 20)).toMatchObject({ inMemory: true, onDisk: false, hits: 1 });
    expect(listed[0]?.lastUsedMs).toBeGreaterThan(0);
    expect(await cache.deleteSnapshot(listed[0]!.key)).toEqual({ memory: true, disk: false });
    expect(cache.diskStats()).toBeNull();
  });

  it('skips the disk when the pages do not fit beside the reservations (admits from scratch)', async () => {
    const dir = freshDir();
    const big = manager(dir, { shareMinTokens: 0 });
    await fill(big, 'a', doc);
    big.free('a');
    await big.store?.flush();
    // 4 pages: one sequence's reservation (⌈(8+4)/4⌉+1 = 4) leaves no room for a restored window.
    const small = manager(dir, { kvPages: 4, maxNumSeqs: 1 });
    expect(await fill(small, 'b', doc.slice(0, 10))).toBe(0);
    small.free('b');
    expect(small.usage().pagesUsed).toBe(0);
    expect(small.groups[0]!.pool.numFree).toBe(4);
  });
});
