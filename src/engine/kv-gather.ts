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
// layers' growing group) gather one past per group, each laid out by its own
// block table as above: the window layers read ~W + P slots, the growing layers the context
// (ForwardInput.windowPast). Each group keeps its own record of what its rows hold.
import type { BlockPool } from '../cache/block-pool.ts';
import type { CacheManager } from '../cache/cache-manager.ts';
import type { BlockTable } from '../cache/paged-kv.ts';
import { isAttentionKind, isWindowKind, type ModelConfig } from './model/config.ts';
import type { ForwardOutput } from './model/forward.ts';
import { f32Scratch, i32Scratch, type Scratch } from './scratch.ts';

/** One sequence of a run: which sequence, and its first new position. */
export interface KvRow {
  readonly request: { readonly seqId: string; readonly requestId: string };
  readonly startPos: number;
}

/** The past of one run (ForwardInput's pastTokens, pastPositions, windowPast, pastKeys, pastValues). */
export interface GatheredPast {
  readonly pastTokens: number;
  readonly pastPositions: Int32Array;
  /** Models with a window and a growing KV group: the window layers' own past. */
  readonly windowPast?: { readonly pastTokens: number; readonly pastPositions: Int32Array };
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

/** The gather buffers of one KV group for one run, and the row being filled. */
interface GatherBuffers {
  readonly pastPositions: Int32Array;
  /** Per attention layer of the group (GroupGather.layers order). */
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

/** One KV group's past for a run: its slots are laid out by the group's own block table. */
class GroupGather {
  readonly pastPositionBuf = i32Scratch();
  /** What the gather buffers hold per row, at gatheredSlots (Pp) slots per row. */
  readonly gathered: GatheredRow[] = [];
  gatheredSlots = -1;
  /** Σ `generation` of the group's buffers when they were last filled (a replacement drops their contents). */
  gatheredGrowth = 0;

  constructor(
    readonly group: number,
    /** W applied to past positions (a window group), or null (a growing group keeps every position). */
    readonly window: number | null,
    /** Attention-layer ordinals (ForwardInput.pastKeys indices) of the group's layers, in order. */
    readonly layers: readonly number[],
  ) {}
}

export class KvGather {
  private readonly keyBufs: Scratch<Float32Array>[];
  private readonly valueBufs: Scratch<Float32Array>[];
  private readonly numAttnLayers: number;
  /** Per attention layer (in layer order): its group, pool and index in the group. */
  private readonly homes: readonly LayerHome[];
  /** One per KV group (CacheManager.groups order). */
  private readonly perGroup: readonly GroupGather[];
  /** The group ForwardInput.pastPositions belongs to (the growing one when there is one), and the window group of a model with both. */
  private readonly mainGroup: number;
  private readonly windowGroup: number | null;

  constructor(
    private readonly config: ModelConfig,
    private readonly cache: CacheManager,
  ) {
    const groups = cache.groups;
    const full = groups.findIndex((g) => g.spec.kind === 'full');
    const window = groups.findIndex((g) => g.spec.kind === 'window');
    this.mainGroup = full >= 0 ? full : 0;
    this.windowGroup = full >= 0 && window >= 0 ? window : null;
    const seen = groups.map(() => 0);
    this.homes = config.layerKinds.filter(isAttentionKind).map((kind) => {
      const group = isWindowKind(kind) ? window : full;
      const g = groups[group];
      if (g === undefined) throw new RangeError(`KvGather: no KV group for a ${kind} layer`);
      const layerInGroup = seen[group]!;
      seen[group] = layerInGroup + 1;
      return { group, pool: g.pool, layerInGroup };
    });
    groups.forEach((g, i) => {
      if (seen[i] !== g.spec.numLayers) throw new RangeError(`KvGather: KV group ${i} has ${g.spec.numLayers} layers, the model ${seen[i]}`);
    });
    this.perGroup = groups.map(
      (g, i) =>
        new GroupGather(
          i,
          g.spec.kind === 'window' ? config.slidingWindow : null,
          this.homes.flatMap((h, a) => (h.group === i ? [a] : [])),
        ),
    );
    this.numAttnLayers = this.homes.length;
    this.keyBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
    this.valueBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
  }

  /**
   * The past of each row for one run: per KV group [B, Pp] positions and [B, Hkv, Pp, d] keys and
   * values per layer of the group (Pp: that group's slots).
   */
  gather(rows: readonly KvRow[]): GatheredPast {
    if (this.numAttnLayers === 0) return { pastTokens: 0, pastPositions: new Int32Array(0), keys: [], values: [] };
    const keys: Float32Array[] = new Array<Float32Array>(this.numAttnLayers);
    const values: Float32Array[] = new Array<Float32Array>(this.numAttnLayers);
    const pasts = this.perGroup.map((group) => this.gatherGroup(group, rows, keys, values));
    const main = pasts[this.mainGroup]!;
    const windowPast = this.windowGroup === null ? undefined : pasts[this.windowGroup];
    return { ...main, ...(windowPast !== undefined ? { windowPast } : {}), keys, values };
  }

  /** Fills one group's buffers (and its layers' entries of keys/values); returns its slots and positions. */
  private gatherGroup(group: GroupGather, rows: readonly KvRow[], keys: Float32Array[], values: Float32Array[]): { pastTokens: number; pastPositions: Int32Array } {
    const B = rows.length;
    const P = this.cache.pageTokens;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    // Past pages of each row: those of its table that start before its first new position.
    const tables: (BlockTable | undefined)[] = [];
    const pastPages: number[] = [];
    let maxPages = 0;
    for (const row of rows) {
      const table = this.cache.tableOf(row.request.seqId, group.group);
      const n = table === undefined ? 0 : Math.max(0, Math.min(table.pages.length, Math.ceil(row.startPos / P) - table.firstPage));
      tables.push(table);
      pastPages.push(n);
      maxPages = Math.max(maxPages, n);
    }
    const Pp = maxPages * P;
    // Same lengths as the previous run's views whenever Pp and B are: the buffers keep their contents
    // (unless one was replaced: see Scratch).
    const pastPositions = group.pastPositionBuf.view(B * Pp);
    const groupKeys: Float32Array[] = [];
    const groupValues: Float32Array[] = [];
    for (const a of group.layers) {
      groupKeys.push((keys[a] = this.keyBufs[a]!.view(B * Hkv * Pp * d)));
      groupValues.push((values[a] = this.valueBufs[a]!.view(B * Hkv * Pp * d)));
    }
    // Rows sit at a stride of Pp slots: another Pp, or a replaced buffer, leaves nothing to build on.
    let growth = group.pastPositionBuf.generation;
    for (const a of group.layers) growth += this.keyBufs[a]!.generation + this.valueBufs[a]!.generation;
    if (Pp !== group.gatheredSlots || growth !== group.gatheredGrowth) for (const row of group.gathered) row.valid = false;
    group.gatheredSlots = Pp;
    group.gatheredGrowth = growth;
    while (group.gathered.length < B) group.gathered.push(new GatheredRow());
    for (let b = 0; b < B; b++) {
      const row = rows[b]!;
      const n = pastPages[b]!;
      const table = tables[b];
      const held = group.gathered[b]!;
      const buffers = { pastPositions, keys: groupKeys, values: groupValues, Pp, b };
      if (table !== undefined && held.matches(row.request.seqId, row.startPos, table, n)) this.extendRow(group, buffers, row.request.seqId, table, held.startPos, row.startPos);
      else this.gatherRow(group, buffers, table, n, row.startPos);
      held.record(row.request.seqId, row.startPos, table, n);
    }
    return { pastTokens: Pp, pastPositions };
  }

  /** After a run that failed (its positions were never written): nothing held can be built on. */
  forget(): void {
    for (const group of this.perGroup) for (const row of group.gathered) row.valid = false;
  }

  /** Fills row b of a group's buffers from its first n pages: the past before startPos. */
  private gatherRow(group: GroupGather, buf: GatherBuffers, table: BlockTable | undefined, n: number, startPos: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const P = this.cache.pageTokens;
    const W = group.window;
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
    // Page by page: only positions before startPos hold keys (the rest is masked and not copied).
    group.layers.forEach((a, i) => {
      const home = this.homes[a]!;
      for (let k = 0; k < n; k++) {
        const floats = Math.min(P, startPos - (table.firstPage + k) * P) * d;
        if (floats <= 0) continue;
        const page = table.pages[k]!;
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + k * P) * d;
          copyFloats(home.pool.slab(page, home.layerInGroup, 0, h), 0, keys[i]!, dst, floats);
          copyFloats(home.pool.slab(page, home.layerInGroup, 1, h), 0, values[i]!, dst, floats);
        }
      }
    });
  }

  /**
   * Row b holds the past before `from` over the same pages: copies positions [from, to) in (their
   * pages were written by the runs since) and masks those that are now older than the window.
   */
  private extendRow(group: GroupGather, buf: GatherBuffers, seqId: string, table: BlockTable, from: number, to: number): void {
    const { pastPositions, keys, values, Pp, b } = buf;
    const P = this.cache.pageTokens;
    const W = group.window;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const slotOf = (pos: number): number => (Math.floor(pos / P) - table.firstPage) * P + (pos % P);
    for (let pos = from; pos < to; pos++) {
      const slot = slotOf(pos);
      pastPositions[b * Pp + slot] = pos;
      const page = table.pages[Math.floor(pos / P) - table.firstPage];
      if (page === undefined) throw new Error(`sequence ${seqId}: no page for position ${pos} in KV group ${group.group}`);
      group.layers.forEach((a, i) => {
        const home = this.homes[a]!;
        for (let h = 0; h < Hkv; h++) {
          const dst = ((b * Hkv + h) * Pp + slot) * d;
          copyFloats(home.pool.slab(page, home.layerInGroup, 0, h), (pos % P) * d, keys[i]!, dst, d);
          copyFloats(home.pool.slab(page, home.layerInGroup, 1, h), (pos % P) * d, values[i]!, dst, d);
        }
      });
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
