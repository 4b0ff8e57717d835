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
import { prefixKeys } from '../src/cache/prefix-cache.ts';

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

/** Every page in use belongs to exactly one sequence, once; held pages = pool's used count. */
function checkOwnership(cache: CacheManager, live: Iterable<string>): void {
  const owner = new Map<number, string>();
  let held = 0;
  for (const id of live) {
    const table = cache.tableOf(id);
    if (table === undefined) continue;
    for (const page of table.pages) {
      expect(owner.has(page), `page ${page} owned by ${owner.get(page)} and ${id}`).toBe(false);
      owner.set(page, id);
      expect(cache.pool.refCount(page)).toBe(1);
      held++;
    }
  }
  expect(cache.pool.numUsed).toBe(held);
}

/** Runs a workload; returns the largest number of pages any sequence held. */
function runWorkload(spec: CacheSpec, opts: { kvPages: number; pageTokens: number; maxNumSeqs: number; maxChunkTokens: number }, ops: Op[]): number {
  const cache = new CacheManager(spec, opts);
  const live = new Map<string, { next: number; total: number }>();
  let nextId = 0;
  let maxHeld = 0;
  for (const op of ops) {
    const ids = [...live.keys()];
    if (op.kind === 'admit') {
      const id = `s${nextId++}`;
      const could = cache.canAdmit(op.totalTokens);
      expect(cache.admit(id, op.totalTokens) !== null).toBe(could);
      if (could) live.set(id, { next: 0, total: op.totalTokens });
    } else if (ids.length > 0) {
      const id = ids[op.who % ids.length]!;
      const seq = live.get(id)!;
      if (op.kind === 'free') {
        cache.free(id);
        live.delete(id);
      } else {
        const tokens = Math.min(op.tokens, seq.total - seq.next);
        if (tokens > 0) {
          // Within its reservation an admitted sequence always gets its chunk.
          expect(cache.canAppend(id, seq.next, tokens)).toBe(true);
          cache.append(id, seq.next, tokens);
          seq.next += tokens;
          const table = cache.tableOf(id)!;
          // The table covers the chunk's last position and the window before its first.
          const P = opts.pageTokens;
          expect((table.firstPage + table.pages.length) * P).toBeGreaterThanOrEqual(seq.next);
          if (spec.windowTokens !== null) {
            expect(table.firstPage * P).toBeLessThanOrEqual(Math.max(0, seq.next - tokens - spec.windowTokens));
          } else {
            expect(table.firstPage).toBe(0);
          }
          maxHeld = Math.max(maxHeld, table.pages.length);
        }
      }
    }
    checkOwnership(cache, live.keys());
    expect(cache.usage().slotsUsed).toBe(live.size);
    expect(cache.usage().pagesReserved).toBeLessThanOrEqual(cache.pool.numPages);
  }
  for (const id of [...live.keys()]) cache.free(id);
  const usage = cache.usage();
  expect(usage.pagesUsed).toBe(0);
  expect(usage.slotsUsed).toBe(0);
  expect(usage.pagesReserved).toBe(0);
  expect(cache.pool.numFree).toBe(cache.pool.numPages);
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
    const slots = new StateSlots({ numGlaLayers: 2, numKvHeads: 2, headDim: 3 }, 2);
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
  const swa: CacheSpec = { numAttnLayers: 2, numGlaLayers: 2, numKvHeads: 1, headDim: 2, windowTokens: 40 };
  const full: CacheSpec = { ...swa, windowTokens: null };

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

  it('full attention: tables grow, admission stops when reservations would exceed the pool', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), fc.array(opArb(200, 32), { maxLength: 120 }), (P, ops) => {
        runWorkload(full, { kvPages: 24, pageTokens: P, maxNumSeqs: 6, maxChunkTokens: 32 }, ops);
      }),
      { numRuns: 300 },
    );
  });

  it('pure GLA models need no pages', () => {
    const cache = new CacheManager({ ...swa, numAttnLayers: 0 }, { maxNumSeqs: 2, maxChunkTokens: 8 });
    expect(cache.pool.numPages).toBe(0);
    expect(cache.admit('a', 1_000_000)).toBe(0);
    cache.append('a', 0, 8);
    expect(cache.admit('b', 5)).toBe(0);
    expect(cache.admit('c', 5)).toBeNull(); // slots exhausted
    cache.free('a');
    cache.free('b');
    expect(cache.usage().slotsUsed).toBe(0);
  });
});

describe('full attention refusal', () => {
  const spec: CacheSpec = { numAttnLayers: 1, numGlaLayers: 0, numKvHeads: 1, headDim: 2, windowTokens: null };

  it('refuses a sequence longer than the whole pool, and a second one while the pool is reserved', () => {
    const cache = new CacheManager(spec, { kvPages: 4, pageTokens: 8, maxNumSeqs: 4, maxChunkTokens: 8 });
    expect(cache.maxTokensPerSequence).toBe(32);
    expect(cache.canEverFit(33)).toBe(false);
    expect(cache.canEverFit(32)).toBe(true);
    expect(cache.admit('a', 24)).toBe(0);
    expect(cache.canAdmit(9)).toBe(false);
    expect(cache.admit('b', 8)).toBe(0);
    expect(cache.admit('c', 1)).toBeNull();
    for (let p = 0; p < 24; p += 8) cache.append('a', p, 8);
    // Growing past the reservation is refused.
    expect(cache.canAppend('a', 24, 1)).toBe(false);
    expect(() => cache.append('a', 24, 1)).toThrow(/reservation/);
    cache.free('a');
    cache.free('b');
    expect(cache.pool.numFree).toBe(4);
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
  const prefixOpArb: fc.Arbitrary<PrefixOp> = fc.oneof(
    fc.record({ kind: fc.constant('admit' as const), family: fc.nat(2), length: fc.integer({ min: 1, max: 200 }), extra: fc.integer({ min: 1, max: 20 }) }),
    fc.record({ kind: fc.constant('advance' as const), who: fc.nat(20), tokens: fc.integer({ min: 1, max: 24 }) }),
    fc.record({ kind: fc.constant('free' as const), who: fc.nat(20) }),
  );
  // Token ids of family f: the first token is f, so families never share a prefix.
  const familyTokens = (f: number, n: number): number[] => Array.from({ length: n }, (_, i) => (i === 0 ? f : (f * 7919 + i * 104729) % 1000));
  // What the "model" writes: state = tokens computed + 1000·family; key at position p = p + 1e6·family.
  const stateValue = (f: number, n: number): number => n + 1000 * f;
  const keyValue = (f: number, p: number): number => p + 1e6 * f;

  /**
   * Runs one random workload of admits, advances (with snapshots at page boundaries) and frees, checking
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
    const spec: CacheSpec = { numAttnLayers: 1, numGlaLayers: 1, numKvHeads: 1, headDim: 1, windowTokens };
    const C = 24;
    // The largest snapshot: one float of state and the pages of a window (or of a whole 200-token prompt).
    const snapshotBytes = 4 + ((windowTokens ?? 200) / P + 2) * 2 * P * 4;
    const cache = new CacheManager(spec, {
      kvPages,
      pageTokens: P,
      maxNumSeqs: 3,
      maxChunkTokens: C,
      prefixCacheBytes: disk === undefined ? 40 * 4 * P : 2 * snapshotBytes, // with a disk: room for ~2, the rest spill
      ...(disk !== undefined ? { snapshotFolder: { ...disk, maxBytes: 1 << 20, modelIdentity: 'm', readTimeoutMs: 30_000 } } : {}),
    });
    const store = cache.store;
    const prefix = cache.prefix!;
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
        const restored = cache.admit(id, total, keys, prefetched);
        prefetched?.release();
        if (restored === null) continue;
        expect(restored % P).toBe(0);
        expect(restored).toBeLessThan(op.length);
        live.set(id, { family: op.family, tokens, keys, next: restored, total });
        if (restored > 0) {
          hits++;
          if (restored > longestInMemory) diskHits++;
          // States and window keys are exactly those of the stored prefix.
          expect(cache.slots.state(0, cache.slotOf(id))[0]).toBe(stateValue(op.family, restored));
          const table = cache.tableOf(id)!;
          for (let p = Math.max(0, restored - (windowTokens ?? restored)); p < restored; p++) {
            const page = table.pages[Math.floor(p / P) - table.firstPage]!;
            expect(cache.pool.slab(page, 0, 0, 0)[p % P]).toBe(keyValue(op.family, p));
          }
        }
      } else if (ids.length > 0) {
        const id = ids[op.who % ids.length]!;
        const seq = live.get(id)!;
        if (op.kind === 'free') {
          cache.free(id);
          live.delete(id);
        } else {
          // Chunks stop at page boundaries inside the prompt, where snapshots may be taken.
          let n = Math.min(op.tokens, seq.total - seq.next);
          const boundary = (Math.floor(seq.next / P) + 1) * P;
          if (boundary <= seq.keys.length * P) n = Math.min(n, boundary - seq.next);
          if (n <= 0) continue;
          cache.append(id, seq.next, n);
          const table = cache.tableOf(id)!;
          for (let p = seq.next; p < seq.next + n; p++) {
            const page = table.pages[Math.floor(p / P) - table.firstPage]!;
            cache.pool.slab(page, 0, 0, 0)[p % P] = keyValue(seq.family, p);
          }
          seq.next += n;
          cache.slots.state(0, cache.slotOf(id)).fill(stateValue(seq.family, seq.next));
          if (seq.next % P === 0 && seq.next <= seq.keys.length * P) cache.snapshot(id, seq.keys[seq.next / P - 1]!, seq.next);
          if (windowTokens !== null) expect(table.pages.length).toBeLessThanOrEqual(PagedKvManager.maxPagesSwa(windowTokens, C, P));
        }
      }
      await store?.flush(); // spilled snapshots are on disk before the next admission looks
      // Every page in use is referenced exactly by its holders: tables plus snapshots.
      const holders = new Map<number, number>();
      for (const id of live.keys()) for (const page of cache.tableOf(id)?.pages ?? []) holders.set(page, (holders.get(page) ?? 0) + 1);
      for (let page = 0; page < cache.pool.numPages; page++) {
        expect(cache.pool.refCount(page)).toBe((holders.get(page) ?? 0) + prefix.refsOf(page));
      }
      expect(cache.usage().pagesReserved + prefix.numPages).toBeLessThanOrEqual(cache.pool.numPages);
      expect(prefix.bytes).toBeLessThanOrEqual(prefix.maxBytes);
    }
    for (const id of [...live.keys()]) cache.free(id);
    expect(cache.usage().pagesUsed).toBe(0);
    expect(cache.usage().slotsUsed).toBe(0);
    prefix.clear();
    await store?.flush();
    expect(cache.pool.numFree).toBe(cache.pool.numPages);
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
      expect(totalHits).toBeGreaterThan(0); // the workloads did resume from snapshots
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
    const spec: CacheSpec = { numAttnLayers: 1, numGlaLayers: 1, numKvHeads: 1, headDim: 1, windowTokens: 4 };
    const P = 4;
    const cache = new CacheManager(spec, { kvPages: 40, pageTokens: P, maxNumSeqs: 2, maxChunkTokens: 4, prefixCacheBytes: 3 * (4 + 2 * 4 * P) }); // 3 snapshots of 1 state + 1 page
    const run = (id: string, tokens: number[]): number => {
      const keys = prefixKeys(tokens, P);
      let next = cache.admit(id, tokens.length + 1, keys)!;
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
});
