// CacheManager: the one object the scheduler asks "does this fit?". It coordinates the two kinds of
// per-sequence memory of a hybrid model — KV pages (SWA / full-attention layers, PagedKvManager over
// a BlockPool) and a slot of recurrent state (StateSlots: GLA states …) — and reports usage.
//
// Admission reserves, per sequence, the most pages it can ever hold:
//   SWA:  min(⌈(W+C)/P⌉+1, ⌈N/P⌉)   (C = max chunk, N = prompt + max new tokens)
//   full: ⌈N/P⌉
// and admits only while Σ reservations ≤ pool size. An admitted sequence therefore always gets its
// next chunk's pages: no preemption is ever needed, and a step never fails half-way for lack of memory.
// Prefix snapshots (PrefixStateCache) hold pages too; admission keeps
//   Σ reservations + (pages held by snapshots) ≤ pool size
// by evicting least recently used snapshots, so snapshots only ever use memory nobody reserved.
// The cache gets plain numbers; it imports nothing from the engine.
import { BlockPool, bytesPerPage, type PageSpec } from './block-pool.ts';
import { PagedKvManager, type BlockTable } from './paged-kv.ts';
import { PrefixStateCache, type PrefixSnapshot } from './prefix-cache.ts';
import type { SnapshotStore, StoredSnapshot } from './snapshot-store.ts';

/** A snapshot read from disk before admission (Scheduler), or null when the read failed. */
export interface PrefetchedSnapshot {
  readonly key: string;
  readonly snapshot: StoredSnapshot | null;
}
import { StateSlots } from './state-slots.ts';

export interface CacheSpec {
  readonly numAttnLayers: number;
  /** Floats of each recurrent state tensor of one sequence (the model's layer plan; GLA: Hkv·d·d). */
  readonly stateFloats: readonly number[];
  readonly numKvHeads: number; // Hkv
  readonly headDim: number; // d
  /** W of the attention layers; null = full attention. */
  readonly windowTokens: number | null;
}

export interface CacheOptions {
  /** Tokens per KV page (P). Default 64. */
  readonly pageTokens?: number;
  /** Number of KV pages; wins over kvCacheBytes. */
  readonly kvPages?: number;
  /** KV pool size in bytes (rounded down to whole pages). */
  readonly kvCacheBytes?: number;
  /** Number of state slots = most sequences admitted at once. */
  readonly maxNumSeqs: number;
  /** Largest chunk the scheduler will ever ask for (prefill chunk; decode is 1). */
  readonly maxChunkTokens: number;
  /** Byte bound of prefix snapshots (recurrent states + window pages); 0 or absent = no prefix caching. */
  readonly prefixCacheBytes?: number;
  /**
   * Prefix snapshots on disk as well (needs prefixCacheBytes > 0): a snapshot evicted from memory is
   * written there (spilled), persistSnapshots() writes the rest (at shutdown), and admission restores
   * the longest prefix found on disk when memory has no longer one.
   */
  readonly snapshotStore?: SnapshotStore;
}

export interface CacheUsage {
  /** Pages held by sequences (pages that only prefix snapshots hold are in prefixCachePages). */
  readonly pagesUsed: number;
  readonly pagesTotal: number;
  readonly pagesReserved: number;
  readonly slotsUsed: number;
  readonly slotsTotal: number;
  readonly kvBytesInUse: number;
  readonly stateBytesInUse: number;
  readonly prefixCacheBytes: number;
  readonly prefixCachePages: number;
}

/** Full-attention pool size when neither kvPages nor kvCacheBytes is given. */
const DEFAULT_FULL_ATTENTION_BYTES = 1 << 30;

interface SequenceEntry {
  readonly slot: number;
  readonly reservedPages: number;
}

export class CacheManager {
  readonly spec: CacheSpec;
  readonly pageTokens: number;
  readonly maxChunkTokens: number;
  readonly pool: BlockPool;
  readonly kv: PagedKvManager;
  readonly slots: StateSlots;
  /** null when prefix caching is off. */
  readonly prefix: PrefixStateCache | null;
  /** null when snapshots stay in memory only. */
  readonly store: SnapshotStore | null;
  private readonly sequences = new Map<string, SequenceEntry>();
  private reservedPages = 0;

  constructor(spec: CacheSpec, opts: CacheOptions) {
    this.spec = Object.freeze({ ...spec });
    this.pageTokens = opts.pageTokens ?? 64;
    this.maxChunkTokens = opts.maxChunkTokens;
    if (!Number.isInteger(this.maxChunkTokens) || this.maxChunkTokens < 1) throw new RangeError('maxChunkTokens must be ≥ 1');
    const pageSpec: PageSpec = {
      numAttnLayers: spec.numAttnLayers,
      numKvHeads: spec.numKvHeads,
      headDim: spec.headDim,
      pageTokens: this.pageTokens,
    };
    this.pool = new BlockPool(pageSpec, CacheManager.numPagesFor(spec, opts));
    this.kv = new PagedKvManager(this.pool, spec.windowTokens);
    this.slots = new StateSlots(
      { stateFloats: spec.stateFloats },
      opts.maxNumSeqs,
    );
    const prefixBytes = opts.prefixCacheBytes ?? 0;
    const store = prefixBytes > 0 ? (opts.snapshotStore ?? null) : null;
    this.store = store;
    this.prefix = prefixBytes > 0 ? new PrefixStateCache(this.pool, prefixBytes, store === null ? undefined : (e) => this.spill(e)) : null;
  }

  /** Pool size in pages from the options (see CacheOptions); 0 when the model has no attention layer. */
  static numPagesFor(spec: CacheSpec, opts: CacheOptions): number {
    if (spec.numAttnLayers === 0) return 0;
    const pageTokens = opts.pageTokens ?? 64;
    const pageBytes = bytesPerPage({ ...spec, pageTokens });
    if (opts.kvPages !== undefined) return opts.kvPages;
    if (opts.kvCacheBytes !== undefined) return Math.floor(opts.kvCacheBytes / pageBytes);
    if (spec.windowTokens !== null) {
      return opts.maxNumSeqs * PagedKvManager.maxPagesSwa(spec.windowTokens, opts.maxChunkTokens, pageTokens);
    }
    return Math.floor(DEFAULT_FULL_ATTENTION_BYTES / pageBytes);
  }

  /** Pages a sequence of at most `totalTokens` positions may ever hold (its reservation). */
  pagesToReserve(totalTokens: number): number {
    if (this.spec.numAttnLayers === 0) return 0;
    const all = Math.ceil(totalTokens / this.pageTokens);
    if (this.spec.windowTokens === null) return all;
    return Math.min(all, PagedKvManager.maxPagesSwa(this.spec.windowTokens, this.maxChunkTokens, this.pageTokens));
  }

  /** Could a sequence of `totalTokens` positions run if it were alone? (false: refuse it for good) */
  canEverFit(totalTokens: number): boolean {
    return this.pagesToReserve(totalTokens) <= this.pool.numPages;
  }

  /** Tokens one sequence can hold when alone (full attention); Infinity for SWA / pure GLA. */
  get maxTokensPerSequence(): number {
    if (this.spec.numAttnLayers === 0 || this.spec.windowTokens !== null) return Infinity;
    return this.pool.numPages * this.pageTokens;
  }

  /** Can a new sequence of at most `totalTokens` positions be admitted now (evicting prefix snapshots if need be)? */
  canAdmit(totalTokens: number): boolean {
    return this.slots.numFree > 0 && this.reservedPages + this.pagesToReserve(totalTokens) <= this.pool.numPages;
  }

  /**
   * Admits a sequence: takes a zeroed state slot and reserves its pages. With `prefixKeys`
   * (prefixKeys() of its prompt) it resumes from the longest cached prefix: the snapshot's states
   * are copied into the slot and its pages shared. Returns the number of restored tokens (0 = none),
   * or null when the sequence does not fit now.
   */
  admit(seqId: string, totalTokens: number, prefixKeys?: readonly string[], prefetched?: PrefetchedSnapshot): number | null {
    if (this.sequences.has(seqId)) throw new Error(`sequence ${seqId} already admitted`);
    if (!this.canAdmit(totalTokens)) return null;
    // A slot is taken even without recurrent layers (then it is empty): slots bound the running sequences.
    const slot = this.slots.allocate();
    if (slot === null) return null; // unreachable: canAdmit checked numFree
    const reservedPages = this.pagesToReserve(totalTokens);
    this.reservedPages += reservedPages;
    this.sequences.set(seqId, { slot, reservedPages });
    let restored = 0;
    let hit = this.prefix !== null && prefixKeys !== undefined ? this.prefix.lookup(prefixKeys) : null;
    if (this.store !== null && prefixKeys !== undefined) {
      // A longer prefix on disk than in memory: bring it into the memory cache first (from what the
      // scheduler prefetched, or read now). A failed restore may have evicted the memory hit to make
      // room: look it up again.
      const memoryTokens = hit?.numTokens ?? 0;
      let restoredHit: PrefixSnapshot | null = null;
      if (prefetched !== undefined) {
        if (prefetched.snapshot !== null && prefetched.snapshot.numTokens > memoryTokens) restoredHit = this.restore(prefetched.key, prefetched.snapshot);
      } else {
        const diskIndex = this.store.longest(prefixKeys, memoryTokens / this.pageTokens - 1);
        if (diskIndex >= 0) restoredHit = this.restoreFromDisk(prefixKeys[diskIndex] as string);
      }
      if (restoredHit !== null) hit = restoredHit;
      else if (hit !== null && !this.prefix?.has(hit.key)) hit = this.prefix?.lookup(prefixKeys) ?? null;
    }
    if (hit !== null) {
      hit.states.forEach((state, i) => this.slots.state(i, slot).set(state));
      if (this.spec.numAttnLayers > 0) this.kv.adopt(seqId, hit.firstPage, hit.pages, hit.numTokens);
      restored = hit.numTokens;
    }
    this.evictSnapshotsToFit([]);
    return restored;
  }

  /**
   * Reads a snapshot from disk into fresh pool pages and the memory cache; null when it cannot be read
   * or its pages do not fit beside the reservations (then nothing changes).
   */
  private restoreFromDisk(key: string): PrefixSnapshot | null {
    const stored = this.store?.read(key) ?? null;
    return stored === null ? null : this.restore(key, stored);
  }

  /** The prefix key (of `keys`) the disk holds longer than memory, for the scheduler to prefetch; null if none. */
  diskPrefixToPrefetch(keys: readonly string[]): string | null {
    if (this.store === null || this.prefix === null) return null;
    let memoryIndex = -1;
    for (let i = keys.length - 1; i >= 0; i--) {
      if (this.prefix.has(keys[i] as string)) {
        memoryIndex = i;
        break;
      }
    }
    const diskIndex = this.store.longest(keys, memoryIndex);
    return diskIndex < 0 ? null : (keys[diskIndex] as string);
  }

  /** Puts a snapshot read from disk into fresh pool pages and the memory cache (see restoreFromDisk). */
  private restore(key: string, stored: StoredSnapshot): PrefixSnapshot | null {
    const prefix = this.prefix;
    if (prefix === null) return null;
    if (prefix.has(key)) return prefix.lookup([key]); // meanwhile snapshotted or restored again
    if (stored.numPages > 0 && this.spec.numAttnLayers === 0) return null;
    const bytes = stored.glaStates.reduce((n, s) => n + s.byteLength, 0) + stored.numPages * this.pool.bytesPerPage;
    if (bytes > prefix.maxBytes) return null; // written by a server with a larger --prefix-cache-bytes
    // Fresh pages count in full against the pool: evict LRU snapshots until they fit.
    while (this.reservedPages + prefix.numPages + stored.numPages > this.pool.numPages) {
      if (!prefix.evictOldest()) return null;
    }
    const pages: number[] = [];
    for (let i = 0; i < stored.numPages; i++) {
      const page = this.pool.allocate();
      if (page === null) break; // unreachable: the loop above made room
      this.pool.pageView(page).set(stored.pageData.subarray(i * this.pool.floatsPerPage, (i + 1) * this.pool.floatsPerPage));
      pages.push(page);
    }
    const inserted = pages.length === stored.numPages && prefix.insert(key, stored.numTokens, stored.glaStates, stored.firstPage, pages);
    for (const page of pages) this.pool.release(page); // the snapshot holds them now (or nobody)
    return inserted ? prefix.lookup([key]) : null;
  }

  /**
   * Evicts LRU snapshots until Σ reservations + snapshot pages (+ the pages of `adding` that no
   * snapshot holds yet) ≤ pool size; false if even an empty cache would not do.
   */
  private evictSnapshotsToFit(adding: readonly number[]): boolean {
    if (this.prefix === null) return this.reservedPages <= this.pool.numPages;
    while (this.reservedPages + this.prefix.numPages + this.prefix.newPages(adding) > this.pool.numPages) {
      if (!this.prefix.evictOldest()) return false;
    }
    return true;
  }

  /**
   * Snapshots an admitted sequence whose first `numTokens` positions (a multiple of P) are computed
   * and whose state slot holds the state after exactly those tokens. Returns whether it was stored.
   */
  snapshot(seqId: string, key: string, numTokens: number): boolean {
    if (this.prefix === null || this.prefix.has(key)) return false;
    if (numTokens % this.pageTokens !== 0 || numTokens <= 0) throw new RangeError(`snapshot at ${numTokens}: not a positive multiple of ${this.pageTokens}`);
    const slot = this.slotOf(seqId);
    let firstPage = 0;
    let pages: number[] = [];
    if (this.spec.numAttnLayers > 0) {
      const table = this.kv.table(seqId);
      const range = this.kv.snapshotRange(numTokens);
      if (table === undefined || table.firstPage > range.firstPage || table.firstPage + table.pages.length < range.endPage) {
        throw new Error(`sequence ${seqId} no longer holds the pages of its first ${numTokens} tokens`);
      }
      firstPage = range.firstPage;
      pages = table.pages.slice(range.firstPage - table.firstPage, range.endPage - table.firstPage);
    }
    // The snapshot's pages count against the pool only where no snapshot holds them yet.
    if (!this.evictSnapshotsToFit(pages)) return false;
    const states = Array.from({ length: this.slots.numTensors }, (_, i) => this.slots.state(i, slot));
    return this.prefix.insert(key, numTokens, states, firstPage, pages);
  }

  /** Writes a snapshot to the disk store (in the background) unless it is there already. */
  private spill(entry: PrefixSnapshot): void {
    if (this.store === null || this.store.has(entry.key)) return;
    const pageData = new Float32Array(entry.pages.length * this.pool.floatsPerPage);
    entry.pages.forEach((page, i) => pageData.set(this.pool.pageView(page), i * this.pool.floatsPerPage));
    void this.store.write(entry.key, entry.numTokens, entry.firstPage, entry.states, pageData);
  }

  /** Writes every snapshot held in memory to the disk store and waits for the writes (shutdown). */
  async persistSnapshots(): Promise<void> {
    if (this.prefix === null || this.store === null) return;
    for (const entry of this.prefix.snapshots()) this.spill(entry);
    await this.store.flush();
  }

  /** Can an admitted sequence write positions [startPos, startPos+numTokens) now? */
  canAppend(seqId: string, startPos: number, numTokens: number): boolean {
    const entry = this.sequences.get(seqId);
    if (entry === undefined || numTokens > this.maxChunkTokens) return false;
    if (this.spec.numAttnLayers === 0) return true;
    const needed = this.kv.newPagesNeeded(seqId, startPos, numTokens);
    return needed <= this.pool.numFree && this.kv.pagesHeld(seqId) + needed <= entry.reservedPages + this.releasable(seqId, startPos);
  }

  /** Pages ensure() would release before a chunk at startPos (they fell out of the window). */
  private releasable(seqId: string, startPos: number): number {
    const table = this.kv.table(seqId);
    if (table === undefined || this.spec.windowTokens === null) return 0;
    const oldest = startPos - this.spec.windowTokens;
    const firstNeeded = oldest <= 0 ? 0 : Math.floor(oldest / this.pageTokens);
    return Math.max(0, Math.min(table.pages.length, firstNeeded - table.firstPage));
  }

  /**
   * Allocates pages for positions [startPos, startPos+numTokens) of an admitted sequence (releasing
   * pages that left the window). Within the reservation this always succeeds; otherwise it throws.
   */
  append(seqId: string, startPos: number, numTokens: number): void {
    if (!this.canAppend(seqId, startPos, numTokens)) {
      throw new Error(`sequence ${seqId}: ${numTokens} tokens at ${startPos} exceed its reservation or the chunk limit`);
    }
    if (this.spec.numAttnLayers === 0) return;
    if (!this.kv.ensure(seqId, startPos, numTokens)) throw new Error('KV pool exhausted inside a reservation'); // unreachable
  }

  /** Frees the slot, the pages and the reservation of a sequence (finish or abort). Unknown ids are ignored. */
  free(seqId: string): void {
    const entry = this.sequences.get(seqId);
    if (entry === undefined) return;
    this.kv.free(seqId);
    this.slots.release(entry.slot);
    this.reservedPages -= entry.reservedPages;
    this.sequences.delete(seqId);
  }

  /** State slot of an admitted sequence. */
  slotOf(seqId: string): number {
    const entry = this.sequences.get(seqId);
    if (entry === undefined) throw new Error(`sequence ${seqId} is not admitted`);
    return entry.slot;
  }

  tableOf(seqId: string): BlockTable | undefined {
    return this.kv.table(seqId);
  }

  usage(): CacheUsage {
    const cacheOnly = this.prefix?.pagesHeldOnlyHere() ?? 0;
    return {
      pagesUsed: this.pool.numUsed - cacheOnly,
      pagesTotal: this.pool.numPages,
      pagesReserved: this.reservedPages,
      slotsUsed: this.sequences.size,
      slotsTotal: this.slots.numSlots,
      kvBytesInUse: (this.pool.numUsed - cacheOnly) * this.pool.bytesPerPage,
      stateBytesInUse: this.slots.numUsed * this.slots.bytesPerSlot,
      prefixCacheBytes: this.prefix?.bytes ?? 0,
      prefixCachePages: this.prefix?.numPages ?? 0,
    };
  }
}
