// Rates the engine benchmarks share: prefill tok/s over fixed chunks, single-stream decode tok/s
// (several cases interleaved round by round, so all see the same machine load), and a sequence
// prefilled to a depth. Each rate is given per wall-clock second and per CPU second.
import { performance } from 'node:perf_hooks';
import type { Model } from '../src/engine/model/model.ts';
import { Sequence, decodeBatch, newSequence, stepSequences } from '../src/engine/model/sequence.ts';
import { cpuSeconds } from './common.ts';

/** Prefill tok/s with `chunk`-token steps over `tokens` tokens, after one window of warm-up. */
export async function chunkRate(model: Model, chunk: number, tokens: number): Promise<Rate> {
  const V = model.config.vocabSize;
  const seq = newSequence(model);
  const ids = (n: number): number[] => Array.from({ length: n }, (_, i) => (i * 7919 + seq.numTokens) % V);
  const warm = model.windowTokens ?? 1024;
  while (seq.numTokens < warm) await stepSequences(model, [seq], [ids(Math.min(chunk, warm - seq.numTokens))], false);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let done = 0; done < tokens; done += chunk) await stepSequences(model, [seq], [ids(Math.min(chunk, tokens - done))], false);
  return { wall: tokens / ((performance.now() - t0) / 1000), cpu: tokens / cpuSeconds(c0) };
}

export interface Rate {
  /** Tokens per wall-clock second. */
  readonly wall: number;
  /** Tokens per CPU second: the work per token, independent of how busy the machine is. */
  readonly cpu: number;
}

export async function decodeRate(model: Model, seq: Sequence, steps: number): Promise<Rate> {
  return (await decodeRates([{ model, seq }], steps, 1))[0] ?? { wall: 0, cpu: 0 };
}

/**
 * Decode tok/s of several (model, sequence) cases measured in `rounds` interleaved rounds, so that
 * every case sees the same machine load; each round runs steps/rounds tokens per case.
 */
export async function decodeRates(cases: readonly { model: Model; seq: Sequence }[], steps: number, rounds: number): Promise<Rate[]> {
  let tok = 7;
  const next = (V: number): number => (tok = (tok * 31 + 1) % V);
  for (const { model, seq } of cases) for (let i = 0; i < 8; i++) await decodeBatch(model, [seq], [next(model.config.vocabSize)]); // warm-up
  const wall = cases.map(() => 0);
  const cpu = cases.map(() => 0);
  const perRound = Math.max(1, Math.round(steps / rounds));
  for (let r = 0; r < rounds; r++) {
    for (const [i, { model, seq }] of cases.entries()) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let k = 0; k < perRound; k++) await decodeBatch(model, [seq], [next(model.config.vocabSize)]);
      wall[i] = (wall[i] ?? 0) + (performance.now() - t0) / 1000;
      cpu[i] = (cpu[i] ?? 0) + cpuSeconds(c0);
    }
  }
  return cases.map((_, i) => ({ wall: (perRound * rounds) / (wall[i] ?? 1), cpu: (perRound * rounds) / (cpu[i] ?? 1) }));
}

/** A sequence prefilled to `tokens` tokens in 256-token chunks. */
export async function prefilled(model: Model, tokens: number): Promise<Sequence> {
  const seq = newSequence(model);
  const V = model.config.vocabSize;
  while (seq.numTokens < tokens) {
    const n = Math.min(256, tokens - seq.numTokens);
    await stepSequences(model, [seq], [Array.from({ length: n }, (_, i) => (i * 7919 + seq.numTokens) % V)], false);
  }
  return seq;
}

