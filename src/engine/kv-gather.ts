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
//
// Models with two KV groups (SpikingBrain 2.0: the hybrid layers' window group and the MoBA + full
// layers' growing group) share one past per run: the slots are laid out by the growing group's block
// table (slot k·P + j ↔ position (firstPage + k)·P + j, every position of the context), and a window
// layer's buffers get, at the same slots, only the positions its own (window) pages still hold,
// [p0 − W, p0). Its other slots keep stale finite values that the graph's window mask (kp ≥ qp − W)
// never attends. pastPositions is then not window-masked (the growing layers read every position).
// The cost: window layers attend over P = context slots instead of W (masked), and their gather
// buffers are context-sized; a past per group in the graph I/O would remove both.
import type { BlockPool } from '../cache/block-pool.ts';
import type { CacheManager } from '../cache/cache-manager.ts';
import type { BlockTable } from '../cache/paged-kv.ts';
import { isAttentionKind, type ModelConfig } from './model/config.ts';
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

/** Where one attention layer's keys/values live: its KV group and its index among that group's layers. */
interface LayerHome {
  readonly group: number;
  readonly pool: BlockPool;
  readonly layerInGroup: number;
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
  private readonly numAttnLayers: number;
  /** Per attention layer (in layer order): its group, pool and index in the group. */
  private readonly homes: readonly LayerHome[];
  /** The group whose block table lays out the past slots: the growing one when there is one, else the only one. */
  private readonly layoutGroup: number;
  /** W applied to pastPositions: the layout group's window (null when it keeps every position). */
  private readonly layoutWindow: number | null;

  constructor(
    private readonly config: ModelConfig,
    private readonly cache: CacheManager,
  ) {
    const groups = cache.groups;
    const full = groups.findIndex((g) => g.spec.kind === 'full');
    const window = groups.findIndex((g) => g.spec.kind === 'window');
    this.layoutGroup = full >= 0 ? full : 0;
    this.layoutWindow = full >= 0 ? null : config.slidingWindow;
    const seen = groups.map(() => 0);
    this.homes = config.layerKinds.filter(isAttentionKind).map((kind) => {
      const group = kind === 'swa' || kind === 'sse_swa' ? window : full;
      const g = groups[group];
      if (g === undefined) throw new RangeError(`KvGather: no KV group for a ${kind} layer`);
      const layerInGroup = seen[group]!;
      seen[group] = layerInGroup + 1;
      return { group, pool: g.pool, layerInGroup };
    });
    groups.forEach((g, i) => {
      if (seen[i] !== g.spec.numLayers) throw new RangeError(`KvGather: KV group ${i} has ${g.spec.numLayers} layers, the model ${seen[i]}`);
    });
    this.numAttnLayers = this.homes.length;
    this.keyBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
    this.valueBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
  }

  /** The past of each row for one run ([B, Pp] positions, [B, Hkv, Pp, d] keys and values per layer). */
  gather(rows: readonly KvRow[]): GatheredPast {
    const B = rows.length;
    const P = this.cache.pageTokens;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    if (this.numAttnLayers === 0) return { pastTokens: 0, pastPositions: this.pastPositionBuf.view(0), keys: [], values: [] };

    // Past pages of each row: those that start before its first new position.
    const pastPages: number[] = [];
    let maxPages = 0;
    for (const row of rows) {
      const table = this.cache.tableOf(row.request.seqId, this.layoutGroup);
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
      const table = this.cache.tableOf(row.request.seqId, this.layoutGroup);
      const held = this.gathered[b]!;
      const buffers = { pastPositions, keys, values, Pp, b };
      if (table !== undefined && held.matches(row.request.seqId, row.startPos, table, n)) this.extendRow(buffers, row.request.seqId, table, held.startPos, row.startPos);
      else this.gatherRow(buffers, row.request.seqId, table, n, row.startPos);
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

  /** Fills row b of the gather buffers from its first n pages (layout group): the past before startPos. */
  private gatherRow(buf: GatherBuffers, seqId: string, table: BlockTable | undefined, n: number, startPos: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const P = this.cache.pageTokens;
    const W = this.layoutWindow;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    pastPositions.fill(-1, b * Pp, (b + 1) * Pp);
    if (table === undefined || n === 0) return;
    const lo = W === null ? 0 : startPos - W;
    for (let k = 0; k < n; k++) {
      const firstPos = (table.firstPage + k) * P;
      for (let j = 0; j < P; j++) {
        const pos = firstPos + j;
        if (pos >= lo && pos < startPos) pastPositions[b * Pp + k * P + j] = pos;
      }
    }
    // Per layer, page by page of its own group's table; a logical page maps to the layout slots
    // (k·P …) of the same logical page. Only positions before startPos hold keys (the rest is masked
    // and not copied); a window group's table starts later, and its slots before that stay unread.
    for (let a = 0; a < this.numAttnLayers; a++) {
      const home = this.homes[a]!;
      const own = home.group === this.layoutGroup ? table : this.cache.tableOf(seqId, home.group);
      if (own === undefined) continue;
      for (let i = 0; i < own.pages.length; i++) {
        const logical = own.firstPage + i;
        const k = logical - table.firstPage;
        if (k < 0 || k >= n) continue;
        const floats = Math.min(P, startPos - logical * P) * d;
        if (floats <= 0) continue;
        const page = own.pages[i]!;
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + k * P) * d;
          copyFloats(home.pool.slab(page, home.layerInGroup, 0, h), 0, keys[a]!, dst, floats);
          copyFloats(home.pool.slab(page, home.layerInGroup, 1, h), 0, values[a]!, dst, floats);
        }
      }
    }
  }

  /**
   * Row b holds the past before `from` over the same (layout) pages: copies positions [from, to) in
   * (their pages were written by the runs since) and masks those that are now older than the window.
   */
  private extendRow(buf: GatherBuffers, seqId: string, table: BlockTable, from: number, to: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const P = this.cache.pageTokens;
    const W = this.layoutWindow;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const slotOf = (pos: number): number => (Math.floor(pos / P) - table.firstPage) * P + (pos % P);
    const tables = this.cache.groups.map((_, g) => (g === this.layoutGroup ? table : this.cache.tableOf(seqId, g)));
    for (let pos = from; pos < to; pos++) {
      const slot = slotOf(pos);
      pastPositions[b * Pp + slot] = pos;
      for (let a = 0; a < this.numAttnLayers; a++) {
        const home = this.homes[a]!;
        const own = tables[home.group];
        const page = own?.pages[Math.floor(pos / P) - own.firstPage];
        if (page === undefined) throw new Error(`sequence ${seqId}: no page for position ${pos} in KV group ${home.group}`);
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + slot) * d;
          copyFloats(home.pool.slab(page, home.layerInGroup, 0, h), (pos % P) * d, keys[a]!, dst, d);
          copyFloats(home.pool.slab(page, home.layerInGroup, 1, h), (pos % P) * d, values[a]!, dst, d);
        }
      }
    }
    if (W === null) return;
    // Positions [from − W, to − W) left the window (those still in this row's pages).
    for (let pos = Math.max(from - W, table.firstPage * P); pos < to - W; pos++) pastPositions[b * Pp + slotOf(pos)] = -1;
  }

  /** Writes the run's new keys and values ([B, Hkv, T, d] per layer) into each layer's group's pages of positions p0 … p0+T−1. */
  scatter(rows: readonly KvRow[], T: number, output: ForwardOutput): void {
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const P = this.cache.pageTokens;
    for (let b = 0; b < rows.length; b++) {
      const row = rows[b]!;
      const tables = this.cache.groups.map((_, g) => this.cache.tableOf(row.request.seqId, g));
      for (let a = 0; a < this.numAttnLayers; a++) {
        const home = this.homes[a]!;
        const table = tables[home.group];
        const pk = output.presentKeys[a]!;
        const pv = output.presentValues[a]!;
        // Runs [s, e) of positions that share a page.
        for (let s = row.startPos; s < row.startPos + T; ) {
          const logical = Math.floor(s / P);
          const e = Math.min((logical + 1) * P, row.startPos + T);
          const page = table?.pages[logical - table.firstPage];
          if (page === undefined) throw new Error(`request ${row.request.requestId}: no page for position ${s}`);
          for (let h = 0; h < Hkv; h++) {
            const src = ((b * Hkv + h) * T + (s - row.startPos)) * d;
            const dst = (s % P) * d;
            copyFloats(pk, src, home.pool.slab(page, home.layerInGroup, 0, h), dst, (e - s) * d);
            copyFloats(pv, src, home.pool.slab(page, home.layerInGroup, 1, h), dst, (e - s) * d);
          }
          s = e;
        }
      }
    }
  }
}
