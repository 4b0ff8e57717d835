// W8ASpike checkpoints (src/engine/model/w8aspike.ts): the graph against the float64 reference that
// implements the official inference code's quantizers independently (test/helpers/reference-forward.ts),
// chunked prefill and batched decode against one-shot, and the load-time checks.
//
// Spike coding rounds activations, so an fp32 engine may round an activation within ~1e-5 of a tie
// (x/vth = n + ½) the other way than float64, and that difference then flows into every later
// position. The reference counts roundings within NEAR_TIE of a tie; positions up to the first such
// rounding must match at the fp32 engine's usual tolerance, 1e-4. The seeds are fixed, and the
// reference is deterministic, so how many positions are checked does not depend on the machine.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../src/engine/errors.ts';
import { openCheckpoint, validateCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { inspectModel } from '../src/engine/model/inspect.ts';
import { Model } from '../src/engine/model/model.ts';
import { decodeBatch, newSequence, prefill, stepSequences } from '../src/engine/model/sequence.ts';
import { isW8ASpike, roundHalfEven } from '../src/engine/model/w8aspike.ts';
import { makeRandomTinyCheckpoint, makeW8ASpikeTinyCheckpoint, writeCheckpoint } from './helpers/checkpoint-writer.ts';
import { ReferenceSession, tieCounter } from './helpers/reference-forward.ts';

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-w8aspike-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

const TOL = 1e-4;
const PROMPT = 24; // crosses the window (8) twice

/** Reference logits per position and the index of the first position with a near-tie rounding (or the length). */
function reference(dir: string, ids: readonly number[]): { logits: Float64Array[]; safe: number } {
  const ref = new ReferenceSession(openCheckpoint(dir));
  const logits: Float64Array[] = [];
  let safe = ids.length;
  for (const [t, id] of ids.entries()) {
    const before = tieCounter.count;
    logits.push(ref.step(id));
    if (tieCounter.count !== before && safe === ids.length) safe = t;
  }
  return { logits, safe };
}

describe('roundHalfEven', () => {
  it('rounds ties to the even neighbour and everything else to the nearest integer', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001, -7, 3.2].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, -2, 2, 3, -7, 3]);
  });
});

describe.each([
  { variant: 'fused', fusedOps: true },
  { variant: 'plain', fusedOps: false },
])('W8ASpike graph vs float64 reference ($variant graph)', ({ fusedOps }) => {
  it('matches at every position before the first near-tie activation rounding, on 4 seeds (≥ 48 positions in all)', async () => {
    let checked = 0;
    let spikeEffect = 0;
    for (const seed of [1, 2, 3, 4]) {
      const dir = join(root, `${fusedOps ? 'f' : 'p'}-${seed}`);
      const w8 = makeW8ASpikeTinyCheckpoint(dir, { numLayers: 2, slidingWindow: 8, seed });
      const V = w8.config.vocabSize;
      const ids = Array.from({ length: PROMPT }, (_, i) => (i * 37 + 11 + seed) % V);
      const { logits: ref, safe } = reference(dir, ids);
      const model = await Model.load(openCheckpoint(dir), { cacheDir: join(root, 'models'), fusedOps, intraOpThreads: 1 });
      try {
        const got = await prefill(model, newSequence(model), ids, { allLogits: true });
        for (let t = 0; t < safe; t++) {
          let diff = 0;
          for (let v = 0; v < V; v++) diff = Math.max(diff, Math.abs((got[t * V + v] as number) - (ref[t]?.[v] as number)));
          expect(diff, `seed ${seed}, position ${t}`).toBeLessThan(TOL);
        }
        checked += safe;
      } finally {
        await model.close();
      }
      // The quantizers matter: the same weights as a dense model give other logits.
      const dense = new ReferenceSession(openCheckpoint(makeRandomTinyCheckpoint(join(dir, 'dense'), { numHeads: 4, headDim: 32, kvRatio: 2, gkLayout: 'full', numLayers: 2, slidingWindow: 8, seed }).dir));
      ids.forEach((id, t) => {
        const row = dense.step(id);
        for (let v = 0; v < V; v++) spikeEffect = Math.max(spikeEffect, Math.abs((row[v] as number) - (ref[t]?.[v] as number)));
      });
    }
    expect(checked).toBeGreaterThanOrEqual(48);
    expect(spikeEffect).toBeGreaterThan(100 * TOL);
  });
});

describe('W8ASpike spike sparsity', () => {
  it('the graph counts the zero spikes of its linear inputs as the reference does', async () => {
    const dir = join(root, 'sparsity');
    const w8 = makeW8ASpikeTinyCheckpoint(dir, { numLayers: 4, slidingWindow: 8, seed: 1 });
    const V = w8.config.vocabSize;
    const ids = Array.from({ length: PROMPT }, (_, i) => (i * 37 + 12) % V);
    const ref = new ReferenceSession(openCheckpoint(dir));
    let n = 0; // positions before the first near-tie rounding: there the counts must agree exactly
    for (const id of ids) {
      const before = tieCounter.count;
      const counts = { ...ref.spikeCounts };
      ref.step(id);
      if (tieCounter.count !== before) {
        Object.assign(ref.spikeCounts, counts);
        break;
      }
      n++;
    }
    expect(n).toBeGreaterThanOrEqual(8);
    const model = await Model.load(openCheckpoint(dir), { cacheDir: join(root, 'models'), intraOpThreads: 1 });
    try {
      const c = w8.config;
      const glaLayers = c.layerKinds.filter((k) => k === 'gla').length;
      const out = await model.run({
        batchSize: 1,
        chunkTokens: n,
        tokenIds: Int32Array.from(ids.slice(0, n)),
        positions: Int32Array.from({ length: n }, (_, i) => i),
        states: model.stateSpecs.map((s) => new Float32Array(s.floats)),
        pastTokens: 0,
        pastPositions: new Int32Array(0),
        pastKeys: Array.from({ length: c.numLayers - glaLayers }, () => new Float32Array(0)),
        pastValues: Array.from({ length: c.numLayers - glaLayers }, () => new Float32Array(0)),
        allLogits: false,
      });
      expect(out.spikes).toEqual(ref.spikeCounts);
      // Per token: 4 layers × (mixer input D + o_proj input H·d + MLP input D), all 128 wide.
      expect(ref.spikeCounts.values).toBe(n * 4 * 3 * 128);
      expect(ref.spikeCounts.zeros / ref.spikeCounts.values).toBeGreaterThan(0.05); // spikes do have zeros
    } finally {
      await model.close();
    }
  });
});

describe('W8ASpike chunked prefill and decode', () => {
  it('chunks of 1, 5 and 8, and a decode batch of 3 sequences, equal one-shot prefill', async () => {
    const dir = join(root, 'chunks');
    const w8 = makeW8ASpikeTinyCheckpoint(dir, { numLayers: 4, slidingWindow: 8, seed: 7 });
    const V = w8.config.vocabSize;
    const model = await Model.load(openCheckpoint(dir), { cacheDir: join(root, 'models'), intraOpThreads: 1 });
    const maxDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, x, i) => Math.max(m, Math.abs(x - (b[i] as number))), 0);
    try {
      const ids = Array.from({ length: PROMPT }, (_, i) => (i * 29 + 3) % V);
      const oneShot = await prefill(model, newSequence(model), ids, { allLogits: true });
      for (const chunk of [1, 5, 8]) {
        const seq = newSequence(model);
        const all = new Float32Array(PROMPT * V);
        for (let s = 0; s < PROMPT; s += chunk) all.set(await stepSequences(model, [seq], [ids.slice(s, s + chunk)], true), s * V);
        expect(maxDiff(all, oneShot)).toBeLessThan(TOL);
      }
      // Three sequences of different lengths decode their next token together as they do alone.
      const lengths = [5, 13, 24];
      const alone: Float32Array[] = [];
      const seqs = [];
      for (const n of lengths) {
        const s = newSequence(model);
        await prefill(model, s, ids.slice(0, n - 1));
        seqs.push(s);
        alone.push(oneShot.slice((n - 1) * V, n * V));
      }
      const rows = await decodeBatch(model, seqs, lengths.map((n) => ids[n - 1] as number));
      rows.forEach((row, i) => expect(maxDiff(row, alone[i] as Float32Array)).toBeLessThan(TOL));
    } finally {
      await model.close();
    }
  });
});

describe('W8ASpike checkpoint checks', () => {
  it('is detected by its scales; a checkpoint without them is dense', () => {
    const w8 = makeW8ASpikeTinyCheckpoint(join(root, 'detect'), { numLayers: 2, seed: 2 });
    expect(isW8ASpike(openCheckpoint(w8.dir))).toBe(true);
    validateCheckpoint(openCheckpoint(w8.dir));
    expect(inspectModel(w8.dir)).toMatch(/W8ASpike \(group-128 weight scales, spike-coded activations\)\n\s+hash: \w+\n\s+validation: ok/);
    expect(isW8ASpike(openCheckpoint(makeRandomTinyCheckpoint(join(root, 'dense'), { seed: 2 }).dir))).toBe(false);
  });

  it.each([
    ['a missing scales tensor', (t: Map<string, { shape: readonly number[]; data: Float32Array }>) => t.delete('model.layers.1.attn.o_proj.weight_quantizer.scales'), /"model\.layers\.1\.attn\.o_proj\.weight_quantizer\.scales" is missing/],
    ['misshaped scales', (t: Map<string, { shape: readonly number[]; data: Float32Array }>) => {
      const s = t.get('model.layers.0.attn.q_proj.weight_quantizer.scales');
      if (s !== undefined) t.set('model.layers.0.attn.q_proj.weight_quantizer.scales', { shape: [s.shape[0] ?? 0, 1], data: s.data });
    }, /q_proj\.weight_quantizer\.scales" has shape \[128, 1\], expected \[128, 1, 1\]/],
  ])('refuses %s at load, naming the tensor', async (_what, edit, message) => {
    const dir = join(root, `bad-${String(_what).replace(/\W+/g, '-')}`);
    const w8 = makeW8ASpikeTinyCheckpoint(dir, { numLayers: 2, seed: 3 });
    const tensors = new Map(w8.tensors);
    edit(tensors);
    writeCheckpoint(dir, w8.rawConfig, tensors, { dtype: 'F32', naming: 'gla_swa' });
    const ckpt = openCheckpoint(dir);
    expect(() => validateCheckpoint(ckpt)).toThrow(message);
    await expect(Model.load(ckpt, { cacheDir: join(dir, 'built') })).rejects.toThrow(ModelLoadError);
  });
});
