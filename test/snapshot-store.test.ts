// Prefix snapshots on disk (src/cache/snapshot-store.ts): the file round trip, the byte bound (least
// recently used out, a read counts as a use), damaged and foreign files, a "restart" of CacheManager
// over the same folder that restores exactly what was stored, and the Engine resuming a prompt from
// disk after a real shutdown and start.
import { mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CacheManager, type AdmitRequest, type CacheSpec } from '../src/cache/cache-manager.ts';
import { prefixKeys } from '../src/cache/prefix-keys.ts';
import { SnapshotStore } from '../src/cache/snapshot-store.ts';
import { Engine } from '../src/engine/engine.ts';
import type { GenerateRequest, TokenEvent } from '../src/engine/types.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';
import { greedy } from './helpers/sampling.ts';

const root = mkdtempSync(join(tmpdir(), 'spikeserve-snapshots-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let dirNo = 0;
const freshDir = (): string => join(root, `d${dirNo++}`);

const LAYOUT = { stateLengths: [4, 4], floatsPerPage: 6 };
const ramp = (n: number, from: number): Float32Array => Float32Array.from({ length: n }, (_, i) => from + i / 8);

describe('SnapshotStore', () => {
  it('writes a snapshot and reads back the same numbers, also from a new instance (restart)', async () => {
    const dir = freshDir();
    const errors: string[] = [];
    const a = new SnapshotStore(dir, 1 << 20, LAYOUT, (m) => errors.push(m));
    await a.write('k+/1=', 64, 3, [ramp(4, 1), ramp(4, 2)], ramp(12, 3));
    expect(a.has('k+/1=')).toBe(true);
    expect(readdirSync(dir)).toEqual(['k-_1.snap']); // URL-safe name, no temporary files left
    const b = new SnapshotStore(dir, 1 << 20, LAYOUT);
    expect(b.size).toBe(1);
    const s = b.read('k+/1=');
    expect(s).not.toBeNull();
    expect({ numTokens: s?.numTokens, firstPage: s?.firstPage, numPages: s?.numPages }).toEqual({ numTokens: 64, firstPage: 3, numPages: 2 });
    expect(Array.from(s?.glaStates[1] ?? [])).toEqual(Array.from(ramp(4, 2)));
    expect(Array.from(s?.pageData ?? [])).toEqual(Array.from(ramp(12, 3)));
    expect(errors).toEqual([]);
  });

  it('readAsync gives what read gives, and drops a damaged file', async () => {
    const dir = freshDir();
    const errors: string[] = [];
    const store = new SnapshotStore(dir, 1 << 20, LAYOUT, (m) => errors.push(m));
    await store.write('k', 8, 1, [ramp(4, 1), ramp(4, 2)], ramp(6, 3));
    const a = await store.readAsync('k');
    const b = store.read('k');
    expect(a).not.toBeNull();
    expect({ ...a, glaStates: a?.glaStates.map((s) => Array.from(s)), pageData: Array.from(a?.pageData ?? []) }).toEqual({
      ...b,
      glaStates: b?.glaStates.map((s) => Array.from(s)),
      pageData: Array.from(b?.pageData ?? []),
    });
    expect(await store.readAsync('missing')).toBeNull();
    truncateSync(join(dir, 'k.snap'), 20);
    expect(await store.readAsync('k')).toBeNull();
    expect(store.has('k')).toBe(false);
    expect(errors).toHaveLength(1);
  });

  it('keeps within its byte bound, dropping the least recently used (a read is a use)', async () => {
    const dir = freshDir();
    const probe = new SnapshotStore(join(dir, 'probe'), 1 << 20, LAYOUT);
    await probe.write('x', 1, 0, [ramp(4, 0), ramp(4, 0)], ramp(6, 0));
    const fileBytes = probe.bytes;
    const store = new SnapshotStore(join(dir, 'bounded'), 2 * fileBytes, LAYOUT);
    for (const key of ['a', 'b']) await store.write(key, 1, 0, [ramp(4, 0), ramp(4, 0)], ramp(6, 0));
    expect(store.read('a')).not.toBeNull(); // a is now more recent than b
    await store.write('c', 1, 0, [ramp(4, 0), ramp(4, 0)], ramp(6, 0));
    expect([store.has('a'), store.has('b'), store.has('c')]).toEqual([true, false, true]);
    expect(store.fileExists('b')).toBe(false);
    expect(store.bytes).toBe(2 * fileBytes);
  });

  it('drops a truncated file or one of another model layout, and reports it', async () => {
    const dir = freshDir();
    const errors: string[] = [];
    const store = new SnapshotStore(dir, 1 << 20, LAYOUT, (m) => errors.push(m));
    await store.write('cut', 1, 0, [ramp(4, 0), ramp(4, 0)], ramp(6, 0));
    truncateSync(join(dir, 'cut.snap'), 40);
    expect(store.read('cut')).toBeNull();
    expect(store.fileExists('cut')).toBe(false);
    await store.write('other', 1, 0, [ramp(4, 0), ramp(4, 0)], ramp(6, 0));
    const foreign = new SnapshotStore(dir, 1 << 20, { stateLengths: [4], floatsPerPage: 6 }, (m) => errors.push(m));
    expect(foreign.read('other')).toBeNull();
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/prefix snapshot cut\.snap dropped/);
    // A leftover temporary file from a crash is removed when the folder is opened.
    writeFileSync(join(dir, 'z.snap.tmp-1-abc'), 'partial');
    new SnapshotStore(dir, 1 << 20, LAYOUT);
    expect(readdirSync(dir).some((f) => f.includes('.tmp-'))).toBe(false);
  });
});

describe('CacheManager with a SnapshotStore', () => {
  const spec: CacheSpec = { stateFloats: [4], kvGroups: [{ kind: 'window', numLayers: 1, numKvHeads: 1, headDim: 2, windowTokens: 8 }] };
  const P = 4;
  const layout = { stateLengths: [1 * 2 * 2], floatsPerPage: 1 * 2 * 1 * P * 2 };

  const admitDoc = (keys: string[], tokens: number[]): AdmitRequest => ({ totalTokens: tokens.length + 1, firstChunkTokens: P, prefix: { keys, tokens, maxTokens: tokens.length - 1 } });

  /** Runs a 21-token prompt through a cache (snapshots at page boundaries), writing recognisable KV and states. */
  function fill(cache: CacheManager, id: string, tokens: number[]): number {
    const keys = prefixKeys(tokens, P);
    let next = cache.admit(id, admitDoc(keys, tokens)) ?? -1;
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
      if (next % P === 0 && next <= keys.length * P) cache.snapshot(id, keys[next / P - 1] as string, next);
    }
    return restored;
  }

  it('a new CacheManager over the same folder restores the longest prefix: same state, same window', async () => {
    const dir = freshDir();
    const doc = Array.from({ length: 21 }, (_, i) => i + 1);
    const first = new CacheManager(spec, { kvPages: 20, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: P, prefixCacheBytes: 1 << 20, snapshotStore: new SnapshotStore(dir, 1 << 20, layout) });
    expect(fill(first, 'a', doc)).toBe(0);
    const firstTable = first.tableOf('a');
    // The snapshot at 20 holds the window before position 20: positions 12…19, logical pages 3 and 4.
    const expectedPages = [3, 4].map((l) => Array.from(first.groups[0]!.pool.pageView(firstTable?.pages[l - (firstTable?.firstPage ?? 0)] ?? -1)));
    expect(expectedPages[0]?.slice(0, 2)).toEqual([12.5, 12.5]);
    first.free('a');
    // Snapshots reach the disk when evicted from memory, or all at once at shutdown.
    expect(first.store?.size).toBe(0);
    await first.persistSnapshots();
    expect(first.store?.size).toBe(5); // boundaries 4, 8, 12, 16, 20

    const second = new CacheManager(spec, { kvPages: 20, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: P, prefixCacheBytes: 1 << 20, snapshotStore: new SnapshotStore(dir, 1 << 20, layout) });
    expect(second.prefix?.size).toBe(0);
    const keys = prefixKeys(doc, P);
    expect(second.admit('b', admitDoc(keys, doc))).toBe(20);
    expect(Array.from(second.slots.state(0, second.slotOf('b')))).toEqual([200, 200, 200, 200]);
    const table = second.tableOf('b');
    expect(table?.firstPage).toBe(3);
    const restoredPages = table?.pages.map((p) => Array.from(second.groups[0]!.pool.pageView(p)));
    expect(restoredPages).toEqual(expectedPages);
    // Its pages are shared with the memory snapshot it became; freeing the sequence leaves only the snapshot's.
    second.free('b');
    expect(second.prefix?.size).toBe(1);
    expect(second.usage().pagesUsed).toBe(0);
    expect(second.usage().prefixCachePages).toBe(table?.pages.length);
  });

  it('spills a snapshot to disk when memory evicts it', async () => {
    const dir = freshDir();
    const doc = Array.from({ length: 21 }, (_, i) => i + 1);
    // Room for two snapshots of 1 state (4 floats) + up to 3 pages in memory: the older ones are evicted, and written.
    const snapshotBytes = 4 * 4 + 3 * layout.floatsPerPage * 4;
    const cache = new CacheManager(spec, { kvPages: 20, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: P, prefixCacheBytes: 2 * snapshotBytes, snapshotStore: new SnapshotStore(dir, 1 << 20, layout) });
    fill(cache, 'a', doc);
    cache.free('a');
    await cache.store?.flush();
    const keys = prefixKeys(doc, P);
    const inMemory = keys.filter((k) => cache.prefix?.has(k));
    const onDisk = keys.filter((k) => cache.store?.has(k));
    expect(inMemory.length).toBeGreaterThan(0);
    expect(onDisk.length).toBeGreaterThan(0);
    expect(inMemory.length + onDisk.length).toBe(5); // every snapshot is in exactly one of the two
    expect(onDisk.some((k) => inMemory.includes(k))).toBe(false);
  });

  it('skips the disk when the pages do not fit beside the reservations (admits from scratch)', async () => {
    const dir = freshDir();
    const doc = Array.from({ length: 21 }, (_, i) => i + 1);
    const big = new CacheManager(spec, { kvPages: 20, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: P, prefixCacheBytes: 1 << 20, snapshotStore: new SnapshotStore(dir, 1 << 20, layout) });
    fill(big, 'a', doc);
    big.free('a');
    await big.persistSnapshots();
    // 4 pages: one sequence's reservation (⌈(8+4)/4⌉+1 = 4) leaves no room for a restored window.
    const small = new CacheManager(spec, { kvPages: 4, pageTokens: P, maxNumSeqs: 1, maxChunkTokens: P, prefixCacheBytes: 1 << 20, snapshotStore: new SnapshotStore(dir, 1 << 20, layout) });
    expect(small.admit('b', admitDoc(prefixKeys(doc, P), doc))).toBe(0);
    small.free('b');
    expect(small.usage().pagesUsed).toBe(0);
    expect(small.groups[0]!.pool.numFree).toBe(4);
  });
});

describe('Engine with --prefix-cache-dir', () => {
  async function collect(engine: Engine, req: GenerateRequest): Promise<{ tokens: number[]; cached: number }> {
    const tokens: number[] = [];
    let cached = -1;
    for await (const e of engine.generate(req) as AsyncIterable<TokenEvent>) {
      if (e.type === 'token') tokens.push(e.tokenId);
      if (e.type === 'done') cached = e.cachedTokens;
    }
    return { tokens, cached };
  }

  it('resumes a prompt from disk after a shutdown and a new start, with the same tokens', async () => {
    const ckpt = makeRandomTinyCheckpoint(join(root, 'ckpt'), { numLayers: 4, slidingWindow: 8, seed: 21 });
    const snapshots = join(root, 'engine-snapshots');
    const opts = { modelDir: ckpt.dir, cacheDir: join(root, 'built'), intraOpThreads: 1, pageTokens: 4, prefixCacheDir: snapshots };
    const prompt = Array.from({ length: 150 }, (_, i) => (i * 31 + 7) % ckpt.config.vocabSize);
    const first = await Engine.start(opts);
    const a = await collect(first, { requestId: 'a', promptTokenIds: prompt, sampling: greedy(6), reportProgress: false });
    await first.shutdown();
    expect(a.cached).toBe(0);
    expect(readdirSync(snapshots)).toHaveLength(1); // one folder for this model build and page size

    const second = await Engine.start(opts);
    try {
      const b = await collect(second, { requestId: 'b', promptTokenIds: prompt, sampling: greedy(6), reportProgress: false });
      expect(b.cached).toBe(148); // the last whole page before the final token
      expect(b.tokens).toEqual(a.tokens);
    } finally {
      await second.shutdown();
    }
  });
});
