// Cache pools without onnxruntime: BlockPool, PagedKvManager, StateSlots, CacheManager.
// Property tests drive random workloads of admit / advance / free and check the invariants of DESIGN.md §4.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BlockPool } from '../src/cache/block-pool.ts';
import { PagedKvManager } from '../src/cache/paged-kv.ts';
import { StateSlots } from '../src/cache/state-slots.ts';
import { CacheManager, type CacheSpec } from '../src/cache/cache-manager.ts';
import { exactKey, prefixKeys } from '../src/cache/prefix-keys.ts';

const diskRoot = mkdtempSync(join(tmpdir(), 'spikeserve-cache-test-'));
afterAll(() => rmSync(diskRoot, { recursive: true, force: true }));

type Op =
  | { kind: 'admit'; totalTokens: number }
  | { kind: 'advance'; who: number; tokens: number }
  | { kind: 'free'; who: number };

const opArb = (maxTotal: number, maxChunk: number): fc.Arbitrary<Op> =>
  fc.oneof(
    fc.record({ kind: fc.constant('admit' as const), totalTokens: fc.integer({ min: 1, max: maxTotal }) }),
    fc.record({ kind: fc.constant('advance' as const), who: fc.nat(20), tokens: fc.integer({ min: 1, max: maxChunk }) }),
    fc.record({ kind: fc.constant('advance' as const), who: fc.nat(20), tokens: fc.constant(1) }),
    fc.record({ kind: fc.constant('free' as const), who: fc.nat(20) }),
  );

/** A cache spec with one KV group of `numLayers` attention layers (window W, or full attention for null). */
function kvSpec(windowTokens: number | null, o: { numLayers?: number; numKvHeads?: number; headDim?: number; stateFloats?: number[] } = {}): CacheSpec {
  const numLayers = o.numLayers ?? 1;
  return {
    stateFloats: o.stateFloats ?? [1],
    kvGroups:
      numLayers === 0
        ? []
        : [{ kind: windowTokens === null ? 'full' : 'window', numLayers, numKvHeads: o.numKvHeads ?? 1, headDim: o.headDim ?? 1, windowTokens }],
  };
}

/** Every page in use belongs to exactly one sequence, once; held pages = pool's used count. */
function checkOwnership(cache: CacheManager, live: Iterable<string>): void {
  const pool = cache.groups[0]!.pool;
  const owner = new Map<number, string>();
  let held = 0;
  for (const id of live) {
    const table = cache.tableOf(id);
    if (table === undefined) continue;
    for (const page of table.pages) {
      expect(owner.has(page), `page ${page} owned by ${owner.get(page)} and ${id}`).toBe(false);
      owner.set(page, id);
      expect(pool.refCount(page)).toBe(1);
      held++;
    }
  }
  expect(pool.numUsed).toBe(held);
}

/**
 * Runs a workload; returns the largest number of pages any sequence held. Window groups: an admitted
 * sequence always gets its chunk. Full attention: a chunk is refused (append false, nothing changed)
 * exactly when the pool has too few free pages for it.
 */
function runWorkload(spec: CacheSpec, opts: { kvPages: number; pageTokens: number; maxNumSeqs: number; maxChunkTokens: number }, ops: Op[]): number {
  const cache = new CacheManager(spec, opts);
  const group = spec.kvGroups[0]!;
  const pool = cache.groups[0]!.pool;
  const live = new Map<string, { next: number; total: number }>();
  let nextId = 0;
  let maxHeld = 0;
  for (const op of ops) {
    const ids = [...live.keys()];
    if (op.kind === 'admit') {
      const id = `s${nextId++}`;
      if (cache.admit(id, { totalTokens: op.totalTokens, firstChunkTokens: Math.min(op.totalTokens, opts.maxChunkTokens) }) !== null) live.set(id, { next: 0, total: op.totalTokens });
    } else if (ids.length > 0) {
      const id = ids[op.who % ids.length]!;
      const seq = live.get(id)!;
      if (op.kind === 'free') {
        cache.free(id);
        live.delete(id);
      } else {
        const tokens = Math.min(op.tokens, seq.total - seq.next);
        if (tokens > 0) {
          const P = opts.pageTokens;
          const free = pool.numFree;
          const held = cache.tableOf(id)?.pages.length ?? 0;
          const fits = cache.canAppend(id, seq.next, tokens);
          if (group.kind === 'window') expect(fits).toBe(true); // within its reservation
          expect(cache.append(id, seq.next, tokens)).toBe(fits);
          if (!fits) {
            expect(pool.numFree).toBe(free);
            expect(cache.tableOf(id)?.pages.length ?? 0).toBe(held);
            continue;
          }
          seq.next += tokens;
          const table = cache.tableOf(id)!;
          // The table covers the chunk's last position and the window before its first.
          expect((table.firstPage + table.pages.length) * P).toBeGreaterThanOrEqual(seq.next);
          if (group.windowTokens !== null) {
            expect(table.firstPage * P).toBeLessThanOrEqual(Math.max(0, seq.next - tokens - group.windowTokens));
          } else {
            expect(table.firstPage).toBe(0);
          }
          maxHeld = Math.max(maxHeld, table.pages.length);
        }
      }
    }
    checkOwnership(cache, live.keys());
    expect(cache.usage().slotsUsed).toBe(live.size);
    expect(cache.usage().pagesReserved).toBeLessThanOrEqual(pool.numPages);
  }
  for (const id of [...live.keys()]) cache.free(id);
  const usage = cache.usage();
  expect(usage.pagesUsed).toBe(0);
  expect(usage.slotsUsed).toBe(0);
  expect(usage.pagesReserved).toBe(0);
  expect(pool.numFree).toBe(pool.numPages);
  expect(cache.slots.numFree).toBe(cache.slots.numSlots);
  return maxHeld;
}

describe('BlockPool', () => {
  it('hands out each page once, counts references, and refuses when exhausted', () => {
    const pool = new BlockPool({ numAttnLayers: 2, numKvHeads: 2, headDim: 4, pageTokens: 8 }, 3);
    const pages = [pool.allocate(), pool.allocate(), pool.allocate()];
    expect(new Set(pages).size).toBe(3);
    expect(pool.allocate()).toBeNull();
    pool.retain(pages[0]!);
    pool.release(pages[0]!);
    expect(pool.numFree).toBe(0); // still one owner
    pool.release(pages[0]!);
    expect(pool.numFree).toBe(1);
    expect(() => pool.release(pages[0]!)).toThrow(/not in use/);
    expect(pool.allocate()).toBe(pages[0]);
  });

  it('lays a page out as [layers, 2, Hkv, P, d] without overlap', () => {
    const spec = { numAttnLayers: 2, numKvHeads: 3, headDim: 4, pageTokens: 5 };
    const pool = new BlockPool(spec, 4);
    const seen = new Set<number>();
    for (let page = 0; page < 4; page++) {
      for (let l = 0; l < 2; l++) {
        for (const kind of [0, 1] as const) {
          for (let h = 0; h < 3; h++) {
            const off = pool.pageOffset(page, l, kind, h);
            for (let i = 0; i < 5 * 4; i++) {
              expect(seen.has(off + i)).toBe(false);
              seen.add(off + i);
            }
          }
        }
      }
    }
    expect(seen.size).toBe(pool.pageArray(0).length);
  });
});

describe('StateSlots', () => {
  it('zeroes a slot when it is handed out again', () => {
    const slots = new StateSlots({ stateFloats: [18, 18] }, 2);
    const a = slots.allocate()!;
    slots.state(1, a).fill(7);
    slots.release(a);
    const b = slots.allocate()!;
    const c = slots.allocate()!;
    expect(slots.allocate()).toBeNull();
    for (const s of [b, c]) expect(slots.state(1, s).every((x) => x === 0)).toBe(true);
    expect(slots.bytesPerSlot).toBe(2 * 2 * 3 * 3 * 4);
  });
});

describe('CacheManager under random workloads', () => {
  const swa: CacheSpec = kvSpec(40, { numLayers: 2, headDim: 2, stateFloats: [4, 4] });
  const full: CacheSpec = kvSpec(null, { numLayers: 2, headDim: 2, stateFloats: [4, 4] });

  it('SWA: no page owned twice, a sequence holds ≤ ⌈(W+C)/P⌉+1 pages, everything free at the end', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 32 }), // P
        fc.integer({ min: 1, max: 48 }), // C
        fc.array(opArb(400, 48), { maxLength: 120 }),
        (P, C, ops) => {
          const bound = PagedKvManager.maxPagesSwa(40, C, P);
          const maxHeld = runWorkload(swa, { kvPages: 3 * bound, pageTokens: P, maxNumSeqs: 4, maxChunkTokens: C }, ops.map((op) =>
            op.kind === 'advance' ? { ...op, tokens: Math.min(op.tokens, C) } : op,
          ));
          expect(maxHeld).toBeLessThanOrEqual(bound);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('full attention: tables grow lazily; a chunk the pool cannot hold is refused and changes nothing', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), fc.array(opArb(200, 32), { maxLength: 120 }), (P, ops) => {
        runWorkload(full, { kvPages: 24, pageTokens: P, maxNumSeqs: 6, maxChunkTokens: 32 }, ops);
      }),
      { numRuns: 300 },
    );
  });

  it('pure GLA models need no pages', () => {
    const cache = new CacheManager(kvSpec(null, { numLayers: 0, stateFloats: [4, 4] }), { maxNumSeqs: 2, maxChunkTokens: 8 });
    expect(cache.groups).toHaveLength(0);
    const admit = (id: string, totalTokens: number): number | null => cache.admit(id, { totalTokens, firstChunkTokens: 8 });
    expect(admit('a', 1_000_000)).toBe(0);
    expect(cache.append('a', 0, 8)).toBe(true);
    expect(admit('b', 5)).toBe(0);
    expect(admit('c', 5)).toBeNull(); // slots exhausted
    cache.free('a');
    cache.free('b');
    expect(cache.usage().slotsUsed).toBe(0);
  });
});

describe('full attention: lazy pages', () => {
  const spec: CacheSpec = kvSpec(null, { headDim: 2, stateFloats: [] });

  it('refuses a sequence longer than the whole pool; admits on the first chunk\'s pages, not on max_tokens', () => {
    const cache = new CacheManager(spec, { kvPages: 8, pageTokens: 8, maxNumSeqs: 4, maxChunkTokens: 8 });
    const pool = cache.groups[0]!.pool;
    expect(cache.maxTokensPerSequence).toBe(64);
    expect(cache.canEverFit(65)).toBe(false);
    expect(cache.canEverFit(64)).toBe(true);
    // A sequence that may grow to the whole pool is admitted; so is a second one (nothing is reserved).
    expect(cache.admit('a', { totalTokens: 64, firstChunkTokens: 8 })).toBe(0);
    expect(cache.admit('b', { totalTokens: 64, firstChunkTokens: 8 })).toBe(0);
    expect(cache.usage().pagesReserved).toBe(0);
    for (let p = 0; p < 40; p += 8) expect(cache.append('a', p, 8)).toBe(true);
    expect(cache.append('b', 0, 8)).toBe(true);
    // 6 of 8 pages used: a third sequence needs its first chunk (1 page) + 1 + watermark (1) free.
    expect(cache.admit('c', { totalTokens: 8, firstChunkTokens: 8 })).toBeNull();
    expect(cache.append('a', 40, 8)).toBe(true);
    expect(cache.append('b', 8, 8)).toBe(true);
    // The pool is full: the next chunk is refused and nothing changes.
    expect(pool.numFree).toBe(0);
    expect(cache.canAppend('a', 48, 1)).toBe(false);
    expect(cache.append('a', 48, 1)).toBe(false);
    expect(cache.tableOf('a')?.numTokens).toBe(48);
    cache.free('b'); // what the scheduler does: preempt
    expect(cache.append('a', 48, 8)).toBe(true);
    cache.free('a');
    expect(pool.numFree).toBe(8);
  });

  it('evicts prefix snapshots (LRU) before refusing a chunk', () => {
    const P = 4;
    const cache = new CacheManager(spec, { kvPages: 6, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: 8, prefixCacheBytes: 1 << 20 });
    const pool = cache.groups[0]!.pool;
    const tokens = Array.from({ length: 17 }, (_, i) => i + 1);
    const keys = prefixKeys(tokens, P);
    expect(cache.admit('a', { totalTokens: 17, firstChunkTokens: 8, prefix: { keys, tokens, maxTokens: 16 } })).toBe(0);
    for (let p = 0; p < 16; p += 8) {
      expect(cache.append('a', p, 8)).toBe(true);
      expect(cache.snapshot('a', keys[(p + 8) / P - 1]!, p + 8)).toBe(true);
    }
    cache.free('a');
    expect(pool.numFree).toBe(2); // the 4 pages of [0, 16) are held by the snapshots
    expect(cache.admit('b', { totalTokens: 24, firstChunkTokens: 8 })).toBe(0);
    expect(cache.append('b', 0, 8)).toBe(true);
    expect(cache.append('b', 8, 8)).toBe(true); // evicted the snapshots for room
    expect(cache.prefix!.size).toBe(0);
    cache.free('b');
    expect(pool.numFree).toBe(6);
  });

  it('PagedKvManager counts the pages a window chunk releases before it allocates', () => {
    const pool = new BlockPool({ numAttnLayers: 1, numKvHeads: 1, headDim: 1, pageTokens: 4 }, 4);
    const kv = new PagedKvManager(pool, 4);
    expect(kv.ensure('a', 0, 16)).toBe(true); // all 4 pages
    expect(pool.numFree).toBe(0);
    // A chunk at 16..19 needs one new page; pages 0–2 (positions < 12) left the window and free it.
    expect(kv.fits('a', 16, 4)).toBe(true);
    expect(kv.ensure('a', 16, 4)).toBe(true);
    expect(kv.table('a')).toMatchObject({ firstPage: 3 });
    // A page that a snapshot still holds is not freed by the release: then it does not fit.
    pool.retain(kv.table('a')!.pages[0]!);
    const held = kv.table('a')!.pages[0]!;
    expect(kv.ensure('a', 20, 4)).toBe(true); // logical page 3 released but still held: a free page is used
    expect(pool.numFree).toBe(1);
    expect(kv.fits('a', 24, 8)).toBe(true); // 2 new pages: 1 free + logical page 4, which it releases
    expect(kv.fits('a', 24, 12)).toBe(false); // 3 new pages
    expect(kv.ensure('a', 24, 12)).toBe(false);
    expect(kv.table('a')).toMatchObject({ firstPage: 4, numTokens: 24 });
    pool.release(held);
    kv.free('a');
    expect(pool.numFree).toBe(4);
  });

  it('PagedKvManager alone grows until the pool is exhausted, then changes nothing', () => {
    const pool = new BlockPool({ numAttnLayers: 1, numKvHeads: 1, headDim: 2, pageTokens: 4 }, 3);
    const kv = new PagedKvManager(pool, null);
    expect(kv.ensure('a', 0, 10)).toBe(true); // 3 pages
    expect(kv.ensure('b', 0, 1)).toBe(false);
    expect(kv.ensure('a', 10, 2)).toBe(true); // still inside page 2
    expect(kv.ensure('a', 12, 1)).toBe(false);
    expect(kv.pagesHeld('a')).toBe(3);
    expect(kv.table('b')).toBeUndefined();
    kv.free('a');
    expect(pool.numFree).toBe(3);
  });
});

describe('prefix snapshots', () => {
  type PrefixOp =
    | { kind: 'admit'; family: number; length: number; extra: number }
    | { kind: 'advance'; who: number; tokens: number }
    | { kind: 'free'; who: number };
  // Mostly advances, so that sequences reach their snapshot points; some lengths recur, so that an
  // identical prompt resumes from the exact snapshot one token before its end.
  const prefixOpArb: fc.Arbitrary<PrefixOp> = fc.oneof(
    { arbitrary: fc.record({ kind: fc.constant('admit' as const), family: fc.nat(2), length: fc.oneof(fc.integer({ min: 1, max: 200 }), fc.constantFrom(19, 37)), extra: fc.integer({ min: 1, max: 20 }) }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('advance' as const), who: fc.nat(20), tokens: fc.integer({ min: 1, max: 24 }) }), weight: 6 },
    { arbitrary: fc.record({ kind: fc.constant('free' as const), who: fc.nat(20) }), weight: 2 },
  );
  // Token ids of family f: the first token is f, so families never share a prefix.
  const familyTokens = (f: number, n: number): number[] => Array.from({ length: n }, (_, i) => (i === 0 ? f : (f * 7919 + i * 104729) % 1000));
  // What the "model" writes: state = tokens computed + 1000·family; key at position p = p + 1e6·family.
  const stateValue = (f: number, n: number): number => n + 1000 * f;
  const keyValue = (f: number, p: number): number => p + 1e6 * f;

  /**
   * Runs one random workload of admits, advances (with snapshots at page boundaries and an exact one a
   * token before the prompt's end, as the scheduler takes them) and frees, checking
   * after every op that each page in use is referenced exactly by its holders and that restored states
   * and window keys are what was stored. With a disk store, memory holds few snapshots, so most are
   * spilled and many admissions restore from disk. Returns how many admissions resumed, and how many
   * of those from a prefix that only the disk held.
   */
  async function prefixWorkload(
    windowTokens: number | null,
    P: number,
    kvPages: number,
    ops: readonly PrefixOp[],
    disk?: { dir: string; shareMinTokens: number },
  ): Promise<{ hits: number; diskHits: number }> {
    const spec: CacheSpec = kvSpec(windowTokens);
    const C = 24;
    // The largest snapshot: one float of state and the pages of a window (or of a whole 200-token prompt).
    const snapshotBytes = 4 + ((windowTokens ?? 200) / P + 2) * 2 * P * 4;
    const cache = new CacheManager(spec, {
      kvPages,
      pageTokens: P,
      maxNumSeqs: 3,
      maxChunkTokens: C,
      prefixCacheBytes: disk === undefined ? 8 * snapshotBytes : 2 * snapshotBytes, // with a disk: room for ~2, the rest spill
      ...(disk !== undefined ? { snapshotFolder: { ...disk, maxBytes: 1 << 20, modelIdentity: 'm', readTimeoutMs: 30_000 } } : {}),
    });
    const store = cache.store;
    const prefix = cache.prefix!;
    const pool = cache.groups[0]!.pool;
    const live = new Map<string, { family: number; tokens: number[]; keys: string[]; next: number; total: number }>();
    let nextId = 0;
    let hits = 0;
    let diskHits = 0;
    for (const op of ops) {
      const ids = [...live.keys()];
      if (op.kind === 'admit') {
        const id = `s${nextId++}`;
        const tokens = familyTokens(op.family, op.length);
        const keys = prefixKeys(tokens, P);
        const total = op.length + op.extra;
        const longestInMemory = keys.reduce((best, k, i) => (prefix.has(k) ? (i + 1) * P : best), 0);
        // As the scheduler does: read the longer prefix on disk ahead, admit with it, let it go.
        const prefetched = await (cache.prefetchDiskPrefix(keys) ?? null);
        const restored = cache.admit(id, { totalTokens: total, firstChunkTokens: Math.min(C, op.length), prefix: { keys, tokens, maxTokens: op.length - 1 }, prefetched });
        prefetched?.release();
        if (restored === null) continue;
        // Page-aligned, or an exact snapshot one token before the end of a prompt this one extends.
        expect(restored).toBeLessThan(op.length);
        live.set(id, { family: op.family, tokens, keys, next: restored, total });
        if (restored > 0) {
          hits++;
          if (restored > longestInMemory && restored % P === 0) diskHits++;
          // States and window keys are exactly those of the stored prefix.
          expect(cache.slots.state(0, cache.slotOf(id))[0]).toBe(stateValue(op.family, restored));
          const table = cache.tableOf(id)!;
          for (let p = Math.max(0, restored - (windowTokens ?? restored)); p < restored; p++) {
            const page = table.pages[Math.floor(p / P) - table.firstPage]!;
            expect(pool.slab(page, 0, 0, 0)[p % P]).toBe(keyValue(op.family, p));
          }
          // A partly written last page was copied: this sequence owns the page it writes next.
          if (restored % P !== 0) expect(pool.refCount(table.pages[Math.floor(restored / P) - table.firstPage]!)).toBe(1);
        }
      } else if (ids.length > 0) {
        const id = ids[op.who % ids.length]!;
        const seq = live.get(id)!;
        if (op.kind === 'free') {
          cache.free(id);
          live.delete(id);
        } else {
          // Chunks stop at page boundaries inside the prompt and a token before its end, where snapshots are taken.
          const last = seq.tokens.length - 1;
          let n = Math.min(op.tokens, seq.total - seq.next);
          const boundary = (Math.floor(seq.next / P) + 1) * P;
          if (boundary <= seq.keys.length * P) n = Math.min(n, boundary - seq.next);
          if (seq.next < last) n = Math.min(n, last - seq.next);
          if (n <= 0) continue;
          if (!cache.append(id, seq.next, n)) {
            // Full attention out of pages: the scheduler would preempt; here the sequence just ends.
            expect(windowTokens).toBeNull();
            cache.free(id);
            live.delete(id);
            continue;
          }
          const table = cache.tableOf(id)!;
          for (let p = seq.next; p < seq.next + n; p++) {
            const page = table.pages[Math.floor(p / P) - table.firstPage]!;
            expect(pool.refCount(page) - prefix.refsOf(0, page)).toBe(1); // never written where another sequence reads
            pool.slab(page, 0, 0, 0)[p % P] = keyValue(seq.family, p);
          }
          seq.next += n;
          cache.slots.state(0, cache.slotOf(id)).fill(stateValue(seq.family, seq.next));
          if (seq.next % P === 0 && seq.next <= seq.keys.length * P) cache.snapshot(id, seq.keys[seq.next / P - 1]!, seq.next);
          if (seq.next === last && last % P !== 0) {
            const q = Math.floor(last / P);
            const baseKey = q === 0 ? '' : seq.keys[q - 1]!;
            const tail = seq.tokens.slice(q * P, last);
            cache.snapshot(id, exactKey(baseKey, tail), last, { baseKey, tail });
          }
          if (windowTokens !== null) expect(table.pages.length).toBeLessThanOrEqual(PagedKvManager.maxPagesSwa(windowTokens, C, P));
        }
      }
      await store?.flush(); // spilled snapshots are on disk before the next admission looks
      // Every page in use is referenced exactly by its holders: tables plus snapshots.
      const holders = new Map<number, number>();
      for (const id of live.keys()) for (const page of cache.tableOf(id)?.pages ?? []) holders.set(page, (holders.get(page) ?? 0) + 1);
      for (let page = 0; page < pool.numPages; page++) {
        expect(pool.refCount(page)).toBe((holders.get(page) ?? 0) + prefix.refsOf(0, page));
      }
      expect(cache.usage().pagesReserved + prefix.numPages(0)).toBeLessThanOrEqual(pool.numPages);
      expect(prefix.bytes).toBeLessThanOrEqual(prefix.maxBytes);
    }
    for (const id of [...live.keys()]) cache.free(id);
    expect(cache.usage().pagesUsed).toBe(0);
    expect(cache.usage().slotsUsed).toBe(0);
    prefix.clear();
    await store?.flush();
    expect(pool.numFree).toBe(pool.numPages);
    expect(prefix.bytes).toBe(0);
    return { hits, diskHits };
  }

  for (const windowTokens of [24, null]) {
    it(`share pages by reference count, restore exactly what was stored, and free everything (W = ${windowTokens})`, async () => {
      let totalHits = 0;
      await fc.assert(
        fc.asyncProperty(fc.integer({ min: 2, max: 8 }), fc.integer({ min: 8, max: 60 }), fc.array(prefixOpArb, { maxLength: 80 }), async (P, kvPages, ops) => {
          totalHits += (await prefixWorkload(windowTokens, P, kvPages, ops)).hits;
        }),
        { numRuns: 200 },
      );
      expect(totalHits).toBeGreaterThan(0); // the workloads did resume from snapshots (exact ones: see below)
    });

    it(`with snapshots spilled to disk and restored from it, the same holds (W = ${windowTokens})`, async () => {
      let diskHits = 0;
      let run = 0;
      await fc.assert(
        // A pool large enough for restores beside two running sequences, and long workloads.
        fc.asyncProperty(fc.integer({ min: 2, max: 8 }), fc.integer({ min: 40, max: 120 }), fc.array(prefixOpArb, { minLength: 40, maxLength: 120 }), async (P, kvPages, ops) => {
          // Every other run writes every snapshot through at once (shared replicas); the others spill on eviction.
          const shareMinTokens = run % 2 === 0 ? 0 : Infinity;
          diskHits += (await prefixWorkload(windowTokens, P, kvPages, ops, { dir: join(diskRoot, `w${windowTokens}-${run++}`), shareMinTokens })).diskHits;
        }),
        { numRuns: 60 },
      );
      expect(diskHits).toBeGreaterThan(0); // the workloads did resume from snapshots only the disk held
    });
  }

  it('a resumed prefix is found again after more tokens, and evicted LRU under byte pressure', () => {
    const spec: CacheSpec = kvSpec(4);
    const P = 4;
    const cache = new CacheManager(spec, { kvPages: 40, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: 4, prefixCacheBytes: 3 * (4 + 2 * 4 * P) }); // 3 snapshots of 1 state + 1 page
    const run = (id: string, tokens: number[]): number => {
      const keys = prefixKeys(tokens, P);
      let next = cache.admit(id, { totalTokens: tokens.length + 1, firstChunkTokens: 4, prefix: { keys, tokens, maxTokens: tokens.length - 1 } })!;
      const restored = next;
      while (next < tokens.length) {
        const n = Math.min(4, tokens.length - next);
        cache.append(id, next, n);
        next += n;
        if (next % P === 0 && next <= keys.length * P) cache.snapshot(id, keys[next / P - 1]!, next);
      }
      cache.free(id);
      return restored;
    };
    const doc = Array.from({ length: 21 }, (_, i) => i + 1);
    expect(run('a', doc)).toBe(0);
    expect(cache.prefix!.size).toBe(3); // byte bound: 3 of the 5 boundaries (oldest evicted)
    expect(run('b', doc)).toBe(20);
    expect(run('c', [...doc, 99, 98, 97, 96])).toBe(20);
    expect(run('d', [...doc.slice(0, 5), 50, 51])).toBe(0); // 4 tokens: its snapshot was evicted
  });

  describe('exact snapshots (not page-aligned)', () => {
    const P = 4;
    /** Computes `tokens` from `from` on, writing state = position and key = token id of each position. */
    function compute(cache: CacheManager, id: string, tokens: readonly number[], from: number, to: number): void {
      const pool = cache.groups[0]!.pool;
      for (let p = from; p < to; ) {
        const n = Math.min(4, to - p);
        expect(cache.append(id, p, n)).toBe(true);
        const table = cache.tableOf(id)!;
        for (let i = p; i < p + n; i++) pool.slab(table.pages[Math.floor(i / P) - table.firstPage]!, 0, 0, 0)[i % P] = tokens[i]!;
        p += n;
      }
      cache.slots.state(0, cache.slotOf(id))[0] = to;
    }
    const exact = (tokens: readonly number[], s: number): { key: string; exact: { baseKey: string; tail: number[] } } => {
      const q = Math.floor(s / P);
      const baseKey = q === 0 ? '' : prefixKeys(tokens.slice(0, q * P + 1), P)[q - 1]!;
      const tail = tokens.slice(q * P, s);
      return { key: exactKey(baseKey, tail), exact: { baseKey, tail } };
    };

    for (const windowTokens of [6, null]) {
      it(`a conversation's next turn resumes at the previous turn's exact end; the shared page is copied (W = ${windowTokens})`, () => {
        const cache = new CacheManager(kvSpec(windowTokens), { kvPages: 40, pageTokens: P, maxNumSeqs: 4, maxChunkTokens: 4, prefixCacheBytes: 1 << 20 });
        const pool = cache.groups[0]!.pool;
        const turn1 = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]; // prompt + completion: 11 tokens
        const admit = (id: string, tokens: number[]): number =>
          cache.admit(id, { totalTokens: tokens.length + 4, firstChunkTokens: 4, prefix: { keys: prefixKeys(tokens, P), tokens, maxTokens: tokens.length - 1 } })!;
        expect(admit('a', turn1)).toBe(0);
        compute(cache, 'a', turn1, 0, 8);
        expect(cache.snapshot('a', prefixKeys(turn1, P)[1]!, 8)).toBe(true);
        compute(cache, 'a', turn1, 8, 11);
        const e = exact(turn1, 11);
        expect(cache.snapshot('a', e.key, 11, e.exact)).toBe(true);
        cache.free('a');
        // The next turn extends the whole exchange: it resumes at 11, not at the last whole page (8).
        const turn2 = [...turn1, 16, 17, 18];
        expect(admit('b', turn2)).toBe(11);
        expect(cache.slots.state(0, cache.slotOf('b'))[0]).toBe(11);
        const table = cache.tableOf('b')!;
        const page = (p: number): number => table.pages[Math.floor(p / P) - table.firstPage]!;
        for (let p = Math.max(0, 11 - (windowTokens ?? 11)); p < 11; p++) expect(pool.slab(page(p), 0, 0, 0)[p % P]).toBe(turn1[p]);
        // Position 11 lives in logical page 2, which the snapshot shares: b got its own copy.
        expect(pool.refCount(page(11))).toBe(1);
        compute(cache, 'b', turn2, 11, 14);
        // The snapshot's page still holds what it stored.
        const c = admit('c', turn1.concat([99]));
        expect(c).toBe(11);
        const tc = cache.tableOf('c')!;
        expect(pool.slab(tc.pages[2 - tc.firstPage]!, 0, 0, 0)[10 % P]).toBe(15);
        // A prompt that differs in the tail does not match; one that is shorter than s + 1 neither.
        expect(admit('d', [...turn1.slice(0, 10), 77, 16])).toBe(8);
        cache.free('b');
        cache.free('c');
        cache.free('d');
        expect(admit('e', turn1)).toBe(8); // 11 tokens: at most 10 may be restored; the page-aligned one at 8
        cache.free('e');
        cache.prefix!.clear();
        expect(pool.numFree).toBe(pool.numPages);
      });
    }

    it('a window pool with every page taken (a running window, snapshots) still resumes an exact snapshot: another snapshot is evicted for the copied page', () => {
      // W = 6, C = 4, P = 4: a sequence reserves ⌈(W+C)/P⌉+1 = 4 pages. 8 pages: two reservations fit,
      // and snapshots may hold the 4 pages the running one does not use yet.
      const cache = new CacheManager(kvSpec(6), { kvPages: 8, pageTokens: P, maxNumSeqs: 4, maxChunkTokens: 4, prefixCacheBytes: 1 << 20 });
      const pool = cache.groups[0]!.pool;
      const admit = (id: string, tokens: number[], extra = 4): number | null =>
        cache.admit(id, { totalTokens: tokens.length + extra, firstChunkTokens: 4, prefix: { keys: prefixKeys(tokens, P), tokens, maxTokens: tokens.length - 1 } });
      const turn1 = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
      expect(admit('a', turn1)).toBe(0);
      compute(cache, 'a', turn1, 0, 8);
      expect(cache.snapshot('a', prefixKeys(turn1, P)[1]!, 8)).toBe(true); // pages of positions 2…7
      compute(cache, 'a', turn1, 8, 11);
      const e = exact(turn1, 11);
      expect(cache.snapshot('a', e.key, 11, e.exact)).toBe(true); // positions 5…10, the last page partly written
      cache.free('a');
      const other = [40, 41, 42, 43, 44, 45, 46];
      expect(admit('y', other)).toBe(0);
      compute(cache, 'y', other, 0, 4);
      expect(cache.snapshot('y', prefixKeys(other, P)[0]!, 4)).toBe(true);
      cache.free('y');
      expect(pool.numPages - pool.numFree).toBe(4); // snapshot pages only
      // A running sequence whose chunk at 9…12 spans positions 3…12: all 4 of its pages.
      const running = [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72];
      expect(admit('x', running)).toBe(0);
      compute(cache, 'x', running, 0, 9);
      compute(cache, 'x', running, 9, 13);
      expect(pool.numFree).toBe(0);
      // The next turn of the first conversation: admitted (reservations fit), resumed at 11, and its
      // copy of the partly written page came from evicting another snapshot.
      const turn2 = [...turn1, 16, 17, 18];
      expect(admit('b', turn2)).toBe(11);
      const table = cache.tableOf('b')!;
      const page = (p: number): number => table.pages[Math.floor(p / P) - table.firstPage]!;
      expect(pool.refCount(page(11))).toBe(1);
      for (let p = 11 - 6; p < 11; p++) expect(pool.slab(page(p), 0, 0, 0)[p % P]).toBe(turn1[p]);
      expect(cache.usage().pagesReserved + cache.prefix!.numPages(0)).toBeLessThanOrEqual(pool.numPages);
      cache.free('b');
      cache.free('x');
      cache.prefix!.clear();
      expect(pool.numFree).toBe(pool.numPages);
    });

    it('finds the longest match among several exact snapshots of one page, and the same prompt again resumes one token before its end', () => {
      const cache = new CacheManager(kvSpec(null), { kvPages: 40, pageTokens: P, maxNumSeqs: 1, maxChunkTokens: 4, prefixCacheBytes: 1 << 20 });
      const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9];
      const run = (id: string, toks: number[], snapshotAt: number[]): number => {
        const r = cache.admit(id, { totalTokens: toks.length + 1, firstChunkTokens: 4, prefix: { keys: prefixKeys(toks, P), tokens: toks, maxTokens: toks.length - 1 } })!;
        let at = r;
        for (const s of snapshotAt) {
          compute(cache, id, toks, at, s);
          at = s;
          const e = exact(toks, s);
          cache.snapshot(id, e.key, s, s % P === 0 ? null : e.exact);
        }
        cache.free(id);
        return r;
      };
      expect(run('a', tokens, [5, 6, 7])).toBe(0);
      expect(run('b', tokens, [])).toBe(7);
      expect(run('c', [1, 2, 3, 4, 5, 6, 0, 0], [])).toBe(6);
      expect(run('d', [1, 2, 3, 4, 5, 6], [])).toBe(5); // at most 5 of its 6
      expect(run('e', [1, 2, 3], [2])).toBe(0);
      expect(run('f', [1, 2, 3], [])).toBe(2);
    });
  });
});
