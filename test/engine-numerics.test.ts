// Engine numerics: the built ONNX graph in a real onnxruntime session, on tiny random checkpoints
// written to disk and read back, against the float64 reference (test/helpers/reference-forward.ts).
// Tolerance: 1e-4 max abs on logits (of magnitude ~1–5) everywhere below.
// Both graph variants are checked: the plain-op reference graph and the fused (contrib-op) fast path,
// each also with the decode graph (T = 1 steps on a second session, RoPE tables and masks from JS).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { Model } from '../src/engine/model/model.ts';
import { decodeBatch, newSequence, prefill, stepSequences } from '../src/engine/model/sequence.ts';
import { makeRandomTinyCheckpoint, type TinyCheckpointOptions } from './helpers/checkpoint-writer.ts';
import { referenceForward } from './helpers/reference-forward.ts';
import { maxAbs32, maxAbsDiff, prompt } from './helpers/numerics.ts';

const TOL = 1e-4;
const W = 8;
const PROMPT = 3 * W + 5; // 29 tokens: crosses the window three times

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-numerics-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let caseNo = 0;
async function loadCase(opts: TinyCheckpointOptions, fusedOps: boolean, decodeGraph = false) {
  const dir = join(root, `ckpt-${caseNo++}`);
  makeRandomTinyCheckpoint(dir, opts);
  const ckpt = openCheckpoint(dir);
  const model = await Model.load(ckpt, { cacheDir: join(root, 'models'), fusedOps, intraOpThreads: 1, ...(decodeGraph ? { decodeIntraOpThreads: 1 } : {}) });
  expect(model.hasDecodeSession).toBe(decodeGraph);
  return { ckpt, model };
}

const CASES: { name: string; opts: TinyCheckpointOptions }[] = [
  { name: 'H/Hkv=2, d=16, default SWA layers, low-rank gates, fp32', opts: { kvRatio: 2, headDim: 16 } },
  { name: 'H/Hkv=1, d=64, full-rank gates, tied, fp32', opts: { numHeads: 2, kvRatio: 1, headDim: 64, gkLayout: 'full', tied: true, numLayers: 2 } },
  { name: 'H/Hkv=4, d=16, attn_layers [0, 3], bf16 file', opts: { kvRatio: 4, attnLayers: [0, 3], dtype: 'BF16', seed: 3 } },
  { name: 'gla_swa with full attention layers (no window)', opts: { slidingWindow: null, attnLayers: [2], numLayers: 3, seed: 4 } },
  { name: 'qwen2 (all layers full attention), tied', opts: { modelType: 'qwen2', tied: true, numLayers: 2, seed: 5 } },
];

describe.each([
  { variant: 'fused', fusedOps: true },
  { variant: 'plain', fusedOps: false },
])('engine logits vs float64 reference ($variant graph)', ({ fusedOps }) => {
  it.each(CASES)('$name: one-shot prompt of 3W+5 tokens, every position', async ({ opts }) => {
    const { ckpt, model } = await loadCase(opts, fusedOps);
    try {
      const ids = prompt(PROMPT, ckpt.config.vocabSize);
      const ref = referenceForward(ckpt, ids);
      const logits = await prefill(model, newSequence(model), ids, { allLogits: true });
      expect(maxAbsDiff(logits, ref, ckpt.config.vocabSize)).toBeLessThan(TOL);
    } finally {
      await model.close();
    }
  });
});

describe.each([
  { variant: 'fused', fusedOps: true, decodeGraph: false },
  { variant: 'plain', fusedOps: false, decodeGraph: false },
  { variant: 'fused, decode graph', fusedOps: true, decodeGraph: true },
  { variant: 'plain, decode graph', fusedOps: false, decodeGraph: true },
])('chunked prefill, decode and batching ($variant)', ({ fusedOps, decodeGraph }) => {
  let ctx: Awaited<ReturnType<typeof loadCase>>;
  let ids: number[];
  let oneShot: Float32Array;
  const V = 96;
  beforeAll(async () => {
    ctx = await loadCase({ kvRatio: 2, headDim: 16, vocabSize: V, seed: 7 }, fusedOps, decodeGraph);
    ids = prompt(PROMPT, V, 1);
    oneShot = await prefill(ctx.model, newSequence(ctx.model), ids, { allLogits: true });
    expect(maxAbsDiff(oneShot, referenceForward(ctx.ckpt, ids), V)).toBeLessThan(TOL);
  });
  afterAll(async () => {
    await ctx.model.close();
  });

  it.each([1, 2, W - 1, W, W + 1, 64])('chunks of %i tokens equal one-shot; kept KV ≤ W, state bytes constant', async (chunk) => {
    const { model } = ctx;
    const seq = newSequence(model);
    const all = new Float32Array(PROMPT * V);
    for (let start = 0; start < PROMPT; start += chunk) {
      const part = ids.slice(start, start + chunk);
      // The run sees at most W past slots plus this chunk.
      expect(seq.keptTokens).toBeLessThanOrEqual(W);
      all.set(await stepSequences(model, [seq], [part], true), start * V);
      expect(seq.keptTokens).toBe(Math.min(W, seq.numTokens));
      expect(seq.kvBytes).toBe(seq.keptTokens * model.kvBytesPerToken);
      expect(seq.stateBytes).toBe(model.stateBytesPerSequence);
    }
    expect(maxAbs32(all, oneShot)).toBeLessThan(TOL);
  });

  it('decode after prefill equals one-shot at every decoded position', async () => {
    const { model } = ctx;
    const seq = newSequence(model);
    const split = 2 * W + 1;
    const last = await prefill(model, seq, ids.slice(0, split), { chunkTokens: W + 3 });
    expect(maxAbs32(last, oneShot.subarray((split - 1) * V, split * V))).toBeLessThan(TOL);
    for (let t = split; t < PROMPT; t++) {
      const [logits] = await decodeBatch(model, [seq], [ids[t] ?? 0]);
      expect(maxAbs32(logits ?? new Float32Array(0), oneShot.subarray(t * V, (t + 1) * V))).toBeLessThan(TOL);
    }
    expect(seq.stateBytes).toBe(model.stateBytesPerSequence);
    expect(seq.keptTokens).toBe(W);
  });

  it('a decode batch of 4 sequences of different lengths equals 4 single runs', async () => {
    const { model } = ctx;
    const lengths = [1, 5, W + 2, 3 * W];
    const prompts = lengths.map((n, i) => prompt(n, V, i + 2));
    const batched = lengths.map(() => newSequence(model));
    const single = lengths.map(() => newSequence(model));
    for (let i = 0; i < lengths.length; i++) {
      await prefill(model, batched[i]!, prompts[i]!, { chunkTokens: 7 });
      await prefill(model, single[i]!, prompts[i]!, { chunkTokens: 7 });
    }
    for (let step = 0; step < 3; step++) {
      const next = lengths.map((_, i) => (step * 29 + i * 17 + 3) % V);
      const out = await decodeBatch(model, batched, next);
      for (let i = 0; i < lengths.length; i++) {
        const [alone] = await decodeBatch(model, [single[i]!], [next[i]!]);
        expect(maxAbs32(out[i]!, alone!)).toBeLessThan(TOL);
      }
    }
  });
});

describe.each([
  { variant: 'fused', fusedOps: true },
  { variant: 'plain', fusedOps: false },
])('Model.run with B > 1 and T > 1 ($variant graph)', ({ fusedOps }) => {
  it('a batch of 2 chunks over different, unordered pasts equals the 2 runs alone', async () => {
    const V = 96;
    const { model } = await loadCase({ kvRatio: 4, headDim: 16, vocabSize: V, seed: 8 }, fusedOps);
    try {
      // Two sequences with 3W−1 and W−3 tokens of history, then a 5-token chunk each in one run.
      const seqs = [newSequence(model), newSequence(model)];
      await prefill(model, seqs[0]!, prompt(3 * W - 1, V, 3), { chunkTokens: 6 });
      await prefill(model, seqs[1]!, prompt(W - 3, V, 4), { chunkTokens: 4 });
      const chunks = [prompt(5, V, 5), prompt(5, V, 6)];
      const alone = [];
      for (let b = 0; b < 2; b++) {
        const copy = newSequence(model);
        Object.assign(copy, { numTokens: seqs[b]!.numTokens, states: seqs[b]!.states.map((x) => x.slice()) });
        copy.keys = seqs[b]!.keys.map((x) => x.slice());
        copy.values = seqs[b]!.values.map((x) => x.slice());
        copy.keptPositions = seqs[b]!.keptPositions.slice();
        alone.push(await stepSequences(model, [copy], [chunks[b]!], true));
      }
      // The ring's slots are not in position order once the window has wrapped (sequence 0).
      const kept = Array.from(seqs[0]!.keptPositions);
      expect(kept).not.toEqual([...kept].sort((a, b) => a - b));
      const both = await stepSequences(model, seqs, chunks, true);
      const n = 5 * V;
      expect(maxAbs32(both.subarray(0, n), alone[0]!)).toBeLessThan(TOL);
      expect(maxAbs32(both.subarray(n, 2 * n), alone[1]!)).toBeLessThan(TOL);
    } finally {
      await model.close();
    }
  });

  it('rejects inputs whose sizes do not match B, T and P', async () => {
    const { model } = await loadCase({ numLayers: 2, seed: 9 }, fusedOps);
    try {
      const ok = {
        batchSize: 1,
        chunkTokens: 2,
        tokenIds: Int32Array.of(1, 2),
        positions: Int32Array.of(0, 1),
        states: model.stateSpecs.map((s) => new Float32Array(s.floats)),
        pastTokens: 0,
        pastPositions: new Int32Array(0),
        pastKeys: model.attentionLayers.map(() => new Float32Array(0)),
        pastValues: model.attentionLayers.map(() => new Float32Array(0)),
        allLogits: false,
      };
      await expect(model.run(ok)).resolves.toBeDefined();
      await expect(model.run({ ...ok, tokenIds: Int32Array.of(1) })).rejects.toThrow(/tokenIds/);
      await expect(model.run({ ...ok, pastTokens: 1 })).rejects.toThrow(/pastPositions/);
      await expect(model.run({ ...ok, states: [] })).rejects.toThrow(/states/);
    } finally {
      await model.close();
    }
  });
});

describe('the decode graph (T = 1 on a second session)', () => {
  // Same checkpoint loaded twice: one Model runs T = 1 on the step graph, the other on the decode graph,
  // whose RoPE tables and masks come from JS. Same inputs → the same outputs to float32 rounding.
  const EXACT = 1e-5;
  it.each([
    { name: 'SWA, fp32', opts: { kvRatio: 2, headDim: 16, seed: 21 }, weightDtype: 'float32' as const },
    { name: 'full attention, fp32', opts: { slidingWindow: null, attnLayers: [1], numLayers: 3, seed: 22 }, weightDtype: 'float32' as const },
    { name: 'SWA, int8 weights', opts: { kvRatio: 2, headDim: 16, seed: 23 }, weightDtype: 'int8' as const },
  ])('$name: a batch of 3 rows over unordered, partly empty pasts, at positions up to 2^30, equals the step graph', async ({ opts, weightDtype }) => {
    const dir = join(root, `ckpt-${caseNo++}`);
    makeRandomTinyCheckpoint(dir, opts);
    const ckpt = openCheckpoint(dir);
    const common = { cacheDir: join(root, 'models'), intraOpThreads: 1, weightDtype };
    const step = await Model.load(ckpt, common);
    const decode = await Model.load(ckpt, { ...common, decodeIntraOpThreads: 1 });
    try {
      const { numKvHeads: Hkv, headDim: d, vocabSize: V } = ckpt.config;
      const B = 3;
      const P = W + 3;
      const qp = [5, W + 9, 2 ** 30];
      // Row 0 has 5 past tokens, row 1 a wrapped window (slots out of order, some beyond W back),
      // row 2 a window just below 2^30; −1 marks empty slots.
      const pastPositions = new Int32Array(B * P).fill(-1);
      for (let j = 0; j < 5; j++) pastPositions[j] = 4 - j;
      for (let j = 0; j < P; j++) pastPositions[P + j] = (W + 8 - ((j * 5) % (W + 3)));
      for (let j = 0; j < W; j++) pastPositions[2 * P + j] = 2 ** 30 - 1 - j;
      const rand = (n: number, seed: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + seed) * 0.5);
      const input = {
        batchSize: B,
        chunkTokens: 1,
        tokenIds: Int32Array.of(3, 17, 42),
        positions: Int32Array.from(qp),
        states: step.stateSpecs.map((s, i) => rand(B * s.floats, i)),
        pastTokens: P,
        pastPositions,
        pastKeys: step.attentionLayers.map((_, i) => rand(B * Hkv * P * d, 10 + i)),
        pastValues: step.attentionLayers.map((_, i) => rand(B * Hkv * P * d, 20 + i)),
        allLogits: false,
      };
      const a = await step.run(input);
      const b = await decode.run(input);
      expect(b.logits.length).toBe(B * V);
      expect(maxAbs32(b.logits, a.logits)).toBeLessThan(EXACT);
      b.states.forEach((s, i) => expect(maxAbs32(s, a.states[i]!)).toBeLessThan(EXACT));
      b.presentKeys.forEach((k, i) => expect(maxAbs32(k, a.presentKeys[i]!)).toBeLessThan(EXACT));
      b.presentValues.forEach((v, i) => expect(maxAbs32(v, a.presentValues[i]!)).toBeLessThan(EXACT));
      // A mask that attended every slot would change the logits: the empty and out-of-window slots matter.
      const unmasked = await decode.run({ ...input, pastPositions: pastPositions.map((p, j) => (p < 0 ? qp[Math.floor(j / P)]! - 1 : p)) });
      expect(maxAbs32(unmasked.logits, a.logits)).toBeGreaterThan(1e-3);
    } finally {
      await step.close();
      await decode.close();
    }
  });
});

describe('RoPE at large absolute positions', () => {
  it('an attention-only model gives the same logits at positions 0… and 2^30… (angles computed in float64)', async () => {
    // q·k under RoPE depends only on p_q − p_k, so shifting every position leaves the logits unchanged.
    // Float32 angles p·θ^(−2i/d) would be off by up to ~32 rad at p = 2^30 (ulp of 2^30 is 64) and break this.
    for (const fusedOps of [true, false]) {
      const { model } = await loadCase({ numLayers: 2, attnLayers: [0, 1], seed: 12 }, fusedOps);
      try {
        const n = 20;
        const run = (offset: number) =>
          model.run({
            batchSize: 1,
            chunkTokens: n,
            tokenIds: Int32Array.from(prompt(n, 96, 7)),
            positions: Int32Array.from({ length: n }, (_, t) => offset + t),
            states: [],
            pastTokens: 0,
            pastPositions: new Int32Array(0),
            pastKeys: model.attentionLayers.map(() => new Float32Array(0)),
            pastValues: model.attentionLayers.map(() => new Float32Array(0)),
            allLogits: true,
          });
        const [a, b] = [await run(0), await run(2 ** 30)];
        expect(maxAbs32(a.logits, b.logits)).toBeLessThan(TOL);
      } finally {
        await model.close();
      }
    }
  });
});

describe('numerical range of the chunked GLA', () => {
  it('strongly decaying gates over a long chunk stay finite and match the reference (plain and fused)', async () => {
    // scale 4 spreads gate logits to |z| ≫ 16, so per-token log-decays reach several units and the
    // cumulative decay over a 200-token chunk is far below float32's exp range.
    for (const fusedOps of [false, true]) {
      const { ckpt, model } = await loadCase({ numLayers: 2, attnLayers: [1], scale: 4, seed: 11, vocabSize: 64 }, fusedOps);
      try {
        const ids = prompt(200, 64, 5);
        const ref = referenceForward(ckpt, ids);
        const logits = await prefill(model, newSequence(model), ids, { allLogits: true });
        expect(logits.every(Number.isFinite)).toBe(true);
        let mag = 0;
        for (const r of ref) for (const x of r) mag = Math.max(mag, Math.abs(x));
        expect(maxAbsDiff(logits, ref, 64)).toBeLessThan(TOL * Math.max(1, mag));
      } finally {
        await model.close();
      }
    }
  });
});
