// StepRunner: executes one SchedulerOutput on the model. For each run it gathers a ForwardInput from
// the cache pools, calls model.run, scatters the new recurrent states and the chunk's keys/values back, and
// samples the next token of every sequence that has consumed its whole prompt.
//
//   decodes:  one run, B = #decodes, T = 1 (full attention: grouped by context length, see decodeGroups)
//   prefills: one run per chunk, B = 1, T = chunk length (allLogits when prompt logprobs are asked)
//
// Gather (per attention layer a, per sequence b with chunk start p0 and block table pages[k]):
//   past slots of b = its pages that start before p0, page by page: slot k·P + j ↔ position
//   (firstPage + k)·P + j; positions outside [p0 − W, p0) are −1 (never attended).
//   pastKeys[a] [B, Hkv, Pmax, d] ← page[a, 0, h, :, :] copied as P·d runs; same for values.
// Scatter: present*[a] [B, Hkv, T, d] → the pages holding positions p0 … p0+T−1 (runs of ≤ P tokens).
// Buffers are reused between steps: their size is bounded by (max batch) × (window + chunk), never by
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
import { attentionLayerIndices } from './model/layer-plan.ts';
import type { ForwardInput, ForwardOutput } from './model/forward.ts';
import type { RequestState } from './request-state.ts';
import type { ScheduledChunk, SchedulerOutput } from './scheduler.ts';
import { logSoftmax, SequenceSampler, topLogprobs, type SampledToken } from './sampler.ts';

/** The part of the Model the runner needs. */
export interface ForwardModel {
  run(input: ForwardInput): Promise<ForwardOutput>;
}

export interface SampledResult {
  readonly request: RequestState;
  readonly token: SampledToken;
}

/** Views requested between two checks of whether a scratch buffer should shrink. */
const SHRINK_CHECK_VIEWS = 256;

/**
 * A reused Float32Array / Int32Array: views of the requested length are handed out, and the array
 * grows when one does not fit. A burst of large batches (64 decodes gather 64 windows: 42 MiB at the
 * default model) would otherwise hold its peak forever: every SHRINK_CHECK_VIEWS views, an array more
 * than twice the largest view since the last check is replaced by one of that size. `generation`
 * counts replacements (after one, earlier contents are gone).
 */
class Scratch<A extends Float32Array | Int32Array> {
  private data: A;
  private peakLength = 0;
  private viewsSinceCheck = 0;
  generation = 0;

  constructor(private readonly make: (length: number) => A) {
    this.data = make(0);
  }

  view(length: number): A {
    this.peakLength = Math.max(this.peakLength, length);
    if (++this.viewsSinceCheck >= SHRINK_CHECK_VIEWS) {
      if (this.data.length > 2 * this.peakLength) this.replace(this.peakLength);
      this.viewsSinceCheck = 0;
      this.peakLength = length;
    }
    if (this.data.length < length) this.replace(Math.max(length, Math.ceil(this.data.length * 1.5)));
    return this.data.subarray(0, length) as A;
  }

  private replace(length: number): void {
    this.data = this.make(length);
    this.generation++;
  }
}

const f32Scratch = (): Scratch<Float32Array> => new Scratch((n) => new Float32Array(n));
const i32Scratch = (): Scratch<Int32Array> => new Scratch((n) => new Int32Array(n));

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

/** A one-token row of a step: a decode or fold (chunk null), or a prefill chunk of one token. */
interface OneTokenRow {
  readonly request: RequestState;
  readonly startPos: number;
  readonly chunk: ScheduledChunk | null;
}

/** One sequence of a run: its request, first new position, and new tokens. */
interface RunRow {
  readonly request: RequestState;
  readonly startPos: number;
  readonly tokens: ArrayLike<number>;
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

export class StepRunner {
  private readonly model: ForwardModel;
  private readonly config: ModelConfig;
  private readonly cache: CacheManager;
  private readonly numAttnLayers: number;
  /** Pages of the model's attention layers (null without attention layers). */
  private readonly pool: BlockPool | null;
  private readonly samplers = new Map<string, SequenceSampler>();
  private readonly tokenBuf = i32Scratch();
  private readonly positionBuf = i32Scratch();
  private readonly pastPositionBuf = i32Scratch();
  private readonly stateBufs: Scratch<Float32Array>[];
  private readonly keyBufs: Scratch<Float32Array>[];
  private readonly valueBufs: Scratch<Float32Array>[];
  /** What the gather buffers hold per row, at gatheredSlots (Pp) slots per row. */
  private readonly gathered: GatheredRow[] = [];
  private gatheredSlots = -1;
  /** Σ `generation` of the gather buffers when they were last filled (a replacement drops their contents). */
  private gatheredGrowth = 0;
  /** W8ASpike models: zero spikes and all spikes over every run so far (sparsity = zeros / values). */
  spikeZeros = 0;
  spikeValues = 0;

  constructor(model: ForwardModel, config: ModelConfig, cache: CacheManager) {
    this.model = model;
    this.config = config;
    this.cache = cache;
    this.numAttnLayers = attentionLayerIndices(config).length;
    // One KV group at most (ForwardInput has one past per run); a model mixing window and full
    // attention layers would need a past per group.
    if (cache.groups.length > 1) throw new RangeError('StepRunner: models with more than one kind of attention layer are not supported yet');
    this.pool = cache.groups[0]?.pool ?? null;
    this.stateBufs = Array.from({ length: cache.slots.numTensors }, f32Scratch);
    this.keyBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
    this.valueBufs = Array.from({ length: this.numAttnLayers }, f32Scratch);
  }

  /** Drops the sampler of a finished or aborted request (by its seqId). */
  forget(seqId: string): void {
    this.samplers.delete(seqId);
  }

  /**
   * Runs the step: one-token rows (decodes, folds, and prefill chunks of one token) batched, the other
   * prefill chunks one run each. Returns the sampled tokens (decodes, and prefills that end the prompt).
   */
  async execute(out: SchedulerOutput): Promise<SampledResult[]> {
    const results: SampledResult[] = [];
    const V = this.config.vocabSize;
    const single: OneTokenRow[] = [
      ...out.decodes.map((request) => ({ request, startPos: request.numComputedTokens, chunk: null })),
      ...out.prefills.filter((c) => c.numTokens === 1).map((chunk) => ({ request: chunk.request, startPos: chunk.startPos, chunk })),
    ];
    for (const group of this.oneTokenGroups(single)) {
      const rows = group.map((r) => ({ request: r.request, startPos: r.startPos, tokens: [r.request.tokenAt(r.startPos)] }));
      const output = await this.runRows(rows, 1, false);
      group.forEach((row, b) => {
        const logits = output.logits.subarray(b * V, (b + 1) * V);
        const sampled = row.chunk === null ? this.afterDecode(row.request, logits) : this.afterPrefill(row.chunk, logits);
        if (sampled !== null) results.push(sampled);
      });
    }
    for (const chunk of out.prefills) {
      if (chunk.numTokens === 1) continue;
      const sampled = await this.runPrefill(chunk);
      if (sampled !== null) results.push(sampled);
    }
    return results;
  }

  /** A decoding row samples its next token; a folding row (a finished request extending its state) does not. */
  private afterDecode(req: RequestState, logits: Float32Array): SampledResult | null {
    return req.status === 'decoding' ? { request: req, token: this.samplerFor(req).sample(logits) } : null;
  }

  /**
   * One-token batches. A batch pads every row's past to the longest one (B · Pmax slots), which the window
   * bounds for SWA: one batch. With full attention the past is the whole context, so rows are sorted
   * by context length and a batch takes rows only up to twice its shortest context (+ one page):
   * padding never more than doubles what is gathered.
   */
  private oneTokenGroups(rows: readonly OneTokenRow[]): OneTokenRow[][] {
    if (rows.length === 0) return [];
    if (this.config.slidingWindow !== null || this.numAttnLayers === 0) return [[...rows]];
    const sorted = [...rows].sort((a, b) => a.startPos - b.startPos);
    const groups: OneTokenRow[][] = [];
    let group: OneTokenRow[] = [];
    let shortest = 0;
    for (const row of sorted) {
      if (group.length > 0 && row.startPos > 2 * shortest + this.cache.pageTokens) {
        groups.push(group);
        group = [];
      }
      if (group.length === 0) shortest = row.startPos;
      group.push(row);
    }
    groups.push(group);
    return groups;
  }

  private async runPrefill(chunk: ScheduledChunk): Promise<SampledResult | null> {
    const { request: req, startPos, numTokens } = chunk;
    const tokens = req.tokens(startPos, startPos + numTokens);
    const output = await this.runRows([{ request: req, startPos, tokens }], numTokens, this.wantsPromptLogprobs(req));
    return this.afterPrefill(chunk, output.logits);
  }

  /** Prompt logprobs are gathered on the first prefill only (a recompute after preemption has them already). */
  private wantsPromptLogprobs(req: RequestState): boolean {
    return req.sampling.promptLogprobs !== null && req.samplesAfterPrefill;
  }

  /**
   * After a prefill chunk ran: gathers its prompt logprobs ([T, V] logits) when asked, and samples the
   * first token when the chunk ends the prompt ([V] logits of its last position otherwise).
   */
  private afterPrefill(chunk: ScheduledChunk, logits: Float32Array): SampledResult | null {
    const { request: req, startPos, numTokens } = chunk;
    const V = this.config.vocabSize;
    const all = this.wantsPromptLogprobs(req);
    if (all) this.collectPromptLogprobs(req, startPos, numTokens, logits);
    if (startPos + numTokens < req.prefillTarget || !req.samplesAfterPrefill) return null;
    const lastRow = all ? logits.subarray((numTokens - 1) * V, numTokens * V) : logits.subarray(0, V);
    return { request: req, token: this.samplerFor(req).sample(lastRow) };
  }

  /** Row t of the chunk's logits [T, V] predicts prompt token startPos + t + 1. */
  private collectPromptLogprobs(req: RequestState, startPos: number, numTokens: number, logits: Float32Array): void {
    const V = this.config.vocabSize;
    const k = req.sampling.promptLogprobs ?? 0;
    if (startPos === 0) req.promptLogprobs.push(null);
    for (let t = 0; t < numTokens; t++) {
      const next = startPos + t + 1;
      const tokenId = req.promptTokenIds[next];
      if (tokenId === undefined) break;
      const lp = logSoftmax(logits.subarray(t * V, (t + 1) * V));
      req.promptLogprobs.push({ tokenId, logprob: lp[tokenId]!, top: topLogprobs(lp, k) });
    }
  }

  /** Stop ids and eos (unless ignoreEos) end the request; the token is not emitted. */
  isStopToken(req: RequestState, tokenId: number): boolean {
    return this.samplerFor(req).isStopToken(tokenId);
  }

  private samplerFor(req: RequestState): SequenceSampler {
    let s = this.samplers.get(req.seqId);
    if (s === undefined) {
      s = new SequenceSampler(req.sampling, req.promptTokenIds, this.config.eosTokenIds);
      this.samplers.set(req.seqId, s);
    }
    return s;
  }

  /** Gathers, runs and scatters one batch of rows that all bring T new tokens. */
  private async runRows(rows: readonly RunRow[], T: number, allLogits: boolean): Promise<ForwardOutput> {
    const B = rows.length;
    const { numKvHeads: Hkv, headDim: d } = this.config;
    const slots = this.cache.slots;

    const tokenIds = this.tokenBuf.view(B * T);
    const positions = this.positionBuf.view(B * T);
    for (let b = 0; b < B; b++) {
      const row = rows[b]!;
      for (let t = 0; t < T; t++) {
        tokenIds[b * T + t] = row.tokens[t]!;
        positions[b * T + t] = row.startPos + t;
      }
    }

    // Recurrent states [B, ...dims] per state tensor: a single sequence reads its slot in place.
    const slotIds = rows.map((r) => this.cache.slotOf(r.request.seqId));
    const states: Float32Array[] = [];
    for (let i = 0; i < slots.numTensors; i++) {
      if (B === 1) {
        states.push(slots.state(i, slotIds[0]!));
        continue;
      }
      const floats = slots.floatsOf(i);
      const buf = this.stateBufs[i]!.view(B * floats);
      for (let b = 0; b < B; b++) buf.set(slots.state(i, slotIds[b]!), b * floats);
      states.push(buf);
    }

    const past = this.gatherPast(rows);
    const input: ForwardInput = {
      batchSize: B,
      chunkTokens: T,
      tokenIds,
      positions,
      states,
      pastTokens: past.pastTokens,
      pastPositions: past.pastPositions,
      pastKeys: past.keys,
      pastValues: past.values,
      allLogits,
    };
    let output: ForwardOutput;
    try {
      output = await this.model.run(input);
    } catch (err) {
      this.forgetGathered(); // the run's positions were not written: nothing to build on
      throw err;
    }
    if (output.spikes !== undefined) {
      this.spikeZeros += output.spikes.zeros;
      this.spikeValues += output.spikes.values;
    }

    for (let i = 0; i < slots.numTensors; i++) {
      const out = output.states[i]!;
      const floats = slots.floatsOf(i);
      for (let b = 0; b < B; b++) slots.state(i, slotIds[b]!).set(out.subarray(b * floats, (b + 1) * floats));
    }
    if (this.numAttnLayers > 0) {
      try {
        this.scatterPresent(rows, T, output, Hkv, d);
      } catch (err) {
        this.forgetGathered();
        throw err;
      }
    }
    return output;
  }

  private gatherPast(rows: readonly RunRow[]): { pastTokens: number; pastPositions: Int32Array; keys: Float32Array[]; values: Float32Array[] } {
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
    if (Pp !== this.gatheredSlots || growth !== this.gatheredGrowth) this.forgetGathered();
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

  private forgetGathered(): void {
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

  private scatterPresent(rows: readonly RunRow[], T: number, output: ForwardOutput, Hkv: number, d: number): void {
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
