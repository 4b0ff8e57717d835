// KvGather: moves keys and values between the paged KV pool and the contiguous tensors of one run.
//
// Gather (per attention layer a, per sequence b with chunk start p0 and block table pages[k]):
//   past slots of b = its pages that start before p0, page by page: slot k·P + j ↔ position
//   (firstPage + k)·P + j; positions outside [p0 − W, p0) are −1 (never attended).
//   pastKeys[a] [B, Hkv, Pmax, d] ← page[a, 0, h, :, :] copied as P·d runs; same for values.
// Scatter: present*[a] [B, Hkv, T, d] → the pages holding positions p0 … p0+T−1 (runs of ≤ P tokens).
// Buffers are reused between runs: their size is bounded by (max batch) × (window + chunk), never by
// the context length (except for full attention, where the past is the context).
//
// Incremental gather: the buffers still hold the previous run's past. A row whose sequence, block
// table (first page and page ids) and past length in pages are what they were then, at a start
// position not below the previous one, only needs the positions computed since (one token per decode
// step) copied in and the ones that left the window masked: ~1 KB per step instead of the whole window
// (655 KB for the default model, 2.2 MB at W = 1024). Any other row is gathered in full. Positions
// once written never change and a page id in an unchanged table still holds the same positions, so
// the result is exactly a full gather's.
import type { BlockPool } from '../cache/block-pool.ts';
import type { CacheManager } from '../cache/cache-manager.ts';
import type { BlockTable } from '../cache/paged-kv.ts';
import type { ModelConfig } from './model/config.ts';
import type { ForwardOutput } from './model/forward.ts';
import { f32Scratch, i32Scratch, type Scratch } from './scratch.ts';

/** One sequence of a run: which sequence, and its first new position. */
export interface KvRow {
  readonly request: { readonly seqId: string; readonly requestId: string };
  readonly startPos: number;
}

/** The past of one run (ForwardInput's pastTokens, pastPositions, pastKeys, pastValues). */
export interface GatheredPast {
  readonly pastTokens: number;
  readonly pastPositions: Int32Array;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
}

/** dst[dstOff …) = src[srcOff …) for `length` floats; short runs by a loop (no view allocation). */
function copyFloats(src: Float32Array, srcOff: number, dst: Float32Array, dstOff: number, length: number): void {
  if (length >= 256) {
    dst.set(src.subarray(srcOff, srcOff + length), dstOff);
    return;
  }
  for (let i = 0; i < length; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/** The gather buffers of one run, and the row being filled. */
interface GatherBuffers {
  readonly pastPositions: Int32Array;
  readonly keys: readonly Float32Array[];
  readonly values: readonly Float32Array[];
  /** Past slots per row. */
  readonly Pp: number;
  readonly b: number;
}

/** What row b of the gather buffers holds: the past of `seqId` before `startPos`, from these pages. */
class GatheredRow {
  /** False: the row holds nothing that can be built on. */
  valid = false;
  seqId = '';
  startPos = 0;
  firstPage = 0;
  numPages = 0;
  pages = new Int32Array(0);

  /** Whether this row holds a prefix of the past of `seqId` at `startPos` over the same table. */
  matches(seqId: string, startPos: number, table: BlockTable, numPages: number): boolean {
    if (!this.valid || this.seqId !== seqId || this.startPos > startPos || this.firstPage !== table.firstPage || this.numPages !== numPages) return false;
    for (let k = 0; k < numPages; k++) if (this.pages[k] !== table.pages[k]) return false;
    return true;
  }

  record(seqId: string, startPos: number, table: BlockTable | undefined, numPages: number): void {
    this.valid = true;
    this.seqId = seqId;
    this.startPos = startPos;
    this.firstPage = table?.firstPage ?? 0;
    this.numPages = numPages;
    if (this.pages.length < numPages) this.pages = new Int32Array(Math.max(numPages, 2 * this.pages.length));
    for (let k = 0; k < numPages; k++) this.pages[k] = table!.pages[k]!;
  }
}

export class KvGather {
  private readonly pastPositionBuf = i32Scratch();
  private readonly keyBufs: Scratch<Float32Array>[];
  private readonly valueBufs: Scratch<Float32Array>[];
  /** What the gather buffers hold per row, at gatheredSlots (Pp) slots per row. */
  private readonly gathered: GatheredRow[] = [];
  private gatheredSlots = -1;
  /** Σ `generation` of the gather buffers when they were last filled (a replacement drops their contents). */
  private gatheredGrowth = 0;

  constructor(
    private readonly config: ModelConfig,
    private readonly cache: CacheManager,
    /** Pages of the model's attention layers (null without attention layers). */
    private readonly pool: BlockPool | null,
    private readonly numAttnLayers: number,
  ) {
    this.keyBufs = Array.from({ length: numAttnLayers }, f32Scratch);
    this.valueBufs = Array.from({ length: numAttnLayers }, f32Scratch);
  }

  /** The past of each row for one run ([B, Pp] positions, [B, Hkv, Pp, d] keys and values per layer). */
  gather(rows: readonly KvRow[]): GatheredPast {
    const B = rows.length;
    const P = this.cache.pageTokens;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    if (this.numAttnLayers === 0 || this.pool === null) return { pastTokens: 0, pastPositions: this.pastPositionBuf.view(0), keys: [], values: [] };

    // Past pages of each row: those that start before its first new position.
    const pastPages: number[] = [];
    let maxPages = 0;
    for (const row of rows) {
      const table = this.cache.tableOf(row.request.seqId);
      const n = table === undefined ? 0 : Math.max(0, Math.min(table.pages.length, Math.ceil(row.startPos / P) - table.firstPage));
      pastPages.push(n);
      maxPages = Math.max(maxPages, n);
    }
    const Pp = maxPages * P;
    // Same lengths as the previous run's views whenever Pp and B are: the buffers keep their contents
    // (unless one was replaced: see Scratch).
    const pastPositions = this.pastPositionBuf.view(B * Pp);
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    for (let a = 0; a < this.numAttnLayers; a++) {
      keys.push(this.keyBufs[a]!.view(B * Hkv * Pp * d));
      values.push(this.valueBufs[a]!.view(B * Hkv * Pp * d));
    }
    // Rows sit at a stride of Pp slots: another Pp, or a replaced buffer, leaves nothing to build on.
    const growth = this.gatherGrowth();
    if (Pp !== this.gatheredSlots || growth !== this.gatheredGrowth) this.forget();
    this.gatheredSlots = Pp;
    this.gatheredGrowth = growth;
    while (this.gathered.length < B) this.gathered.push(new GatheredRow());
    for (let b = 0; b < B; b++) {
      const row = rows[b]!;
      const n = pastPages[b]!;
      const table = this.cache.tableOf(row.request.seqId);
      const held = this.gathered[b]!;
      const buffers = { pastPositions, keys, values, Pp, b };
      if (table !== undefined && held.matches(row.request.seqId, row.startPos, table, n)) this.extendRow(buffers, table, held.startPos, row.startPos);
      else this.gatherRow(buffers, table, n, row.startPos);
      held.record(row.request.seqId, row.startPos, table, n);
    }
    return { pastTokens: Pp, pastPositions, keys, values };
  }

  private gatherGrowth(): number {
    let n = this.pastPositionBuf.generation;
    for (let a = 0; a < this.numAttnLayers; a++) n += this.keyBufs[a]!.generation + this.valueBufs[a]!.generation;
    return n;
  }

  /** After a run that failed (its positions were never written): nothing held can be built on. */
  forget(): void {
    for (const row of this.gathered) row.valid = false;
  }

  /** Fills row b of the gather buffers from its first n pages: the past before startPos. */
  private gatherRow(buf: GatherBuffers, table: BlockTable | undefined, n: number, startPos: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const pool = this.pool!;
    const P = this.cache.pageTokens;
    const W = this.config.slidingWindow;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    pastPositions.fill(-1, b * Pp, (b + 1) * Pp);
    if (table === undefined || n === 0) return;
    const lo = W === null ? 0 : startPos - W;
    for (let k = 0; k < n; k++) {
      const page = table.pages[k]!;
      const firstPos = (table.firstPage + k) * P;
      for (let j = 0; j < P; j++) {
        const pos = firstPos + j;
        if (pos >= lo && pos < startPos) pastPositions[b * Pp + k * P + j] = pos;
      }
      // Only the slots before startPos hold keys; the rest of the page is masked (−1) and not copied.
      const floats = Math.min(P, startPos - firstPos) * d;
      for (let a = 0; a < this.numAttnLayers; a++) {
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + k * P) * d;
          copyFloats(pool.slab(page, a, 0, h), 0, keys[a]!, dst, floats);
          copyFloats(pool.slab(page, a, 1, h), 0, values[a]!, dst, floats);
        }
      }
    }
  }

  /**
   * Row b holds the past before `from` over the same pages: copies positions [from, to) in (their pages
   * were written by the runs since) and masks those that are now older than the window.
   */
  private extendRow(buf: GatherBuffers, table: BlockTable, from: number, to: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const pool = this.pool!;
    const P = this.cache.pageTokens;
    const W = this.config.slidingWindow;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const slotOf = (pos: number): number => (Math.floor(pos / P) - table.firstPage) * P + (pos % P);
    for (let pos = from; pos < to; pos++) {
      const slot = slotOf(pos);
      const page = table.pages[Math.floor(pos / P) - table.firstPage]!;
      pastPositions[b * Pp + slot] = pos;
      for (let a = 0; a < this.numAttnLayers; a++) {
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + slot) * d;
          copyFloats(pool.slab(page, a, 0, h), (pos % P) * d, keys[a]!, dst, d);
          copyFloats(pool.slab(page, a, 1, h), (pos % P) * d, values[a]!, dst, d);
        }
      }
    }
    if (W === null) return;
    // Positions [from − W, to − W) left the window (those still in this row's pages).
    for (let pos = Math.max(from - W, table.firstPage * P); pos < to - W; pos++) pastPositions[b * Pp + slotOf(pos)] = -1;
  }

  /** Writes the run's new keys and values ([B, Hkv, T, d] per layer) into the pages of positions p0 … p0+T−1. */
  scatter(rows: readonly KvRow[], T: number, output: ForwardOutput): void {
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const pool = this.pool;
    if (pool === null) return;
    const P = this.cache.pageTokens;
    for (let b = 0; b < rows.length; b++) {
      const row = rows[b]!;
      const table = this.cache.tableOf(row.request.seqId)!;
      // Runs [s, e) of positions that share a page.
      for (let s = row.startPos; s < row.startPos + T; ) {
        const logical = Math.floor(s / P);
        const e = Math.min((logical + 1) * P, row.startPos + T);
        const page = table.pages[logical - table.firstPage];
        if (page === undefined) throw new Error(`request ${row.request.requestId}: no page for position ${s}`);
        for (let a = 0; a < this.numAttnLayers; a++) {
          const pk = output.presentKeys[a]!;
          const pv = output.presentValues[a]!;
          for (let h = 0; h < Hkv; h++) {
            const src = ((b * Hkv + h) * T + (s - row.startPos)) * d;
            const dst = (s % P) * d;
            copyFloats(pk, src, pool.slab(page, a, 0, h), dst, (e - s) * d);
            copyFloats(pv, src, pool.slab(page, a, 1, h), dst, (e - s) * d);
          }
        }
        s = e;
      }
    }
  }
}
