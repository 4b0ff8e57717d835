// Qwen3.5 (Gated DeltaNet + gated full attention) numerics: the built ONNX graph in a real onnxruntime
// session, on tiny random checkpoints written to disk in both layouts (Qwen3_5ForCausalLM and the
// multimodal wrapper) and read back, against the float64 reference (helpers/reference-qwen3_5.ts, itself
// checked against transformers in qwen3_5-reference.test.ts). Tolerance: 1e-4 max abs on logits.
// Both graph variants: fused (CausalConvWithState + LinearAttention) and plain ops (chunked delta rule).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { Model } from '../src/engine/model/model.ts';
import { decodeBatch, newSequence, prefill, stepSequences, type Sequence } from '../src/engine/model/sequence.ts';
import { makeRandomTinyCheckpoint, type TinyCheckpointOptions } from './helpers/checkpoint-writer.ts';
import { qwen3_5ReferenceForward } from './helpers/reference-qwen3_5.ts';
import { copySequence, maxAbs32, maxAbsDiff as maxAbsDiffV, prompt as promptIds } from './helpers/numerics.ts';

const TOL = 1e-4;
const V = 96;
/** The plain graph's sub-chunk C (Model.load's default glaSubChunk) and the conv kernel K of the tiny models. */
const C = 16;
const K = 4;
const PROMPT = 2 * C + 9; // 41 tokens: crosses sub-chunk boundaries twice

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-q35-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

const prompt = (n: number, salt = 0): number[] => promptIds(n, V, salt);

const maxAbsDiff = (a: Float32Array, b: readonly Float64Array[]): number => maxAbsDiffV(a, b, V);

let caseNo = 0;
/** decodeGraph: one-token runs of ≤ 4 rows go to a second session on the decode graph (T = 1; RoPE tables and masks from JS). */
async function loadCase(opts: TinyCheckpointOptions, fusedOps: boolean, decodeGraph = false) {
  const dir = join(root, `ckpt-${caseNo++}`);
  makeRandomTinyCheckpoint(dir, { modelType: 'qwen3_5', vocabSize: V, ...opts });
  const ckpt = openCheckpoint(dir);
  const model = await Model.load(ckpt, { cacheDir: join(root, 'models'), fusedOps, intraOpThreads: 1, ...(decodeGraph ? { decodeIntraOpThreads: 1 } : {}) });
  return { ckpt, model };
}

const CASES: { name: string; opts: TinyCheckpointOptions }[] = [
  { name: 'Qwen3_5ForCausalLM, Hv = 2·Hk, fp32', opts: { seed: 1 } },
  { name: 'Qwen3_5ForConditionalGeneration (vision + MTP tensors skipped), tied, bf16', opts: { seed: 2, qwen3_5Layout: 'multimodal', tied: true, dtype: 'BF16', extraTensors: true } },
  { name: 'Qwen3_5ForCausalLM, bf16, layer_types [full, gdn, gdn, full, gdn], Hv = Hk, dk ≠ dv, full rotary', opts: {
    seed: 3, dtype: 'BF16', numLayers: 5, partialRotaryFactor: 1,
    layerTypes: ['full_attention', 'linear_attention', 'linear_attention', 'full_attention', 'linear_attention'],
    gdn: { numKeyHeads: 2, numValueHeads: 2, keyHeadDim: 16, valueHeadDim: 8, convKernel: 3 },
  } },
  { name: 'Qwen3_5ForConditionalGeneration, fp32, 4 value heads per key head, H/Hkv = 4', opts: {
    seed: 4, qwen3_5Layout: 'multimodal', kvRatio: 4, gdn: { numKeyHeads: 1, numValueHeads: 4, keyHeadDim: 8, valueHeadDim: 12, convKernel: 4 },
  } },
];

describe.each([
  { variant: 'fused', fusedOps: true },
  { variant: 'plain', fusedOps: false },
])('Qwen3.5 logits vs float64 reference ($variant graph)', ({ fusedOps }) => {
  it.each(CASES)('$name: one-shot prompt, every position', async ({ opts }) => {
    const { ckpt, model } = await loadCase(opts, fusedOps);
    try {
      expect(ckpt.config.modelType).toBe('qwen3_5');
      expect(ckpt.config.layerKinds).toContain('gdn');
      const ids = prompt(PROMPT);
      const ref = qwen3_5ReferenceForward(ckpt, ids);
      const logits = await prefill(model, newSequence(model), ids, { allLogits: true });
      expect(maxAbsDiff(logits, ref)).toBeLessThan(TOL);
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
])('Qwen3.5 chunked, resumed and batched runs equal one-shot ($variant graph)', ({ fusedOps, decodeGraph }) => {
  let ctx: Awaited<ReturnType<typeof loadCase>>;
  let ids: number[];
  let oneShot: Float32Array;
  beforeAll(async () => {
    ctx = await loadCase({ seed: 7, numLayers: 4 }, fusedOps, decodeGraph);
    expect(ctx.model.decodeThreads).toBe(decodeGraph ? 1 : null);
    ids = prompt(PROMPT, 1);
    oneShot = await prefill(ctx.model, newSequence(ctx.model), ids, { allLogits: true });
    expect(maxAbsDiff(oneShot, qwen3_5ReferenceForward(ctx.ckpt, ids))).toBeLessThan(TOL);
  });
  afterAll(async () => {
    await ctx.model.close();
  });

  it.each([1, K - 1, K, K + 1, C - 1, C, C + 1, 64])('chunks of %i tokens; state bytes constant, KV = one slot per token', async (chunk) => {
    const { model } = ctx;
    const seq = newSequence(model);
    const all = new Float32Array(PROMPT * V);
    for (let start = 0; start < PROMPT; start += chunk) {
      all.set(await stepSequences(model, [seq], [ids.slice(start, start + chunk)], true), start * V);
      expect(seq.stateBytes).toBe(model.stateBytesPerSequence);
      expect(seq.kvBytes).toBe(seq.numTokens * model.kvBytesPerToken); // full attention keeps every token
    }
    expect(maxAbs32(all, oneShot)).toBeLessThan(TOL);
  });

  it('a run resumed from a copy of the state (a snapshot) continues exactly, then decodes', async () => {
    const { model } = ctx;
    const first = newSequence(model);
    const split = C + 3;
    await prefill(model, first, ids.slice(0, split), { chunkTokens: 5 });
    const resumed = copySequence(model, first);
    const rest = await prefill(model, resumed, ids.slice(split, PROMPT - 4), { allLogits: true, chunkTokens: 9 });
    expect(maxAbs32(rest, oneShot.subarray(split * V, (PROMPT - 4) * V))).toBeLessThan(TOL);
    for (let t = PROMPT - 4; t < PROMPT; t++) {
      const [logits] = await decodeBatch(model, [resumed], [ids[t] ?? 0]);
      expect(maxAbs32(logits ?? new Float32Array(0), oneShot.subarray(t * V, (t + 1) * V))).toBeLessThan(TOL);
    }
    // The original was not disturbed by the copy's run.
    const [again] = await decodeBatch(model, [first], [ids[split] ?? 0]);
    expect(maxAbs32(again ?? new Float32Array(0), oneShot.subarray(split * V, (split + 1) * V))).toBeLessThan(TOL);
  });

  it('a decode batch of 4 sequences of different lengths equals 4 single runs', async () => {
    const { model } = ctx;
    const lengths = [1, 5, C + 2, 3 * C];
    const prompts = lengths.map((n, i) => prompt(n, i + 2));
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

  it('a batch of 2 prefill chunks (B = 2, T = 6) over different pasts equals the 2 runs alone', async () => {
    const { model } = ctx;
    const seqs = [newSequence(model), newSequence(model)];
    await prefill(model, seqs[0]!, prompt(2 * C + 1, 3), { chunkTokens: 6 });
    await prefill(model, seqs[1]!, prompt(3, 4));
    const chunks = [prompt(6, 5), prompt(6, 6)];
    const alone = [];
    for (let b = 0; b < 2; b++) alone.push(await stepSequences(model, [copySequence(model, seqs[b]!)], [chunks[b]!], true));
    const both = await stepSequences(model, seqs, chunks, true);
    expect(maxAbs32(both.subarray(0, 6 * V), alone[0]!)).toBeLessThan(TOL);
    expect(maxAbs32(both.subarray(6 * V), alone[1]!)).toBeLessThan(TOL);
  });
});

describe('Qwen3.5 numerical range', () => {
  it('strongly decaying gates and saturated betas over a 200-token chunk stay finite and match the reference', async () => {
    // scale 4 spreads a, b and A_log: per-token log-decays of several units, β near 0 and 1.
    for (const fusedOps of [false, true]) {
      const { ckpt, model } = await loadCase({ seed: 11, scale: 4, numLayers: 4 }, fusedOps);
      try {
        const ids = prompt(200, 5);
        const ref = qwen3_5ReferenceForward(ckpt, ids);
        const logits = await prefill(model, newSequence(model), ids, { allLogits: true });
        expect(logits.every(Number.isFinite)).toBe(true);
        let mag = 0;
        for (const r of ref) for (const x of r) mag = Math.max(mag, Math.abs(x));
        expect(maxAbsDiff(logits, ref)).toBeLessThan(TOL * Math.max(1, mag));
      } finally {
        await model.close();
      }
    }
  });
});
