// Shared by the numerics tests of every model family: deterministic prompts, the largest difference
// between our float32 logits and a reference, and a copy of a Sequence (resuming from a snapshot).
import { expect } from 'vitest';
import type { Model } from '../../src/engine/model/model.ts';
import { newSequence, type Sequence } from '../../src/engine/model/sequence.ts';

/** n token ids below `vocab`, spread over the vocabulary; `salt` gives another prompt. */
export function prompt(n: number, vocab: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => (i * 37 + 11 + salt * 13) % vocab);
}

/** Max |a − b| over all entries; `b` is one Float64Array per position, `a` row-major [n, V]. */
export function maxAbsDiff(a: Float32Array, b: readonly Float64Array[], V: number): number {
  expect(a.length).toBe(b.length * V);
  let m = 0;
  b.forEach((row, t) => {
    for (let v = 0; v < V; v++) m = Math.max(m, Math.abs((a[t * V + v] as number) - (row[v] as number)));
  });
  return m;
}

export function maxAbs32(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

/** A new Sequence holding a copy of `s` (states, keys, values): resuming from a snapshot. */
export function copySequence(model: Model, s: Sequence): Sequence {
  const copy = newSequence(model);
  copy.numTokens = s.numTokens;
  copy.states = s.states.map((x) => x.slice());
  copy.keys = s.keys.map((x) => x.slice());
  copy.values = s.values.map((x) => x.slice());
  copy.keptPositions = s.keptPositions.slice();
  copy.windowKeptPositions = s.windowKeptPositions.slice();
  return copy;
}

/** log-softmax of a row of float64 logits (the references' log-probabilities). */
export function logSoftmax(row: Float64Array): Float64Array {
  const max = Math.max(...row);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return row.map((x) => x - lse);
}
