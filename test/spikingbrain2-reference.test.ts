// The SpikingBrain 2.0 float64 reference (helpers/reference-spikingbrain2.ts) against the official HF code:
// logits computed by BICLab/SpikingBrain2.0's SSESWAMoBAForCausalLM on two tiny random checkpoints
// (test/fixtures/spikingbrain2-crosscheck: the released configs' options, and the other options the
// parser accepts; written by tools/spikingbrain2_crosscheck.py; its GPU kernels
// replaced by the torch stand-ins named there, the delta rule and MoBA's naive reference computing in
// float32). Tolerance 1e-4 on logits of magnitude ~1–4, the project's bar.
//
// One-shot: every position of the 40 tokens in one forward, so MoBA selection everywhere. Cached: 28
// prompt tokens in one forward, then 12 decode steps through the official cache, where the MoBA layers
// attend densely. The reference reproduces both (a prompt token uses MoBA, a generated one dense), and
// its resumed and cloned runs equal one run.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openSpikingBrain2Dir, SpikingBrain2Reference, topIndices } from './helpers/reference-spikingbrain2.ts';

const TOL = 1e-4;
const DIR = join(import.meta.dirname, 'fixtures', 'spikingbrain2-crosscheck');

interface Expected {
  readonly source: string;
  readonly token_ids: number[];
  readonly decode_from: number;
  readonly logits: number[][];
  readonly logits_cached: number[][];
}


function maxDiff(rows: readonly ArrayLike<number>[], want: readonly (readonly number[])[]): number {
  expect(rows.length).toBe(want.length);
  let m = 0;
  rows.forEach((row, t) => {
    const e = want[t] as readonly number[];
    expect(row.length).toBe(e.length);
    for (let v = 0; v < e.length; v++) m = Math.max(m, Math.abs((row[v] as number) - (e[v] as number)));
  });
  return m;
}

describe.each(['released-options', 'other-options'])('SpikingBrain 2.0 reference vs the official HF code (%s)', (name) => {
  const dir = join(DIR, name);
  const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as Expected;
  const weights = openSpikingBrain2Dir(dir);
  const ids = expected.token_ids;
  const prompt = ids.slice(0, expected.decode_from);
  const generated = ids.slice(expected.decode_from);
  const oneShot = new SpikingBrain2Reference(weights).forward(ids);
  // Prompt tokens with MoBA, the rest as generated tokens (dense MoBA layers), as the official cache path.
  const ref = new SpikingBrain2Reference(weights);
  const cached = [...ref.forward(prompt), ...ref.forward(generated, { moba: false })];

  it('the fixture exercises what it should: 40 tokens, MoBA dropping chunks, logits not trivially small', () => {
    expect(expected.source).toMatch(/^BICLab\/SpikingBrain2\.0 0256113/);
    expect(ids).toHaveLength(40);
    expect(Math.max(...expected.logits.flat().map(Math.abs))).toBeGreaterThan(1);
    // Past K·C positions (24 with chunks of 8 and top-3; 12 with chunks of 6 and top-2) a query leaves
    // earlier chunks out: the official one-shot (MoBA) and cached (dense at decode) logits differ there,
    // so the two comparisons below tell them apart.
    const decodeRows = expected.logits.slice(expected.decode_from);
    expect(maxDiff(decodeRows, expected.logits_cached.slice(expected.decode_from))).toBeGreaterThan(0.1);
  });

  it('one-shot: every position equals the official logits (MoBA selection for every token)', () => {
    const diff = maxDiff(oneShot, expected.logits);
    expect(diff).toBeLessThan(TOL);
    console.log(`spikingbrain2 ${name} reference vs official one-shot: max |Δlogit| = ${diff.toExponential(2)}`);
  });

  it('prompt then decode: equals the official cache path (dense MoBA layers for generated tokens)', () => {
    const diff = maxDiff(cached, expected.logits_cached);
    expect(diff).toBeLessThan(TOL);
    console.log(`spikingbrain2 ${name} reference vs official cached decode: max |Δlogit| = ${diff.toExponential(2)}`);
    // Dense attention at every prompt token would not match the one-shot logits.
    const dense = new SpikingBrain2Reference(weights).forward(ids, { moba: false });
    expect(maxDiff(dense, expected.logits)).toBeGreaterThan(0.1);
  });

  // Splits around the windows (6; 4) and the MoBA chunks (8; 6), and inside later chunks.
  it.each([1, 3, 4, 5, 6, 7, 8, 9, 13, 17, 27])('resumed from a clone after %i tokens equals one run', (split) => {
    const ref = new SpikingBrain2Reference(weights);
    const head = ref.forward(ids.slice(0, split));
    const resumed = ref.clone();
    const tail = resumed.forward(ids.slice(split));
    // The original, advanced differently, does not disturb the clone's state.
    ref.forward([0, 1, 2]);
    expect(maxDiff([...head, ...tail], oneShot.map((r) => Array.from(r)))).toBe(0);
    expect(resumed.position).toBe(ids.length);
  });

});

describe('SpikingBrain 2.0 reference: top-k', () => {
  it('breaks ties by the lower index', () => {
    expect(topIndices([0.2, 0.5, 0.5, 0.1], 2)).toEqual([1, 2]);
    expect(topIndices([1, 1, 1], 2)).toEqual([0, 1]);
    expect(topIndices([3, -Infinity, 7], 3)).toEqual([2, 0, 1]);
  });
});
