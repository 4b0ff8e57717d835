// Prefill of one sequence through milestone lengths within wall-clock budgets, for bench/gpu.ts, and
// the useful-FLOP counts its TFLOP/s come from. A milestone that would run past its budget (or into
// the deadline's reserve) stops after the chunk that reaches it and reports, as measurements, the
// tok/s to where it stopped and the steady rate of the chunks that started with a full window (this
// architecture's prefill cost is flat in depth once the SWA window is full: GLA state and window are
// fixed-size); and, as an extrapolation, never as a measurement, the milestone's TTFT at that rate.
import { performance } from 'node:perf_hooks';
import { layersOfKind, type ModelConfig } from '../src/engine/model/config.ts';
import type { Model } from '../src/engine/model/model.ts';
import { prefill, type Sequence } from '../src/engine/model/sequence.ts';
import { kTok, type ModelRow } from './gpu-report.ts';

/** Useful FLOPs per token for the weights (lm_head apart), per attended key, and per GLA token. */
export function flopsOf(c: ModelConfig): { weights: number; lmHead: number; perKey: number; glaPerToken: number } {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d, intermediateSize: F } = c;
  let params = 0;
  for (const kind of c.layerKinds) {
    params += D * (H * d + 2 * Hkv * d) + H * d * D + 3 * D * F;
    if (kind === 'gla') params += D * 16 + 16 * Hkv * d;
  }
  const attn = c.layerKinds.filter((k) => k !== 'gla').length;
  const gla = layersOfKind(c, 'gla').length;
  return { weights: 2 * params, lmHead: 2 * D * c.vocabSize, perKey: attn * 4 * H * d, glaPerToken: gla * 2 * (H + Hkv) * d * d };
}

/** Σ over positions p in [from, to) of the keys a query at p attends: min(p, W) + 1. */
export function keysAttended(c: ModelConfig, from: number, to: number): number {
  const W = c.slidingWindow ?? Infinity;
  let total = 0;
  for (let p = from; p < to; p++) total += Math.min(p, W) + 1;
  return total;
}

/** n deterministic token ids below `vocab` (an LCG seeded by `salt`). */
export function promptTokens(n: number, vocab: number, salt: number): number[] {
  let s = (12345 + salt * 7919) >>> 0;
  return Array.from({ length: n }, () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % vocab);
}

export interface PrefillPlan {
  /** Row label of the model. */
  readonly name: string;
  readonly chunkTokens: number;
  /** Milestones, ascending; one sequence is prefilled through all of them. */
  readonly lengths: readonly number[];
  /** Per milestone: seconds its part of the prefill may take (Infinity: no budget). */
  readonly budgetsSec: readonly number[];
  /** Seconds until the run's deadline; prefill stops when the next chunk would leave less than reserveSec. */
  readonly secondsLeft: () => number;
  readonly reserveSec: number;
  readonly log: (msg: string) => void;
  /** Each row as soon as it is known (measured and extrapolated ones alike). */
  readonly onRow: (row: ModelRow) => void;
}

/** One prefill chunk as it was timed: positions [start, start + tokens). */
interface TimedChunk {
  readonly start: number;
  readonly tokens: number;
  readonly sec: number;
}

/**
 * Prefills `seq` through `plan.lengths`, chunk by chunk. A milestone whose part would run past its
 * budget (or past the deadline's reserve) stops after the chunk that reaches it; the rows then say how
 * far it got, the steady rate of the chunks after the window filled, and (EXTRAPOLATED) the milestone's
 * TTFT at that rate. Later milestones continue from where the sequence is.
 */
export async function prefillMilestones(model: Model, seq: Sequence, plan: PrefillPlan): Promise<void> {
  const { name, chunkTokens: CHUNK, lengths, budgetsSec, log } = plan;
  const config = model.config;
  const f = flopsOf(config);
  const W = config.layerKinds.includes('full') ? null : config.slidingWindow;
  const chunks: TimedChunk[] = [];
  const elapsed = (): number => chunks.reduce((a, c) => a + c.sec, 0);
  const flopsTo = (n: number): number => n * (f.weights + f.glaPerToken) + f.perKey * keysAttended(config, 0, n) + f.lmHead * chunks.length;
  for (const [i, length] of lengths.entries()) {
    const budget = budgetsSec[i] ?? Infinity;
    const ids = promptTokens(length - seq.numTokens, config.vocabSize, length);
    let segmentSec = 0;
    let segmentChunks = 0;
    let stopped: string | null = null;
    for (let at = 0; at < ids.length; at += CHUNK) {
      const part = ids.slice(at, at + CHUNK);
      const t = performance.now();
      await prefill(model, seq, part, { chunkTokens: CHUNK });
      const sec = (performance.now() - t) / 1000;
      chunks.push({ start: seq.numTokens - part.length, tokens: part.length, sec });
      segmentSec += sec;
      segmentChunks++;
      if (at + CHUNK >= ids.length) break;
      // Would the next chunk (about as long as this one) pass the budget or eat into the reserve?
      const after = `after ${segmentChunks} chunk${segmentChunks === 1 ? '' : 's'}`;
      if (segmentSec + sec > budget) stopped = `stopped by its ${budget} s budget ${after}`;
      else if (plan.secondsLeft() - sec < plan.reserveSec) stopped = `stopped by --deadline ${after}`;
      if (stopped !== null) break;
    }
    const done = seq.numTokens;
    const total = elapsed();
    if (stopped === null) {
      plan.onRow({ model: name, what: `prefill ${kTok(length)}`, kind: 'measured', tokens: length, tokPerSec: length / total, tflops: flopsTo(length) / total / 1e12, seconds: total });
      log(`${name}: prefill ${kTok(length)}: ${(length / total).toFixed(0)} tok/s, TTFT ${total.toFixed(1)} s`);
      continue;
    }
    plan.onRow({ model: name, what: `prefill to ${kTok(done)} of ${kTok(length)}`, kind: 'measured', tokens: done, tokPerSec: done / total, tflops: flopsTo(done) / total / 1e12, seconds: total, note: stopped });
    // Steady state: chunks that start with a full window cost the same at any depth.
    const steady = W === null ? [] : chunks.filter((c) => c.start >= W);
    const steadyTokens = steady.reduce((a, c) => a + c.tokens, 0);
    const steadySec = steady.reduce((a, c) => a + c.sec, 0);
    if (steady.length === 0 || W === null) {
      log(`${name}: prefill ${kTok(length)} stopped at ${kTok(done)} (${stopped}); no chunk after the window filled: no extrapolation`);
      continue;
    }
    const steadyRate = steadyTokens / steadySec;
    const perToken = f.weights + f.glaPerToken + f.perKey * (W + 1) + f.lmHead / CHUNK;
    plan.onRow({ model: name, what: `prefill steady rate (${steady.length} chunks of ≤ ${CHUNK} after the window filled)`, kind: 'measured', tokens: steadyTokens, tokPerSec: steadyRate, tflops: (steadyRate * perToken) / 1e12, seconds: steadySec });
    const ttft = total + (length - done) / steadyRate;
    plan.onRow({
      model: name,
      what: `prefill ${kTok(length)} TTFT`,
      kind: 'extrapolated',
      tokens: length,
      tokPerSec: length / ttft,
      tflops: 0,
      seconds: ttft,
      note: `${total.toFixed(1)} s measured to ${kTok(done)}, the other ${length - done} tokens at the measured steady ${steadyRate.toFixed(0)} tok/s`,
    });
    log(`${name}: prefill ${kTok(length)} ${stopped} at ${kTok(done)}: steady ${steadyRate.toFixed(0)} tok/s; TTFT EXTRAPOLATED ≈ ${ttft.toFixed(0)} s`);
  }
}
