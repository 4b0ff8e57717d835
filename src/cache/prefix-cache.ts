// PrefixStateCache: snapshots of a sequence at a page boundary s — the GLA states after s tokens (copied)
// and the KV pages the next token needs (shared with the pool by reference count): positions
// [s − W, s) for SWA, [0, s) for full attention. Keyed by a hash chain over the token ids of whole pages:
//   key_0 = "", key_{i+1} = sha256(key_i ‖ tokens[i·P, (i+1)·P))
// so a request resumes from its longest cached prefix. A snapshot costs Σ state + ⌈W/P⌉+1 pages,
// independent of s: a 4M-token document costs the same to cache as a 4K one (SWA).
// Bounded by bytes; least recently used entries are evicted first (also on demand by CacheManager
// when admission needs the pages). An eviction hook sees each entry while its pages are still held
// (CacheManager spills it to disk there).
import { createHash } from 'node:crypto';
import type { BlockPool } from './block-pool.ts';

export interface PrefixSnapshot {
  readonly key: string;
  /** Prefix length s (a multiple of P). */
  readonly numTokens: number;
  /** Per GLA layer: [Hkv, d, d] state after s tokens. */
  readonly glaStates: readonly Float32Array[];
  /** Logical index of pages[0] and the retained pages covering the window before s. */
  readonly firstPage: number;
  readonly pages: readonly number[];
  readonly bytes: number;
}

/**
 * key[i] identifies the first (i+1)·P tokens, for every whole page that leaves at least one token
 * after it (a resumed request must compute ≥ 1 token to get logits): i+1 ≤ ⌊(n−1)/P⌋; with
 * `allPages` for every whole page, i+1 ≤ ⌊n/P⌋ (a warm-up, which samples nothing).
 */
export function prefixKeys(tokenIds: readonly number[], pageTokens: number, allPages = false): string[] {
  const numPages = Math.floor((allPages ? tokenIds.length : tokenIds.length - 1) / pageTokens);
  const keys: string[] = [];
  const page = new Int32Array(pageTokens);
  let prev = '';
  for (let i = 0; i < numPages; i++) {
    for (let j = 0; j < pageTokens; j++) page[j] = tokenIds[i * pageTokens + j]!;
    prev = createHash('sha256').update(prev).update(new Uint8Array(page.buffer)).digest('base64');
    keys.push(prev);
  }
  return keys;
}

export class PrefixStateCache {
  readonly maxBytes: number;
  private readonly pool: BlockPool;
  /** Insertion order = LRU order (oldest first). */
  private readonly entries = new Map<string, PrefixSnapshot>();
  /** page → number of snapshots holding it. */
  private readonly pageRefs = new Map<number, number>();
  private totalBytes = 0;
  private readonly onEvict: ((entry: PrefixSnapshot) => void) | null;

  constructor(pool: BlockPool, maxBytes: number, onEvict?: (entry: PrefixSnapshot) => void) {
    this.pool = pool;
    this.maxBytes = maxBytes;
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

  /** Distinct pool pages held by snapshots. */
  get numPages(): number {
    return this.pageRefs.size;
  }

  /** Number of snapshots holding `page`. */
  refsOf(page: number): number {
    return this.pageRefs.get(page) ?? 0;
  }

  /** Pages that only snapshots hold (no sequence): what the cache alone keeps out of the pool. */
  pagesHeldOnlyHere(): number {
    let n = 0;
    for (const [page, refs] of this.pageRefs) if (this.pool.refCount(page) === refs) n++;
    return n;
  }

  /** Distinct pages that `pages` would add to numPages. */
  newPages(pages: readonly number[]): number {
    let n = 0;
    for (const p of pages) if (!this.pageRefs.has(p)) n++;
    return n;
  }

  /** Longest cached prefix among keys (keys[i] ↔ (i+1)·P tokens); marks it recently used. */
  lookup(keys: readonly string[]): PrefixSnapshot | null {
    for (let i = keys.length - 1; i >= 0; i--) {
      const entry = this.entries.get(keys[i]!);
      if (entry === undefined) continue;
      this.entries.delete(entry.key);
      this.entries.set(entry.key, entry);
      return entry;
    }
    return null;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /**
   * Stores a snapshot: copies the states and retains the pages. Evicts older entries to stay within
   * maxBytes; returns false (storing nothing) when the snapshot alone is larger than maxBytes.
   */
  insert(key: string, numTokens: number, glaStates: readonly Float32Array[], firstPage: number, pages: readonly number[]): boolean {
    if (this.entries.has(key)) return true;
    const bytes = glaStates.reduce((n, s) => n + s.byteLength, 0) + pages.length * this.pool.bytesPerPage;
    if (bytes > this.maxBytes) return false;
    while (this.totalBytes + bytes > this.maxBytes && this.evictOldest());
    for (const p of pages) {
      this.pool.retain(p);
      this.pageRefs.set(p, (this.pageRefs.get(p) ?? 0) + 1);
    }
    this.entries.set(key, { key, numTokens, glaStates: glaStates.map((s) => s.slice()), firstPage, pages: [...pages], bytes });
    this.totalBytes += bytes;
    return true;
  }

  /** Drops the least recently used snapshot; false when empty. */
  evictOldest(): boolean {
    const oldest = this.entries.values().next();
    if (oldest.done === true) return false;
    this.onEvict?.(oldest.value);
    this.remove(oldest.value);
    return true;
  }

  clear(): void {
    while (this.evictOldest());
  }

  /** Drops one snapshot without the eviction hook (an explicit delete); false when absent. */
  delete(key: string): boolean {
    const entry = this.entries.get(key);
    if (entry === undefined) return false;
    this.remove(entry);
    return true;
  }

  private remove(entry: PrefixSnapshot): void {
    this.entries.delete(entry.key);
    for (const p of entry.pages) {
      this.pool.release(p);
      const left = (this.pageRefs.get(p) ?? 1) - 1;
      if (left === 0) this.pageRefs.delete(p);
      else this.pageRefs.set(p, left);
    }
    this.totalBytes -= entry.bytes;
  }
}
