// SharedSnapshots: what the prefix cache does with a snapshot folder that every replica shares
// (`--prefix-cache-dir`). CacheManager owns the memory snapshots and the pool; this owns their life on
// disk:
//   taken    a snapshot of ≥ shareMinTokens tokens (or a warm-up's) is written through at once
//   evicted  memory lets one go: it is written unless it has a file (its pages are still held then)
//   waiting  a request's longer prefix on disk is read ahead (SnapshotReads: one read per key, budgeted)
//   shutdown every memory snapshot without a file is written
// and it answers the prefix-cache API (list, delete) from memory and the folder together.
// Writes copy the states and pages once, into the file's bytes (SnapshotStore.write), before the
// call returns; everything after is off the step loop.
import type { PrefixSnapshot, PrefixStateCache } from './prefix-cache.ts';
import type { PageGroupData, SnapshotExpectation } from './snapshot-file.ts';
import { SnapshotReads, type PrefetchedSnapshot } from './snapshot-reads.ts';
import { SnapshotStore, type SnapshotStoreStats } from './snapshot-store.ts';

/** The shared snapshot folder of this model build. */
export interface SnapshotFolderOptions {
  readonly dir: string;
  /** Byte bound of the folder, shared by every process that writes to it. */
  readonly maxBytes: number;
  /** Names the model build; a file of another identity is never restored. */
  readonly modelIdentity: string;
  /** Snapshots of at least this many tokens are written as soon as they are taken. */
  readonly shareMinTokens: number;
  readonly readTimeoutMs: number;
  readonly log?: (message: string) => void;
  /** Called when a disk read or write ended (stats changed). */
  readonly onActivity?: () => void;
}

/** One snapshot as the prefix-cache API lists it. */
export interface PrefixCacheEntryInfo {
  readonly key: string;
  readonly numTokens: number;
  readonly bytes: number;
  readonly inMemory: boolean;
  readonly onDisk: boolean;
  /** Restores by this process since it started. */
  readonly hits: number;
  /** ms since the epoch (memory: last use here; disk: the file's mtime, any process). */
  readonly lastUsedMs: number;
}

/** The snapshot folder's counters plus the read-ahead budget in use. */
export interface SnapshotDiskStats extends SnapshotStoreStats {
  readonly readBufferBytes: number;
  readonly readsSkippedForBudget: number;
}

/** Bytes of snapshot writes in flight allowed even under a small --prefix-cache-bytes. */
const MIN_WRITE_BYTES_IN_FLIGHT = 256 * 2 ** 20;

/** Most keys whose hit counts are remembered (memory entries and disk files used here). */
const MAX_TRACKED_USES = 4096;

/** Restores (hits) and last use of snapshots in this process, for the prefix-cache API; bounded. */
export class SnapshotUses {
  /** key → use; insertion order = least recently used first. */
  private readonly byKey = new Map<string, { hits: number; lastUsedMs: number }>();

  /** Counts a restore (hit) or a new snapshot of `key`. */
  used(key: string, hit: boolean): void {
    const prev = this.byKey.get(key);
    this.byKey.delete(key);
    this.byKey.set(key, { hits: (prev?.hits ?? 0) + (hit ? 1 : 0), lastUsedMs: Date.now() });
    if (this.byKey.size > MAX_TRACKED_USES) this.byKey.delete(this.byKey.keys().next().value as string);
  }

  get(key: string): { readonly hits: number; readonly lastUsedMs: number } {
    return this.byKey.get(key) ?? { hits: 0, lastUsedMs: 0 };
  }

  forget(key: string): void {
    this.byKey.delete(key);
  }

  /** A memory snapshot as the API lists it. */
  memoryEntry(e: PrefixSnapshot, onDisk: boolean): PrefixCacheEntryInfo {
    const use = this.get(e.key);
    return { key: e.key, numTokens: e.numTokens, bytes: e.bytes, inMemory: true, onDisk, hits: use.hits, lastUsedMs: use.lastUsedMs };
  }
}

export class SharedSnapshots {
  readonly store: SnapshotStore;
  private readonly reads: SnapshotReads;
  private readonly shareMinTokens: number;
  private readonly prefix: PrefixStateCache;
  /** A memory snapshot's pages, per page group, as views of the pools (CacheManager knows the pools). */
  private readonly pageGroupsOf: (entry: PrefixSnapshot) => PageGroupData[];
  /** Memory snapshots known to have a file (written or restored here); dropped on eviction. */
  private readonly onDisk = new Set<string>();
  /** Writes in flight, by key. */
  private readonly pendingWrites = new Map<string, Promise<unknown>>();
  private readonly uses: SnapshotUses;

  /** `prefixCacheBytes` bounds the read-ahead buffers (and, at least 256 MiB, the writes in flight). */
  constructor(
    folder: SnapshotFolderOptions,
    expect: SnapshotExpectation,
    prefixCacheBytes: number,
    prefix: PrefixStateCache,
    pageGroupsOf: (entry: PrefixSnapshot) => PageGroupData[],
    uses: SnapshotUses,
  ) {
    this.store = new SnapshotStore({
      dir: folder.dir,
      maxBytes: folder.maxBytes,
      expect,
      readTimeoutMs: folder.readTimeoutMs,
      // Encoded snapshots waiting for the disk; at least one SpikingBrain-7B snapshot (~228 MiB).
      maxWriteBytesInFlight: Math.max(prefixCacheBytes, MIN_WRITE_BYTES_IN_FLIGHT),
      ...(folder.log !== undefined ? { log: folder.log } : {}),
      ...(folder.onActivity !== undefined ? { onActivity: folder.onActivity } : {}),
    });
    this.reads = new SnapshotReads(this.store, prefixCacheBytes);
    this.shareMinTokens = folder.shareMinTokens;
    this.prefix = prefix;
    this.pageGroupsOf = pageGroupsOf;
    this.uses = uses;
  }

  /** The longest prefix of `keys` beyond index `memoryIndex` that the folder holds, read for one request. */
  prefetch(keys: readonly string[], memoryIndex: number): Promise<PrefetchedSnapshot | null> {
    return this.reads.prefetch(keys, memoryIndex);
  }

  /** A snapshot was just taken: write it through when it is long enough, or when asked (`share`). */
  taken(entry: PrefixSnapshot, share: boolean): void {
    if (share || entry.numTokens >= this.shareMinTokens) this.persist(entry);
  }

  /** A snapshot was restored from a file: it has one. */
  restored(key: string): void {
    this.onDisk.add(key);
  }

  /** Memory evicts a snapshot: spill it unless it has a file (its pages are still held here). */
  evicted(entry: PrefixSnapshot): void {
    this.persist(entry);
    this.onDisk.delete(entry.key);
  }

  /**
   * Writes a memory snapshot to the folder in the background unless it has a file or a write in
   * flight. The states and pages are copied once, into the file's bytes, before this returns.
   */
  persist(entry: PrefixSnapshot): void {
    // Exact snapshots (not page-aligned) stay in memory: another replica finds prefixes by their page keys.
    if (entry.exact !== null || this.onDisk.has(entry.key) || this.pendingWrites.has(entry.key)) return;
    const key = entry.key;
    const write = this.store.write(key, entry.numTokens, entry.states, this.pageGroupsOf(entry)).then((outcome) => {
      this.pendingWrites.delete(key);
      if ((outcome === 'written' || outcome === 'exists') && this.prefix.has(key)) this.onDisk.add(key);
    });
    this.pendingWrites.set(key, write);
  }

  /** Does this process know of a file of `key` (written or restored here)? */
  isOnDisk(key: string): boolean {
    return this.onDisk.has(key);
  }

  /** Resolves when the write of `key` started so far has ended; null when none is in flight. */
  whenWritten(key: string): Promise<void> | null {
    const write = this.pendingWrites.get(key);
    return write === undefined ? null : write.then(() => undefined);
  }

  /** Writes every memory snapshot without a file and waits for all writes (shutdown). */
  async persistAll(): Promise<void> {
    for (const entry of this.prefix.snapshots()) this.persist(entry);
    await this.store.flush();
  }

  /** The `limit` most recently used snapshots, in memory and in the folder, newest first. */
  async list(limit: number): Promise<PrefixCacheEntryInfo[]> {
    const byKey = new Map<string, PrefixCacheEntryInfo>();
    const memory = [...this.prefix.snapshots()];
    // What the folder holds now: another replica may have deleted or trimmed a file written here.
    const filed = await this.store.existing(memory.map((e) => e.key));
    for (const e of memory) {
      if (!filed.has(e.key)) this.onDisk.delete(e.key); // so eviction spills it again
      byKey.set(e.key, this.uses.memoryEntry(e, filed.has(e.key)));
    }
    for (const f of await this.store.list(limit)) {
      const mem = byKey.get(f.key);
      const use = this.uses.get(f.key);
      byKey.set(
        f.key,
        mem !== undefined
          ? { ...mem, onDisk: true, lastUsedMs: Math.max(mem.lastUsedMs, f.lastUsedMs) }
          : { key: f.key, numTokens: f.numTokens, bytes: f.bytes, inMemory: false, onDisk: true, hits: use.hits, lastUsedMs: f.lastUsedMs },
      );
    }
    return [...byKey.values()].sort((a, b) => b.lastUsedMs - a.lastUsedMs).slice(0, limit);
  }

  /** Deletes the file of `key` (after a write of it in flight); false when there was none. */
  async delete(key: string): Promise<boolean> {
    this.onDisk.delete(key);
    await this.pendingWrites.get(key); // a write in flight would publish it again
    return this.store.delete(key);
  }

  stats(): SnapshotDiskStats {
    return { ...this.store.stats(), readBufferBytes: this.reads.bytes, readsSkippedForBudget: this.reads.skippedForBudget };
  }
}
