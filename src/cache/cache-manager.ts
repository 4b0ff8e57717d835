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
// With a snapshot folder shared by every replica (SharedSnapshots), snapshots are also written to
// disk, and a waiting request's longer prefix on disk is read ahead and restored at admission.
// The cache gets plain numbers; it imports nothing from the engine.
import type { BlockTable } from './paged-kv.ts';
import { DEFAULT_FULL_ATTENTION_BYTES, KvGroup, type KvGroupSpec } from './kv-group.ts';
import { PrefixStateCache, type PrefixSnapshot, type SnapshotPages } from './prefix-cache.ts';
import { SharedSnapshots, SnapshotUses, type PrefixCacheEntryInfo, type SnapshotDiskStats, type SnapshotFolderOptions } from './shared-snapshots.ts';
import type { PageGroupData, SnapshotData, SnapshotExpectation } from './snapshot-file.ts';
import type { PrefetchedSnapshot } from './snapshot-reads.ts';
import type { SnapshotStore } from './snapshot-store.ts';
import { StateSlots } from './state-slots.ts';

export type { PrefetchedSnapshot } from './snapshot-reads.ts';
export type { PrefixCacheEntryInfo, SnapshotDiskStats, SnapshotFolderOptions } from './shared-snapshots.ts';

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
  /**
   * Byte bound of prefix snapshots (recurrent states + pages); 0 or absent = no prefix caching. Disk
   * reads in flight for waiting requests may hold as much again (SnapshotReads).
   */
  readonly prefixCacheBytes?: number;
  /**
   * Prefix snapshots on disk as well, in a folder other replicas may share (needs prefixCacheBytes > 0):
   * written through (≥ shareMinTokens) or when memory evicts them, all at persistSnapshots() (shutdown);
   * admission restores the longest prefix found on disk (prefetchDiskPrefix) when memory has no longer one.
   */
  readonly snapshotFolder?: SnapshotFolderOptions;
}

/** What admit() needs to know about a sequence. */
export interface AdmitRequest {
  /** Most positions it will ever hold (prompt + max new tokens). */
  readonly totalTokens: number;
  /** Positions of its first chunk: full-attention groups need those pages free now. */
  readonly firstChunkTokens: number;
  /** Resume from the longest cached prefix of `tokens` with at most `maxTokens` tokens (keys: prefix-keys.ts). */
  readonly prefix?: { readonly keys: readonly string[]; readonly tokens: ArrayLike<number>; readonly maxTokens: number };
  /** A snapshot the scheduler read from disk for this sequence (prefetchDiskPrefix); the disk is never read here. */
  readonly prefetched?: PrefetchedSnapshot | null;
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
  readonly shared: SharedSnapshots | null;
  /** Hits and last use of snapshots here (the prefix-cache API lists them). */
  private readonly uses = new SnapshotUses();
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
    const folder = prefixBytes > 0 ? opts.snapshotFolder : undefined;
    this.prefix =
      prefixBytes > 0
        ? new PrefixStateCache(
            this.groups.map((g) => g.pool),
            this.pageTokens,
            prefixBytes,
            (e) => this.shared?.evicted(e),
          )
        : null;
    this.shared =
      folder === undefined || this.prefix === null
        ? null
        : new SharedSnapshots(folder, this.snapshotExpectation(folder.modelIdentity), prefixBytes, this.prefix, (e) => this.pageGroupsOf(e), this.uses);
  }

  /** A memory snapshot's pages as views of the pools, one page group per KV group (snapshotExpectation). */
  private pageGroupsOf(entry: PrefixSnapshot): PageGroupData[] {
    return this.groups.map((g, i) => {
      const pages = entry.groups[i] ?? { firstPage: 0, pages: [] };
      return { firstPage: pages.firstPage, blocks: pages.pages.map((page) => g.pool.pageView(page)) };
    });
  }

  /** The snapshot folder's store; null without one. */
  get store(): SnapshotStore | null {
    return this.shared?.store ?? null;
  }

  /** What a snapshot file of this model must hold: the recurrent states, then per KV group its pages. */
  snapshotExpectation(modelIdentity: string): SnapshotExpectation {
    return {
      modelIdentity,
      pageTokens: this.pageTokens,
      arrays: [...this.spec.stateFloats],
      floatsPerPage: this.groups.map((g) => g.pool.floatsPerPage),
      pagesFor: (numTokens) =>
        this.groups.map((g) => {
          const { firstPage, endPage } = g.kv.snapshotRange(numTokens);
          return { firstPage, numPages: endPage - firstPage };
        }),
    };
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

  /** The longest prefix snapshot for `prefix`, from memory or (when longer there) from what was read from disk. */
  private findPrefix(prefix: NonNullable<AdmitRequest['prefix']>, prefetched: PrefetchedSnapshot | null | undefined): PrefixSnapshot | null {
    if (this.prefix === null) return null;
    const lookup = (): PrefixSnapshot | null => this.prefix?.lookup(prefix.keys, prefix.tokens, prefix.maxTokens) ?? null;
    let hit = lookup();
    const fromDisk = prefetched?.snapshot ?? null;
    if (prefetched != null && fromDisk !== null && fromDisk.numTokens > (hit?.numTokens ?? 0) && fromDisk.numTokens <= prefix.maxTokens) {
      // A longer prefix read from disk (prefetchDiskPrefix, before admission): bring it into the memory
      // cache. A failed restore may have evicted the memory hit to make room: look it up again.
      const restored = this.restore(prefetched.key, fromDisk);
      if (restored !== null) hit = restored;
      else if (hit !== null && !this.prefix.has(hit.key)) hit = lookup();
    }
    if (hit !== null) this.uses.used(hit.key, true);
    return hit;
  }

  /**
   * Starts a just admitted sequence from a snapshot: states copied, pages shared, the page that will
   * receive the next position copied if the snapshot ends inside it. False (nothing adopted) when a
   * pool has no page for that copy even after evicting other snapshots.
   *
   * The copy needs a free page now, in window groups too: the new sequence's reservation is counted
   * already, but the snapshots that it pushes over the pool's size are only evicted after admission
   * (evictSnapshotsToFit), so every page may still be taken. Snapshots are evicted first, never the
   * hit itself (its pages are about to be shared; evicting it first would free them).
   */
  private adoptSnapshot(seqId: string, slot: number, hit: PrefixSnapshot): boolean {
    const s = hit.numTokens;
    const partial = s % this.pageTokens !== 0;
    if (partial && !this.groups.every((g) => this.freePages(g, 1, hit.key))) return false;
    hit.states.forEach((state, i) => this.slots.state(i, slot).set(state));
    this.groups.forEach((g, i) => {
      const pages = hit.groups[i] ?? { firstPage: 0, pages: [] };
      g.kv.adopt(seqId, pages.firstPage, pages.pages, s);
      if (partial && !g.kv.copyOnWrite(seqId, s)) throw new Error('no page for a copy-on-write'); // unreachable: freed above
    });
    return true;
  }

  /**
   * Reads ahead, for a request about to wait for admission, the longest prefix of `keys` that the
   * disk holds beyond memory's (one read per key, shared, within the read budget). null when there
   * is no snapshot folder or memory already holds the longest key; the promise never rejects.
   */
  prefetchDiskPrefix(keys: readonly string[]): Promise<PrefetchedSnapshot | null> | null {
    if (this.shared === null || this.prefix === null) return null;
    let memoryIndex = -1;
    for (let i = keys.length - 1; i >= 0; i--) {
      if (this.prefix.has(keys[i]!)) {
        memoryIndex = i;
        break;
      }
    }
    return memoryIndex >= keys.length - 1 ? null : this.shared.prefetch(keys, memoryIndex);
  }

  /**
   * Puts a snapshot read from disk into fresh pool pages and the memory cache; null when its pages do
   * not fit beside the reservations (then nothing changes).
   */
  private restore(key: string, stored: SnapshotData): PrefixSnapshot | null {
    const prefix = this.prefix;
    if (prefix === null) return null;
    if (prefix.has(key)) return prefix.get(key); // meanwhile snapshotted or restored again
    if (stored.groups.length !== this.groups.length) return null; // checked on read already
    const bytes = stored.arrays.reduce((n, s) => n + s.byteLength, 0) + stored.groups.reduce((n, g, i) => n + g.blocks.length * (this.groups[i]?.pool.bytesPerPage ?? 0), 0);
    if (bytes > prefix.maxBytes) return null; // written by a server with a larger --prefix-cache-bytes
    // Fresh pages count in full against each pool: evict LRU snapshots until they fit.
    for (const [i, g] of this.groups.entries()) {
      const numPages = stored.groups[i]?.blocks.length ?? 0;
      if (g.isLazy) {
        if (!this.freePages(g, numPages)) return null;
      } else {
        while (g.reservedPages + prefix.numPages(i) + numPages > g.pool.numPages) {
          if (!prefix.evictOldest()) return null;
        }
      }
    }
    const groups: SnapshotPages[] = this.groups.map((g, i) => {
      const data = stored.groups[i]!;
      const pages: number[] = [];
      for (const block of data.blocks) {
        const page = g.pool.allocate();
        if (page === null) break; // unreachable: room was made above
        g.pool.pageView(page).set(block);
        pages.push(page);
      }
      return { firstPage: data.firstPage, pages };
    });
    const complete = groups.every((g, i) => g.pages.length === (stored.groups[i]?.blocks.length ?? 0));
    const inserted = complete && prefix.insert(key, stored.numTokens, stored.arrays, groups);
    groups.forEach((g, i) => g.pages.forEach((page) => this.groups[i]?.pool.release(page))); // the snapshot holds them now (or nobody)
    if (!inserted) return null;
    this.shared?.restored(key);
    return prefix.get(key);
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

  /** Evicts LRU snapshots (never `keep`'s) until `numPages` pages of `g` are free; false if even that does not do. */
  private freePages(g: KvGroup, numPages: number, keep: string | null = null): boolean {
    while (g.pool.numFree < numPages) {
      if (this.prefix === null || !this.prefix.evictOldest(keep)) return false;
    }
    return true;
  }

  /**
   * Snapshots an admitted sequence whose first `numTokens` positions are computed and whose state slot
   * holds the state after exactly those tokens. Page-aligned snapshots are keyed by `key` alone; others
   * pass `exact` (their whole pages' key and the tokens after them). Returns whether it was stored.
   */
  snapshot(seqId: string, key: string, numTokens: number, exact: { readonly baseKey: string; readonly tail: ArrayLike<number> } | null = null, share = false): boolean {
    if (this.prefix === null) return false;
    if (this.prefix.has(key)) {
      if (share) this.publishSnapshot(key); // already taken (by another request): still publish it
      return false;
    }
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
    if (!this.prefix.insert(key, numTokens, states, groups, exact)) return false;
    this.uses.used(key, false);
    const entry = this.shared !== null ? this.prefix.get(key) : null;
    if (entry !== null) this.shared?.taken(entry, share);
    return true;
  }

  /** Writes the memory snapshot of `key` to the folder (in the background) unless it has a file. */
  publishSnapshot(key: string): void {
    const entry = this.prefix?.get(key) ?? null;
    if (entry !== null) this.shared?.persist(entry);
  }

  /** Is `key` held in memory? */
  hasSnapshot(key: string): boolean {
    return this.prefix?.has(key) ?? false;
  }

  /** Does this process know of a file of `key` (written or restored here)? */
  isOnDisk(key: string): boolean {
    return this.shared?.isOnDisk(key) ?? false;
  }

  /** Resolves when the write of `key` started so far has ended; null when none is in flight. */
  whenWritten(key: string): Promise<void> | null {
    return this.shared?.whenWritten(key) ?? null;
  }

  /** Writes every snapshot held in memory to the disk store and waits for the writes (shutdown). */
  async persistSnapshots(): Promise<void> {
    await this.shared?.persistAll();
  }

  /** The `limit` most recently used snapshots (memory, and the folder when there is one), newest first. */
  async listSnapshots(limit: number): Promise<PrefixCacheEntryInfo[]> {
    if (this.shared !== null) return this.shared.list(limit);
    return [...(this.prefix?.snapshots() ?? [])]
      .reverse()
      .slice(0, limit)
      .map((e) => this.uses.memoryEntry(e, false));
  }

  /** Deletes a snapshot from memory and from the folder; says where it was. */
  async deleteSnapshot(key: string): Promise<{ readonly memory: boolean; readonly disk: boolean }> {
    const memory = this.prefix?.delete(key) ?? false;
    this.uses.forget(key);
    const disk = (await this.shared?.delete(key)) ?? false;
    return { memory, disk };
  }

  /** Counters of the snapshot folder; null without one. */
  diskStats(): SnapshotDiskStats | null {
    return this.shared?.stats() ?? null;
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
