// PrefixStateCache: snapshots of a sequence after its first s tokens — the recurrent states (copied) and,
// per KV group, the pages the next token needs (shared with the pools by reference count): positions
// [s − W, s) for a sliding window, [0, s) for full attention. A request resumes from the longest
// snapshot of one of its prefixes (keys: ./prefix-keys.ts).
//
// Two kinds of snapshot:
//   page-aligned  s = q·P, keyed by the hash chain of its q pages (taken at page boundaries of prompts)
//   exact         any s, keyed by its whole pages' key and its tail tokens (taken where a request ends,
//                 and one token before a prompt's end, so that the next turn of a conversation, or the
//                 same prompt again, resumes from there). The tail tokens are kept and compared on lookup.
// A snapshot whose s is not a multiple of P shares a partly written last page; whoever resumes from it
// copies that page before writing (CacheManager).
//
// Bounded by bytes; least recently used entries are evicted first (also on demand by CacheManager when a
// pool needs the pages). An eviction hook sees each entry while its pages are still held (CacheManager
// spills it to disk there).
import type { BlockPool } from './block-pool.ts';

/** The pages of one KV group a snapshot holds: logical pages firstPage, firstPage+1, … */
export interface SnapshotPages {
  readonly firstPage: number;
  readonly pages: readonly number[];
}

export interface PrefixSnapshot {
  readonly key: string;
  /** Prefix length s. */
  readonly numTokens: number;
  /** Per recurrent state tensor (StateSlots order): the state after s tokens. */
  readonly states: readonly Float32Array[];
  /** Per KV group (CacheManager order). */
  readonly groups: readonly SnapshotPages[];
  readonly bytes: number;
  /** Exact snapshots: the key of the whole pages before s ("" for none) and the tokens after them. */
  readonly exact: { readonly baseKey: string; readonly tail: Int32Array } | null;
}

export class PrefixStateCache {
  readonly maxBytes: number;
  private readonly pools: readonly BlockPool[];
  readonly pageTokens: number;
  /** Insertion order = LRU order (oldest first). */
  private readonly entries = new Map<string, PrefixSnapshot>();
  /** Exact snapshots by the key of their whole pages. */
  private readonly exactByBase = new Map<string, Set<PrefixSnapshot>>();
  /** Per group: page → number of snapshots holding it. */
  private readonly pageRefs: Map<number, number>[];
  private totalBytes = 0;
  private readonly onEvict: ((entry: PrefixSnapshot) => void) | null;

  constructor(pools: readonly BlockPool[], pageTokens: number, maxBytes: number, onEvict?: (entry: PrefixSnapshot) => void) {
    this.pools = pools;
    this.pageTokens = pageTokens;
    this.maxBytes = maxBytes;
    this.pageRefs = pools.map(() => new Map());
    this.onEvict = onEvict ?? null;
  }

  /** The entries, least recently used first. */
  snapshots(): IterableIterator<PrefixSnapshot> {
    return this.entries.values();
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Distinct pages of group g held by snapshots. */
  numPages(group: number): number {
    return this.pageRefs[group]?.size ?? 0;
  }

  /** Number of snapshots holding `page` of group g. */
  refsOf(group: number, page: number): number {
    return this.pageRefs[group]?.get(page) ?? 0;
  }

  /** Pages of group g that only snapshots hold (no sequence): what the cache alone keeps out of the pool. */
  pagesHeldOnlyHere(group: number): number {
    const pool = this.pools[group];
    const refs = this.pageRefs[group];
    if (pool === undefined || refs === undefined) return 0;
    let n = 0;
    for (const [page, count] of refs) if (pool.refCount(page) === count) n++;
    return n;
  }

  /** Distinct pages of `pages` (group g) that would add to numPages(g). */
  newPages(group: number, pages: readonly number[]): number {
    const refs = this.pageRefs[group];
    let n = 0;
    for (const p of pages) if (refs?.has(p) !== true) n++;
    return n;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** The snapshot of `key`, marked recently used; null if absent. */
  get(key: string): PrefixSnapshot | null {
    const entry = this.entries.get(key);
    if (entry === undefined) return null;
    this.touch(entry);
    return entry;
  }

  /**
   * The longest snapshot of a prefix of `tokens` with at most `maxTokens` tokens; marks it recently used.
   * `keys` are the whole-page keys of `tokens` (keys[i] ↔ (i+1)·P tokens).
   */
  lookup(keys: readonly string[], tokens: ArrayLike<number>, maxTokens: number): PrefixSnapshot | null {
    const P = this.pageTokens;
    for (let q = Math.min(keys.length, Math.floor(maxTokens / P)); q >= 0; q--) {
      const base = q === 0 ? '' : (keys[q - 1] as string);
      let best: PrefixSnapshot | null = null;
      for (const e of this.exactByBase.get(base) ?? []) {
        if (e.numTokens > maxTokens || (best !== null && e.numTokens <= best.numTokens)) continue;
        if (tailMatches(e.exact!.tail, tokens, q * P)) best = e;
      }
      best ??= q > 0 ? (this.entries.get(base) ?? null) : null;
      if (best !== null) {
        this.touch(best);
        return best;
      }
    }
    return null;
  }

  /**
   * Stores a snapshot: copies the states and retains the pages. Evicts older entries to stay within
   * maxBytes; returns false (storing nothing) when the snapshot alone is larger than maxBytes.
   */
  insert(
    key: string,
    numTokens: number,
    states: readonly Float32Array[],
    groups: readonly SnapshotPages[],
    exact: { readonly baseKey: string; readonly tail: ArrayLike<number> } | null = null,
  ): boolean {
    if (this.entries.has(key)) return true;
    let bytes = states.reduce((n, s) => n + s.byteLength, 0);
    groups.forEach((g, i) => (bytes += g.pages.length * (this.pools[i]?.bytesPerPage ?? 0)));
    if (bytes > this.maxBytes) return false;
    while (this.totalBytes + bytes > this.maxBytes && this.evictOldest());
    groups.forEach((g, i) => {
      const pool = this.pools[i]!;
      const refs = this.pageRefs[i]!;
      for (const p of g.pages) {
        pool.retain(p);
        refs.set(p, (refs.get(p) ?? 0) + 1);
      }
    });
    const entry: PrefixSnapshot = {
      key,
      numTokens,
      states: states.map((s) => s.slice()),
      groups: groups.map((g) => ({ firstPage: g.firstPage, pages: [...g.pages] })),
      bytes,
      exact: exact === null ? null : { baseKey: exact.baseKey, tail: Int32Array.from(exact.tail) },
    };
    this.entries.set(key, entry);
    if (entry.exact !== null) {
      let set = this.exactByBase.get(entry.exact.baseKey);
      if (set === undefined) this.exactByBase.set(entry.exact.baseKey, (set = new Set()));
      set.add(entry);
    }
    this.totalBytes += bytes;
    return true;
  }

  /** Drops the least recently used snapshot other than `except`'s; false when there is none. */
  evictOldest(except: string | null = null): boolean {
    for (const entry of this.entries.values()) {
      if (entry.key === except) continue;
      this.onEvict?.(entry);
      this.remove(entry);
      return true;
    }
    return false;
  }

  /** Drops the snapshot of `key`; false when absent. */
  delete(key: string): boolean {
    const entry = this.entries.get(key);
    if (entry === undefined) return false;
    this.remove(entry);
    return true;
  }

  clear(): void {
    while (this.evictOldest());
  }

  private touch(entry: PrefixSnapshot): void {
    this.entries.delete(entry.key);
    this.entries.set(entry.key, entry);
  }

  private remove(entry: PrefixSnapshot): void {
    this.entries.delete(entry.key);
    if (entry.exact !== null) {
      const set = this.exactByBase.get(entry.exact.baseKey);
      set?.delete(entry);
      if (set?.size === 0) this.exactByBase.delete(entry.exact.baseKey);
    }
    entry.groups.forEach((g, i) => {
      const pool = this.pools[i]!;
      const refs = this.pageRefs[i]!;
      for (const p of g.pages) {
        pool.release(p);
        const left = (refs.get(p) ?? 1) - 1;
        if (left === 0) refs.delete(p);
        else refs.set(p, left);
      }
    });
    this.totalBytes -= entry.bytes;
  }
}

/** tokens[from, from + tail.length) equals tail. */
function tailMatches(tail: Int32Array, tokens: ArrayLike<number>, from: number): boolean {
  if (from + tail.length > tokens.length) return false;
  for (let i = 0; i < tail.length; i++) if (tokens[from + i] !== tail[i]) return false;
  return true;
}
