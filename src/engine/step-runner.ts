// StepRunner: executes one SchedulerOutput on the model. For each run it gathers a ForwardInput from
// the cache pools (the past keys/values through KvGather, ./kv-gather.ts), calls model.run, scatters
// the new recurrent states and the chunk's keys/values back, and samples the next token of every
// sequence that has consumed its whole prompt.
//
//   one-token rows (decodes, folds, one-token prefill chunks): one run, B = #rows, T = 1 (full attention:
//              grouped by context length, see oneTokenGroups)
//   prefills:  one run per chunk, B = 1, T = chunk length (allLogits when prompt logprobs are asked)
//
// Constrained sequences (structured outputs): the grammar worker computes each one's next-token mask
// while the model runs; sampling waits for it at most MASK_WAIT_MS, and not at all while the grammar
// worker compiles. A sequence whose mask is late keeps its logits row and waits (awaitingGrammar, the
// scheduler skips it); sampleHeld() samples it once the mask is there. Unconstrained rows pay nothing.
import type { TokenConstraint } from './grammar/token-constraint.ts';
import type { CacheManager } from '../cache/cache-manager.ts';
import type { ModelConfig } from './model/config.ts';
import { attentionLayerIndices } from './model/layer-plan.ts';
import type { ForwardInput, ForwardOutput } from './model/forward.ts';
import type { RequestState } from './request-state.ts';
import type { ScheduledChunk, SchedulerOutput } from './scheduler.ts';
import { KvGather } from './kv-gather.ts';
import { f32Scratch, i32Scratch, u8Scratch, type Scratch } from './scratch.ts';
import { logSoftmax, SequenceSampler, topLogprobs, type SampledToken } from './sampler.ts';

/** The part of the Model the runner needs. */
export interface ForwardModel {
  run(input: ForwardInput): Promise<ForwardOutput>;
}

export type SampledResult =
  | { readonly request: RequestState; readonly token: SampledToken }
  /** Instead of a token: the grammar is complete (the text is done) or cannot go on. */
  | { readonly request: RequestState; readonly grammarEnd: 'complete' | 'failed' };

/** Longest wait for a grammar mask after the model ran (it is normally computed during the run). */
const MASK_WAIT_MS = 100;

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

export class StepRunner {
  private readonly model: ForwardModel;
  private readonly config: ModelConfig;
  private readonly cache: CacheManager;
  private readonly numAttnLayers: number;
  private readonly samplers = new Map<string, SequenceSampler>();
  /** Grammars of requests whose sampler does not exist yet. */
  private readonly constraints = new Map<string, TokenConstraint>();
  /** Constrained requests holding logits until their mask is ready. */
  private readonly held = new Set<RequestState>();
  private readonly tokenBuf = i32Scratch();
  private readonly positionBuf = i32Scratch();
  private readonly stateBufs: Scratch<Float32Array>[];
  private readonly kv: KvGather;
  /** MoBA layers: every run says which tokens are prompt tokens (ForwardInput.mobaSelect). */
  private readonly hasMoba: boolean;
  private readonly mobaBuf = u8Scratch();
  /** W8ASpike models: zero spikes and all spikes over every run so far (sparsity = zeros / values). */
  spikeZeros = 0;
  spikeValues = 0;

  constructor(model: ForwardModel, config: ModelConfig, cache: CacheManager) {
    this.model = model;
    this.config = config;
    this.cache = cache;
    this.numAttnLayers = attentionLayerIndices(config).length;
    // A model with window and growing KV groups (SpikingBrain 2.0) gets one past per group (see KvGather).
    this.kv = new KvGather(config, cache);
    this.hasMoba = config.layerKinds.includes('moba');
    this.stateBufs = Array.from({ length: cache.slots.numTensors }, f32Scratch);
  }

  /** Drops the sampler of a finished or aborted request (by its seqId), and frees its grammar matcher. */
  forget(seqId: string): void {
    this.constraints.get(seqId)?.close();
    this.constraints.delete(seqId);
    this.samplers.get(seqId)?.constraint?.close();
    this.samplers.delete(seqId);
    for (const req of this.held) if (req.seqId === seqId) this.held.delete(req);
  }

  /** The grammar a request's tokens must follow (set before its first token is sampled; by its seqId). */
  constrain(seqId: string, constraint: TokenConstraint): void {
    this.constraints.set(seqId, constraint);
  }

  /** Constrained requests waiting for their grammar mask. */
  get numAwaitingGrammar(): number {
    return this.held.size;
  }

  /** Samples the held rows whose mask has arrived (no waiting). */
  sampleHeld(): SampledResult[] {
    const results: SampledResult[] = [];
    for (const req of this.held) {
      const sampler = this.samplerFor(req);
      const logits = sampler.heldLogits;
      if (logits === null) continue;
      const result = this.sampleRow(req, logits, 0);
      if (result === null) continue;
      sampler.heldLogits = null;
      this.held.delete(req);
      req.awaitingGrammar = false;
      results.push(result);
    }
    return results;
  }

  /**
   * The token of one row, or null when its grammar mask is not ready yet (the row is copied and held).
   * `logits` is one row [V] of the model's output (modified in place).
   */
  private sampleRow(req: RequestState, logits: Float32Array, waitMs: number): SampledResult | null {
    const sampler = this.samplerFor(req);
    const constraint = sampler.constraint;
    if (constraint !== null) {
      const state = constraint.poll(waitMs);
      if (state === 'pending') {
        if (sampler.heldLogits !== logits) sampler.heldLogits = Float32Array.from(logits);
        this.held.add(req);
        req.awaitingGrammar = true;
        return null;
      }
      if (state !== 'ready') return { request: req, grammarEnd: state };
    }
    return { request: req, token: sampler.sample(logits) };
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
    return req.status === 'decoding' ? this.sampleRow(req, logits, MASK_WAIT_MS) : null;
  }

  /**
   * One-token batches. A batch pads every row's past to the longest one (B · Pmax slots), which the window
   * bounds for SWA: one batch. With full attention or MoBA layers (also beside window layers, whose past
   * then shares the growing layout) the past is the whole context, so rows are sorted
   * by context length and a batch takes rows only up to twice its shortest context (+ one page):
   * padding never more than doubles what is gathered.
   */
  private oneTokenGroups(rows: readonly OneTokenRow[]): OneTokenRow[][] {
    if (rows.length === 0) return [];
    if (!this.cache.groups.some((g) => g.spec.kind === 'full')) return [[...rows]];
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
    return this.sampleRow(req, lastRow, MASK_WAIT_MS);
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
      s = new SequenceSampler(req.sampling, req.promptTokenIds, this.config.eosTokenIds, this.constraints.get(req.seqId) ?? null);
      this.constraints.delete(req.seqId);
      this.samplers.set(req.seqId, s);
    }
    return s;
  }

  /** Gathers, runs and scatters one batch of rows that all bring T new tokens. */
  private async runRows(rows: readonly RunRow[], T: number, allLogits: boolean): Promise<ForwardOutput> {
    const B = rows.length;
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

    // MoBA: a prompt token (position < prompt length, also when resumed or recomputed) selects chunks;
    // a generated token attends densely, also when a preempted request recomputes it, so the
    // recompute equals what was computed the first time.
    let mobaSelect: Uint8Array | undefined;
    if (this.hasMoba) {
      mobaSelect = this.mobaBuf.view(B * T);
      for (let b = 0; b < B; b++) {
        const row = rows[b]!;
        const promptTokens = row.request.promptTokenIds.length;
        for (let t = 0; t < T; t++) mobaSelect[b * T + t] = row.startPos + t < promptTokens ? 1 : 0;
      }
    }

    const past = this.kv.gather(rows);
    const input: ForwardInput = {
      batchSize: B,
      chunkTokens: T,
      tokenIds,
      positions,
      states,
      pastTokens: past.pastTokens,
      pastPositions: past.pastPositions,
      ...(past.windowPast !== undefined ? { windowPast: past.windowPast } : {}),
      pastKeys: past.keys,
      pastValues: past.values,
      allLogits,
      ...(mobaSelect !== undefined ? { mobaSelect } : {}),
    };
    let output: ForwardOutput;
    try {
      output = await this.model.run(input);
    } catch (err) {
      this.kv.forget(); // the run's positions were not written: nothing to build on
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
        this.kv.scatter(rows, T, output);
      } catch (err) {
        this.kv.forget();
        throw err;
      }
    }
    return output;
  }

}
