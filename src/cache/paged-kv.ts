// PagedKvManager: one block table per sequence over the shared BlockPool.
// Logical page i of a sequence covers absolute positions [i·P, (i+1)·P); the table keeps the pages
// still needed, starting at logical index `firstPage`.
//
// Sliding window W: a query at p attends keys p−W…p, so before a chunk of C tokens at [p0, p0+C)
// every page whose last position i·P+P−1 < p0−W is released. The table then spans positions
// [p0−W, p0+C−1] (W+C positions), i.e. never more than ⌈(W+C)/P⌉+1 pages.
// Full attention (W = null): nothing is released; the table grows until the pool is exhausted.
import type { BlockPool } from './block-pool.ts';

/** Read-only view of a sequence's block table. */
export interface BlockTable {
  /** Logical index of pages[0]. */
  readonly firstPage: number;
  /** Physical page ids of logical pages firstPage, firstPage+1, … */
  readonly pages: readonly number[];
  /** Positions [0, numTokens) have been reserved for writing. */
  readonly numTokens: number;
}

interface MutableTable {
  firstPage: number;
  pages: number[];
  numTokens: number;
}

export class PagedKvManager {
  readonly pool: BlockPool;
  readonly windowTokens: number | null;
  readonly pageTokens: number;
  private readonly tables = new Map<string, MutableTable>();

  constructor(pool: BlockPool, windowTokens: number | null) {
    this.pool = pool;
    this.windowTokens = windowTokens;
    this.pageTokens = pool.spec.pageTokens;
  }

  /** Upper bound on pages one sequence holds while computing chunks of ≤ chunkTokens (SWA only). */
  static maxPagesSwa(windowTokens: number, chunkTokens: number, pageTokens: number): number {
    return Math.ceil((windowTokens + chunkTokens) / pageTokens) + 1;
  }

  /** First logical page still needed by a chunk starting at `startPos`. */
  private firstNeededPage(startPos: number): number {
    if (this.windowTokens === null) return 0;
    const oldest = startPos - this.windowTokens; // oldest key position a query at startPos attends
    return oldest <= 0 ? 0 : Math.floor(oldest / this.pageTokens);
  }

  /**
   * Pages that `ensure(seq, startPos, numTokens)` would take from the pool (after releasing the
   * pages that fall out of the window). A new sequence counts as an empty table.
   */
  newPagesNeeded(seqId: string, startPos: number, numTokens: number): number {
    const table = this.tables.get(seqId);
    const lastPage = Math.floor((startPos + numTokens - 1) / this.pageTokens);
    const firstNeeded = this.firstNeededPage(startPos);
    const heldEnd = table === undefined ? 0 : table.firstPage + table.pages.length; // one past the last held
    const from = Math.max(firstNeeded, heldEnd);
    return Math.max(0, lastPage - from + 1);
  }

  /**
   * Pages the sequence holds that fall out of the window before a chunk at `startPos` and that nobody
   * else holds: releasing them (ensure does) returns them to the pool.
   */
  freeableBefore(seqId: string, startPos: number): number {
    const table = this.tables.get(seqId);
    if (table === undefined) return 0;
    const firstNeeded = this.firstNeededPage(startPos);
    let n = 0;
    for (let i = 0; i < table.pages.length && table.firstPage + i < firstNeeded; i++) if (this.pool.refCount(table.pages[i]!) === 1) n++;
    return n;
  }

  /** Can ensure() allocate the chunk now (counting the pages it releases first)? */
  fits(seqId: string, startPos: number, numTokens: number): boolean {
    return this.newPagesNeeded(seqId, startPos, numTokens) <= this.pool.numFree + this.freeableBefore(seqId, startPos);
  }

  /**
   * Makes positions [startPos, startPos+numTokens) writable and releases pages that the chunk no
   * longer needs. Returns false, changing nothing, when the pool lacks free pages.
   * Chunks of one sequence must be contiguous: startPos equals the previous end.
   */
  ensure(seqId: string, startPos: number, numTokens: number): boolean {
    if (numTokens < 1) throw new RangeError(`numTokens must be ≥ 1, got ${numTokens}`);
    let table = this.tables.get(seqId);
    if (table !== undefined && startPos !== table.numTokens) {
      throw new Error(`sequence ${seqId}: chunk starts at ${startPos}, expected ${table.numTokens}`);
    }
    if (!this.fits(seqId, startPos, numTokens)) return false;
    if (table === undefined) {
      table = { firstPage: this.firstNeededPage(startPos), pages: [], numTokens: startPos };
      this.tables.set(seqId, table);
    }
    // Release pages entirely before the window of the chunk's first query.
    const firstNeeded = this.firstNeededPage(startPos);
    let drop = 0;
    while (drop < table.pages.length && table.firstPage + drop < firstNeeded) {
      this.pool.release(table.pages[drop]!);
      drop++;
    }
    if (drop > 0) {
      table.pages.splice(0, drop);
      table.firstPage += drop;
    }
    if (table.pages.length === 0) table.firstPage = firstNeeded;
    const lastPage = Math.floor((startPos + numTokens - 1) / this.pageTokens);
    while (table.firstPage + table.pages.length <= lastPage) {
      const page = this.pool.allocate();
      if (page === null) throw new Error('BlockPool exhausted after a successful capacity check'); // unreachable
      table.pages.push(page);
    }
    table.numTokens = startPos + numTokens;
    return true;
  }

  /**
   * Starts a sequence's table from shared pages (a prefix snapshot): positions [0, numTokens) are
   * computed; pages (logical firstPage, firstPage+1, …) gain this sequence as an owner.
   */
  adopt(seqId: string, firstPage: number, pages: readonly number[], numTokens: number): void {
    if (this.tables.has(seqId)) throw new Error(`sequence ${seqId} already has a block table`);
    for (const page of pages) this.pool.retain(page);
    this.tables.set(seqId, { firstPage, pages: [...pages], numTokens });
  }

  /** Logical pages a snapshot at prefix length s must keep: those of positions [s − W, s) (or [0, s)). */
  snapshotRange(numTokens: number): { firstPage: number; endPage: number } {
    return { firstPage: this.firstNeededPage(numTokens), endPage: Math.ceil(numTokens / this.pageTokens) };
  }

  /**
   * Gives the sequence a private copy of the page that holds position `pos` when others share it (a
   * snapshot taken mid-page): positions from `pos` on are about to be written there. Returns false,
   * changing nothing, when the pool has no free page.
   */
  copyOnWrite(seqId: string, pos: number): boolean {
    const table = this.tables.get(seqId);
    if (table === undefined) return true;
    const i = Math.floor(pos / this.pageTokens) - table.firstPage;
    const shared = table.pages[i];
    if (shared === undefined || this.pool.refCount(shared) === 1) return true;
    const fresh = this.pool.allocate();
    if (fresh === null) return false;
    this.pool.pageView(fresh).set(this.pool.pageView(shared));
    this.pool.release(shared);
    table.pages[i] = fresh;
    return true;
  }

  table(seqId: string): BlockTable | undefined {
    return this.tables.get(seqId);
  }

  /** Number of pages a sequence holds now. */
  pagesHeld(seqId: string): number {
    return this.tables.get(seqId)?.pages.length ?? 0;
  }

  /** Releases every page of the sequence (finish or abort). Unknown ids are ignored. */
  free(seqId: string): void {
    const table = this.tables.get(seqId);
    if (table === undefined) return;
    for (const page of table.pages) this.pool.release(page);
    this.tables.delete(seqId);
  }
}
