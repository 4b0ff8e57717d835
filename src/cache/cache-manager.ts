// CacheManager: the one object the scheduler asks "does this fit?". It coordinates the per-sequence
// memory of a hybrid model — a slot of recurrent state (StateSlots: every GLA/… state tensor) and, per
// KV group (./kv-group.ts: window or full attention), a block table over that group's page pool — and
// the prefix snapshots that share those pages.
//
// Pages are allotted per group kind:
//   window  admission reserves the most pages the sequence can hold, min(⌈(W+C)/P⌉+1, ⌈N/P⌉), and admits
//           only while Σ reservations + pages held by snapshots ≤ pool size (evicting LRU snapshots): an
//           admitted sequence always gets its next chunk's pages.
//   full    nothing is reserved. Admission needs the first chunk's pages free (plus a 1% watermark);
//           later chunks and decode steps take pages as they go (evicting snapshots that hold pages
//           nobody else does). When append() finds no page, the scheduler preempts a sequence (frees
//           it and requeues it) and tries again.
// The cache gets plain numbers; it imports nothing from the engine.
import type { BlockTable } from './paged-kv.ts';
import { DEFAULT_FULL_ATTENTION_BYTES, KvGroup, type KvGroupSpec } from './kv-group.ts';
import { PrefixStateCache, type PrefixSnapshot, type SnapshotPages } from './prefix-cache.ts';
import type { SnapshotStore, StoredSnapshot } from './snapshot-store.ts';
import { StateSlots } from './state-slots.ts';

/** A snapshot read from disk before admission (Scheduler), or null when the read failed. */
export interface PrefetchedSnapshot {
  readonly key: string;
  readonly snapshot: StoredSnapshot | null;
}

export interface CacheSpec {
  /** Floats of each recurrent state tensor of one sequence (the model's layer plan; GLA: Hkv·d·d). */
  readonly stateFloats: readonly number[];
  /** Attention layers by kind (window / full); empty for a model of recurrent layers only. */
  readonly kvGroups: readonly KvGroupSpec[];
}

export interface CacheOptions {
  /** Tokens per KV page (P). Default 64. */
  readonly pageTokens?: number;
  /** Pages of each KV group's pool (by group); wins over kvCacheBytes. */
  readonly kvPages?: number | readonly number[];
  /**
   * KV bytes (rounded down to whole pages). Window groups take what maxNumSeqs sequences can hold (or
   * their share of this); full groups take the rest (default 1 GiB).
   */
  readonly kvCacheBytes?: number;
  /** Number of state slots = most sequences admitted at once. */
  readonly maxNumSeqs: number;
  /** Largest chunk the scheduler will ever ask for (prefill chunk; decode is 1). */
  readonly maxChunkTokens: number;
  /** Byte bound of prefix snapshots (recurrent states + pages); 0 or absent = no prefix caching. */
  readonly prefixCacheBytes?: number;
  /**
   * Prefix snapshots on disk as well (needs prefixCacheBytes > 0; models with at most one KV group): a
   * snapshot evicted from memory is written there (spilled), persistSnapshots() writes the rest (at
   * shutdown), and admission restores the longest prefix found on disk when memory has no longer one.
   */
  readonly snapshotStore?: SnapshotStore;
}

/** What admit() needs to know about a sequence. */
export interface AdmitRequest {
  /** Most positions it will ever hold (prompt + max new tokens). */
  readonly totalTokens: number;
  /** Positions of its first chunk: full-attention groups need those pages free now. */
  readonly firstChunkTokens: number;
  /** Resume from the longest cached prefix of `tokens` with at most `maxTokens` tokens (keys: prefix-keys.ts). */
  readonly prefix?: { readonly keys: readonly string[]; readonly tokens: ArrayLike<number>; readonly maxTokens: number };
  /** A snapshot the scheduler read from disk for this sequence (then the disk is not read here). */
  readonly prefetched?: PrefetchedSnapshot;
}

export interface CacheUsage {
  /** Pages held by sequences, all groups (pages that only prefix snapshots hold are in prefixCachePages). */
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

interface SequenceEntry {
  readonly slot: number;
  /** Reserved pages per group (0 for lazy groups). */
  readonly reserved: readonly number[];
}

export class CacheManager {
  readonly spec: CacheSpec;
  readonly pageTokens: number;
  readonly maxChunkTokens: number;
  readonly groups: readonly KvGroup[];
  readonly slots: StateSlots;
  /** null when prefix caching is off. */
  readonly prefix: PrefixStateCache | null;
  /** null when snapshots stay in memory only. */
  readonly store: SnapshotStore | null;
  private readonly sequences = new Map<string, SequenceEntry>();

  constructor(spec: CacheSpec, opts: CacheOptions) {
    this.spec = Object.freeze({ stateFloats: Object.freeze([...spec.stateFloats]), kvGroups: Object.freeze(spec.kvGroups.map((g) => Object.freeze({ ...g }))) });
    this.pageTokens = opts.pageTokens ?? 64;
    this.maxChunkTokens = opts.maxChunkTokens;
    if (!Number.isInteger(this.maxChunkTokens) || this.maxChunkTokens < 1) throw new RangeError('maxChunkTokens must be ≥ 1');
    const pages = CacheManager.numPagesFor(spec, opts);
    this.groups = spec.kvGroups.map((g, i) => new KvGroup(g, pages[i] ?? 0, this.pageTokens));
    this.slots = new StateSlots({ stateFloats: spec.stateFloats }, opts.maxNumSeqs);
    const prefixBytes = opts.prefixCacheBytes ?? 0;
    const store = prefixBytes > 0 && this.groups.length <= 1 ? (opts.snapshotStore ?? null) : null;
    this.store = store;
    this.prefix =
      prefixBytes > 0
        ? new PrefixStateCache(
            this.groups.map((g) => g.pool),
            this.pageTokens,
            prefixBytes,
            store === null ? undefined : (e) => this.spill(e),
          )
        : null;
  }

  /** Pool size in pages of each KV group from the options (see CacheOptions). */
  static numPagesFor(spec: CacheSpec, opts: CacheOptions): number[] {
    const P = opts.pageTokens ?? 64;
    const { kvPages, kvCacheBytes } = opts;
    if (kvPages !== undefined) return spec.kvGroups.map((_, i) => (typeof kvPages === 'number' ? kvPages : (kvPages[i] ?? 0)));
    const pageBytes = (g: KvGroupSpec): number => g.numLayers * 2 * g.numKvHeads * g.headDim * P * 4;
    const windowPages = spec.kvGroups.map((g) => (g.kind === 'window' ? KvGroup.defaultPages(g, opts.maxNumSeqs, opts.maxChunkTokens, P) : 0));
    const fullGroups = spec.kvGroups.filter((g) => g.kind === 'full');
    if (kvCacheBytes === undefined) {
      const bytesPerFull = DEFAULT_FULL_ATTENTION_BYTES / Math.max(1, fullGroups.length);
      return spec.kvGroups.map((g, i) => (g.kind === 'window' ? (windowPages[i] ?? 0) : KvGroup.defaultPages(g, opts.maxNumSeqs, opts.maxChunkTokens, P, bytesPerFull)));
    }
    if (fullGroups.length === 0) {
      // Only window groups: the bytes are shared in proportion to their default sizes.
      const wanted = spec.kvGroups.reduce((n, g, i) => n + (windowPages[i] ?? 0) * pageBytes(g), 0);
      return spec.kvGroups.map((g, i) => Math.floor(((windowPages[i] ?? 0) * kvCacheBytes) / Math.max(1, wanted)));
    }
    // Window groups keep their default; full groups share what is left equally.
    const windowBytes = spec.kvGroups.reduce((n, g, i) => n + (windowPages[i] ?? 0) * pageBytes(g), 0);
    const perFull = Math.max(0, kvCacheBytes - windowBytes) / fullGroups.length;
    return spec.kvGroups.map((g, i) => (g.kind === 'window' ? (windowPages[i] ?? 0) : Math.floor(perFull / pageBytes(g))));
  }

  /** Could a sequence of `totalTokens` positions run if it were alone? (false: refuse it for good) */
  canEverFit(totalTokens: number): boolean {
    return this.groups.every((g) => g.peakPages(totalTokens, this.maxChunkTokens) <= g.pool.numPages);
  }

  /** Tokens one sequence can hold when alone (full attention); Infinity without full-attention groups. */
  get maxTokensPerSequence(): number {
    let tokens = Infinity;
    for (const g of this.groups) if (g.spec.kind === 'full') tokens = Math.min(tokens, g.pool.numPages * this.pageTokens);
    return tokens;
  }

  /** Pages of a full-attention pool kept free at admission, so running sequences can still grow. */
  private watermark(g: KvGroup): number {
    return Math.max(1, Math.floor(g.pool.numPages / 100));
  }

  /**
   * Can a new sequence be admitted now? Window groups: its reservation fits beside the others (snapshot
   * pages are evicted as needed). Full groups: its first chunk's pages (+ watermark) are free or can be
   * freed by evicting snapshots.
   */
  private makeRoomToAdmit(req: AdmitRequest): boolean {
    if (this.slots.numFree === 0) return false;
    for (const g of this.groups) {
      if (g.isLazy) {
        const need = Math.ceil(Math.min(req.totalTokens, req.firstChunkTokens) / this.pageTokens) + 1 + this.watermark(g);
        if (!this.freePages(g, need)) return false;
      } else if (g.reservedPages + g.reservePages(req.totalTokens, this.maxChunkTokens) > g.pool.numPages) {
        return false;
      }
    }
    return true;
  }

  /**
   * Admits a sequence: takes a zeroed state slot and reserves its window pages. With `req.prefix` it
   * resumes from the longest cached prefix: the snapshot's states are copied into the slot and its
   * pages shared (a partly written last page is copied). Returns the number of restored tokens
   * (0 = none), or null when the sequence does not fit now.
   */
  admit(seqId: string, req: AdmitRequest): number | null {
    if (this.sequences.has(seqId)) throw new Error(`sequence ${seqId} already admitted`);
    if (!this.makeRoomToAdmit(req)) return null;
    // A slot is taken even without recurrent layers (then it is empty): slots bound the running sequences.
    const slot = this.slots.allocate();
    if (slot === null) return null; // unreachable: makeRoomToAdmit checked numFree
    const reserved = this.groups.map((g) => (g.isLazy ? 0 : g.reservePages(req.totalTokens, this.maxChunkTokens)));
    this.groups.forEach((g, i) => (g.reservedPages += reserved[i] ?? 0));
    this.sequences.set(seqId, { slot, reserved });
    let restored = 0;
    if (req.prefix !== undefined) {
      const hit = this.findPrefix(req.prefix, req.prefetched);
      if (hit !== null && this.adoptSnapshot(seqId, slot, hit)) restored = hit.numTokens;
    }
    this.evictSnapshotsToFit();
    return restored;
  }

  /** The longest prefix snapshot for `prefix`, from memory or (when longer there) from disk. */
  private findPrefix(prefix: NonNullable<AdmitRequest['prefix']>, prefetched: PrefetchedSnapshot | undefined): PrefixSnapshot | null {
    if (this.prefix === null) return null;
    const lookup = (): PrefixSnapshot | null => this.prefix?.lookup(prefix.keys, prefix.tokens, prefix.maxTokens) ?? null;
    let hit = lookup();
    if (this.store === null) return hit;
    // A longer prefix on disk than in memory: bring it into the memory cache first (from what the
    // scheduler prefetched, or read now). A failed restore may have evicted the memory hit to make
    // room: look it up again.
    const memoryTokens = hit?.numTokens ?? 0;
    let fromDisk: PrefixSnapshot | null = null;
    if (prefetched !== undefined) {
      if (prefetched.snapshot !== null && prefetched.snapshot.numTokens > memoryTokens) fromDisk = this.restore(prefetched.key, prefetched.snapshot);
    } else {
      const diskIndex = this.store.longest(prefix.keys, Math.floor(memoryTokens / this.pageTokens) - 1);
      if (diskIndex >= 0) fromDisk = this.restoreFromDisk(prefix.keys[diskIndex] as string);
    }
    if (fromDisk !== null) hit = fromDisk;
    else if (hit !== null && !this.prefix.has(hit.key)) hit = lookup();
    return hit;
  }

  /**
   * Starts a just admitted sequence from a snapshot: states copied, pages shared, the page that will
   * receive the next position copied if the snapshot ends inside it. False (nothing adopted) when a
   * full-attention pool has no page for that copy.
   */
  private adoptSnapshot(seqId: string, slot: number, hit: PrefixSnapshot): boolean {
    const s = hit.numTokens;
    const partial = s % this.pageTokens !== 0;
    if (partial && !this.groups.every((g) => !g.isLazy || this.freePages(g, 1))) return false;
    hit.states.forEach((state, i) => this.slots.state(i, slot).set(state));
    this.groups.forEach((g, i) => {
      const pages = hit.groups[i] ?? { firstPage: 0, pages: [] };
      g.kv.adopt(seqId, pages.firstPage, pages.pages, s);
      // Window groups: the copy replaces a held page, within the reservation; there is a free page
      // because the shared one is counted both by the sequence and by the snapshot.
      if (partial && !g.kv.copyOnWrite(seqId, s)) throw new Error('no page for a copy-on-write'); // unreachable
    });
    return true;
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
    if (prefix.has(key)) return prefix.get(key); // meanwhile snapshotted or restored again
    const g = this.groups[0];
    if (stored.numPages > 0 && g === undefined) return null;
    const bytes = stored.glaStates.reduce((n, s) => n + s.byteLength, 0) + stored.numPages * (g?.pool.bytesPerPage ?? 0);
    if (bytes > prefix.maxBytes) return null; // written by a server with a larger --prefix-cache-bytes
    const pages: number[] = [];
    if (g !== undefined && stored.numPages > 0) {
      // Fresh pages count in full against the pool: evict LRU snapshots until they fit.
      if (g.isLazy) {
        if (!this.freePages(g, stored.numPages)) return null;
      } else {
        while (g.reservedPages + prefix.numPages(0) + stored.numPages > g.pool.numPages) {
          if (!prefix.evictOldest()) return null;
        }
      }
      for (let i = 0; i < stored.numPages; i++) {
        const page = g.pool.allocate();
        if (page === null) break; // unreachable: room was made above
        g.pool.pageView(page).set(stored.pageData.subarray(i * g.pool.floatsPerPage, (i + 1) * g.pool.floatsPerPage));
        pages.push(page);
      }
    }
    const groups: SnapshotPages[] = g === undefined ? [] : [{ firstPage: stored.firstPage, pages }];
    const inserted = pages.length === stored.numPages && prefix.insert(key, stored.numTokens, stored.glaStates, groups);
    for (const page of pages) g?.pool.release(page); // the snapshot holds them now (or nobody)
    return inserted ? prefix.get(key) : null;
  }

  /**
   * Window groups: evicts LRU snapshots until Σ reservations + snapshot pages (+ the pages of
   * `adding[g]` that no snapshot holds yet) ≤ pool size; false if even an empty cache would not do.
   */
  private evictSnapshotsToFit(adding: readonly (readonly number[])[] = []): boolean {
    for (let i = 0; i < this.groups.length; i++) {
      const g = this.groups[i]!;
      if (g.isLazy) continue;
      const extra = (): number => (this.prefix === null ? 0 : this.prefix.numPages(i) + this.prefix.newPages(i, adding[i] ?? []));
      while (g.reservedPages + extra() > g.pool.numPages) {
        if (this.prefix === null || !this.prefix.evictOldest()) return false;
      }
    }
    return true;
  }

  /** Full groups: evicts LRU snapshots until `numPages` pages are free; false if even that does not do. */
  private freePages(g: KvGroup, numPages: number): boolean {
    while (g.pool.numFree < numPages) {
      if (this.prefix === null || !this.prefix.evictOldest()) return false;
    }
    return true;
  }

  /**
   * Snapshots an admitted sequence whose first `numTokens` positions are computed and whose state slot
   * holds the state after exactly those tokens. Page-aligned snapshots are keyed by `key` alone; others
   * pass `exact` (their whole pages' key and the tokens after them). Returns whether it was stored.
   */
  snapshot(seqId: string, key: string, numTokens: number, exact: { readonly baseKey: string; readonly tail: ArrayLike<number> } | null = null): boolean {
    if (this.prefix === null || this.prefix.has(key)) return false;
    if (numTokens <= 0 || (exact === null && numTokens % this.pageTokens !== 0)) throw new RangeError(`snapshot at ${numTokens}: not a positive multiple of ${this.pageTokens}`);
    const slot = this.slotOf(seqId);
    const groups: SnapshotPages[] = [];
    for (const g of this.groups) {
      const table = g.kv.table(seqId);
      const range = g.kv.snapshotRange(numTokens);
      if (table === undefined || table.firstPage > range.firstPage || table.firstPage + table.pages.length < range.endPage) {
        throw new Error(`sequence ${seqId} no longer holds the pages of its first ${numTokens} tokens`);
      }
      groups.push({ firstPage: range.firstPage, pages: table.pages.slice(range.firstPage - table.firstPage, range.endPage - table.firstPage) });
    }
    // Window groups: the snapshot's pages count against the pool only where no snapshot holds them yet.
    if (!this.evictSnapshotsToFit(groups.map((g) => g.pages))) return false;
    const states = Array.from({ length: this.slots.numTensors }, (_, i) => this.slots.state(i, slot));
    return this.prefix.insert(key, numTokens, states, groups, exact);
  }

  /** Writes a snapshot to the disk store (in the background) unless it is there already. Page-aligned, one group. */
  private spill(entry: PrefixSnapshot): void {
    if (this.store === null || entry.exact !== null || this.store.has(entry.key)) return;
    const g = this.groups[0];
    const pages = entry.groups[0]?.pages ?? [];
    const floatsPerPage = g?.pool.floatsPerPage ?? 0;
    const pageData = new Float32Array(pages.length * floatsPerPage);
    if (g !== undefined) pages.forEach((page, i) => pageData.set(g.pool.pageView(page), i * floatsPerPage));
    void this.store.write(entry.key, entry.numTokens, entry.groups[0]?.firstPage ?? 0, entry.states, pageData);
  }

  /** Writes every snapshot held in memory to the disk store and waits for the writes (shutdown). */
  async persistSnapshots(): Promise<void> {
    if (this.prefix === null || this.store === null) return;
    for (const entry of this.prefix.snapshots()) this.spill(entry);
    await this.store.flush();
  }

  /** Can an admitted sequence write positions [startPos, startPos+numTokens) now (without evicting anything)? */
  canAppend(seqId: string, startPos: number, numTokens: number): boolean {
    const entry = this.sequences.get(seqId);
    if (entry === undefined || numTokens > this.maxChunkTokens) return false;
    return this.groups.every((g, i) => {
      if (!g.kv.fits(seqId, startPos, numTokens)) return false;
      return g.isLazy || g.kv.pagesHeld(seqId) + g.kv.newPagesNeeded(seqId, startPos, numTokens) <= (entry.reserved[i] ?? 0) + this.releasable(g, seqId, startPos);
    });
  }

  /** Pages ensure() would release before a chunk at startPos (they fell out of the window). */
  private releasable(g: KvGroup, seqId: string, startPos: number): number {
    const table = g.kv.table(seqId);
    if (table === undefined || g.spec.windowTokens === null) return 0;
    const oldest = startPos - g.spec.windowTokens;
    const firstNeeded = oldest <= 0 ? 0 : Math.floor(oldest / this.pageTokens);
    return Math.max(0, Math.min(table.pages.length, firstNeeded - table.firstPage));
  }

  /**
   * Allocates pages for positions [startPos, startPos+numTokens) of an admitted sequence (releasing
   * pages that left a window). Full-attention groups evict snapshots for room; returns false, changing
   * nothing, when a full-attention pool still has too few pages (the scheduler then preempts). Window
   * groups always succeed within the reservation; beyond it this throws.
   */
  append(seqId: string, startPos: number, numTokens: number): boolean {
    const entry = this.sequences.get(seqId);
    if (entry === undefined) throw new Error(`sequence ${seqId} is not admitted`);
    if (numTokens > this.maxChunkTokens) throw new Error(`sequence ${seqId}: a chunk of ${numTokens} tokens exceeds the chunk limit ${this.maxChunkTokens}`);
    for (const [i, g] of this.groups.entries()) {
      const needed = g.kv.newPagesNeeded(seqId, startPos, numTokens);
      if (g.isLazy) {
        if (!this.freePages(g, needed - g.kv.freeableBefore(seqId, startPos))) return false;
      } else if (g.kv.pagesHeld(seqId) + needed > (entry.reserved[i] ?? 0) + this.releasable(g, seqId, startPos)) {
        throw new Error(`sequence ${seqId}: ${numTokens} tokens at ${startPos} exceed its reservation`);
      }
    }
    for (const g of this.groups) {
      if (!g.kv.ensure(seqId, startPos, numTokens)) throw new Error('KV pool exhausted after a successful capacity check'); // unreachable
    }
    return true;
  }

  /** Frees the slot, the pages and the reservations of a sequence (finish, abort, preemption). Unknown ids are ignored. */
  free(seqId: string): void {
    const entry = this.sequences.get(seqId);
    if (entry === undefined) return;
    this.groups.forEach((g, i) => {
      g.kv.free(seqId);
      g.reservedPages -= entry.reserved[i] ?? 0;
    });
    this.slots.release(entry.slot);
    this.sequences.delete(seqId);
  }

  /** Pages sequence `seqId` holds in all groups (the scheduler picks preemption victims by it). */
  pagesHeld(seqId: string): number {
    return this.groups.reduce((n, g) => n + g.kv.pagesHeld(seqId), 0);
  }

  /** State slot of an admitted sequence. */
  slotOf(seqId: string): number {
    const entry = this.sequences.get(seqId);
    if (entry === undefined) throw new Error(`sequence ${seqId} is not admitted`);
    return entry.slot;
  }

  /** Block table of a sequence in KV group `group` (default the first). */
  tableOf(seqId: string, group = 0): BlockTable | undefined {
    return this.groups[group]?.kv.table(seqId);
  }

  usage(): CacheUsage {
    let pagesUsed = 0;
    let pagesTotal = 0;
    let pagesReserved = 0;
    let kvBytesInUse = 0;
    let prefixCachePages = 0;
    this.groups.forEach((g, i) => {
      const used = g.pool.numUsed - (this.prefix?.pagesHeldOnlyHere(i) ?? 0);
      pagesUsed += used;
      pagesTotal += g.pool.numPages;
      pagesReserved += g.reservedPages;
      kvBytesInUse += used * g.pool.bytesPerPage;
      prefixCachePages += this.prefix?.numPages(i) ?? 0;
    });
    return {
      pagesUsed,
      pagesTotal,
      pagesReserved,
      slotsUsed: this.sequences.size,
      slotsTotal: this.slots.numSlots,
      kvBytesInUse,
      stateBytesInUse: this.slots.numUsed * this.slots.bytesPerSlot,
      prefixCacheBytes: this.prefix?.bytes ?? 0,
      prefixCachePages,
    };
  }
}
