// BlockPool: one preallocated pool of fixed-size KV pages, its free list and reference counts.
// A page holds the keys and values of P consecutive token positions for ALL attention layers:
//   page layout [numAttnLayers, 2 (key, value), Hkv, P, d] float32.
// The pool knows nothing about sequences; PagedKvManager maps sequences onto pages.

/** Frozen geometry of one page. */
export interface PageSpec {
  readonly numAttnLayers: number;
  readonly numKvHeads: number; // Hkv
  readonly headDim: number; // d
  readonly pageTokens: number; // P
}

/** Floats in one page: numAttnLayers · 2 · Hkv · P · d. */
function floatsPerPage(spec: PageSpec): number {
  return spec.numAttnLayers * 2 * spec.numKvHeads * spec.pageTokens * spec.headDim;
}

export function bytesPerPage(spec: PageSpec): number {
  return floatsPerPage(spec) * 4;
}

/** Largest single Float32Array we create (1 GiB); bigger pools are split into several arrays. */
const MAX_FLOATS_PER_ARRAY = 1 << 28;

export class BlockPool {
  readonly spec: PageSpec;
  readonly numPages: number;
  readonly floatsPerPage: number;
  /** Pages per backing array (the last array may hold fewer). */
  private readonly pagesPerArray: number;
  private readonly arrays: Float32Array[] = [];
  /** Stack of free page ids; the top is handed out next. */
  private readonly freeList: Int32Array;
  private numFreePages: number;
  /** refCounts[page] = number of owners; 0 = on the free list. */
  private readonly refCounts: Int32Array;
  /** Lazily created views for slab(). */
  private readonly slabViews: (Float32Array | undefined)[] = [];

  constructor(spec: PageSpec, numPages: number) {
    if (!Number.isInteger(numPages) || numPages < 0) throw new RangeError(`numPages must be an integer ≥ 0, got ${numPages}`);
    if (!Number.isInteger(spec.pageTokens) || spec.pageTokens < 1) throw new RangeError(`pageTokens must be ≥ 1, got ${spec.pageTokens}`);
    this.spec = Object.freeze({ ...spec });
    this.numPages = numPages;
    this.floatsPerPage = floatsPerPage(spec);
    this.pagesPerArray = this.floatsPerPage === 0 ? Math.max(1, numPages) : Math.max(1, Math.floor(MAX_FLOATS_PER_ARRAY / this.floatsPerPage));
    for (let first = 0; first < numPages && this.floatsPerPage > 0; first += this.pagesPerArray) {
      const pages = Math.min(this.pagesPerArray, numPages - first);
      // Zero-filled by the allocator; the OS commits memory only when a page is first written.
      this.arrays.push(new Float32Array(pages * this.floatsPerPage));
    }
    this.freeList = new Int32Array(numPages);
    // Hand out low page ids first (pop from the end): page i sits at freeList[numPages-1-i].
    for (let i = 0; i < numPages; i++) this.freeList[i] = numPages - 1 - i;
    this.numFreePages = numPages;
    this.refCounts = new Int32Array(numPages);
  }

  get numFree(): number {
    return this.numFreePages;
  }

  get numUsed(): number {
    return this.numPages - this.numFreePages;
  }

  get bytesPerPage(): number {
    return this.floatsPerPage * 4;
  }

  /** Takes one free page with reference count 1, or returns null when the pool is exhausted. */
  allocate(): number | null {
    if (this.numFreePages === 0) return null;
    this.numFreePages--;
    const page = this.freeList[this.numFreePages]!;
    this.refCounts[page] = 1;
    return page;
  }

  /** Adds an owner to a page that is in use (prefix sharing). */
  retain(page: number): void {
    this.checkInUse(page);
    this.refCounts[page]!++;
  }

  /** Drops one owner; the page returns to the free list when the last owner lets go. */
  release(page: number): void {
    this.checkInUse(page);
    const left = --this.refCounts[page]!;
    if (left === 0) this.freeList[this.numFreePages++] = page;
  }

  refCount(page: number): number {
    return this.refCounts[page] ?? 0;
  }

  /** The backing array that holds `page` (see pageOffset). */
  pageArray(page: number): Float32Array {
    const array = this.arrays[Math.floor(page / this.pagesPerArray)];
    if (array === undefined) throw new RangeError(`page ${page} out of range`);
    return array;
  }

  /**
   * Offset in pageArray(page) of the P·d floats of (attnLayer, kind, head), laid out [P, d].
   * kind 0 = keys, 1 = values.
   */
  pageOffset(page: number, attnLayer: number, kind: 0 | 1, head: number): number {
    const { numKvHeads, pageTokens, headDim } = this.spec;
    const inPage = ((attnLayer * 2 + kind) * numKvHeads + head) * pageTokens * headDim;
    return (page % this.pagesPerArray) * this.floatsPerPage + inPage;
  }

  /** View of a whole page, [numAttnLayers, 2, Hkv, P, d] (for copying pages to and from disk). */
  pageView(page: number): Float32Array {
    const start = this.pageOffset(page, 0, 0, 0);
    return this.pageArray(page).subarray(start, start + this.floatsPerPage);
  }

  /**
   * View of the P·d floats of (attnLayer, kind, head) of a page, [P, d]. Views are created once per
   * (page, layer, kind, head) and reused, so copying through them allocates nothing per step.
   */
  slab(page: number, attnLayer: number, kind: 0 | 1, head: number): Float32Array {
    const perPage = this.spec.numAttnLayers * 2 * this.spec.numKvHeads;
    const index = page * perPage + (attnLayer * 2 + kind) * this.spec.numKvHeads + head;
    let view = this.slabViews[index];
    if (view === undefined) {
      const offset = this.pageOffset(page, attnLayer, kind, head);
      view = this.pageArray(page).subarray(offset, offset + this.spec.pageTokens * this.spec.headDim);
      this.slabViews[index] = view;
    }
    return view;
  }

  private checkInUse(page: number): void {
    if (!Number.isInteger(page) || page < 0 || page >= this.numPages) throw new RangeError(`page ${page} out of range`);
    if (this.refCounts[page] === 0) throw new Error(`page ${page} is not in use`);
  }
}
