// int8 / int4 weights (MatMulNBits, 8- or 4-bit blocks of 32 along the input dim): the quantizer
// against a brute-force nearest-code search, the graph against the float64 reference, and the default
// model's quality with quantized weights against its fp32 build.
//
// Graph check: a checkpoint whose weight rows are already on the n-bit grid with power-of-two scales
// quantizes losslessly (every code and scale comes back exactly, also after the builder folds the
// 1/√d and −1 factors into rows), so with float32 activations (accuracy_level 0) the int8 graph must
// equal the float64 reference at the fp32 graph's tolerance, 1e-4. Any layout slip (row/column,
// block order, padding, zero point) breaks that by orders of magnitude. The fast path quantizes
// activations to int8 per block as well; its error is bounded separately.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import type { Tensor32 } from '../src/engine/model/checkpoint.ts';
import { scoreNextTokens, type NextTokenScore } from '../src/engine/model/evaluate.ts';
import { AUTO_DECODE_SESSION_MAX_PARAMETERS, Model, autoDecodeThreads, autoWeightDtype } from '../src/engine/model/model.ts';
import { EXTERNAL_DATA_FILE } from '../src/engine/model/onnx/model-graph.ts';
import { QUANT_BLOCK, codeAt, maxLevel, quantize, zeroCode, type QuantBits } from '../src/engine/model/onnx/quantize.ts';
import { newSequence, prefill } from '../src/engine/model/sequence.ts';
import { makeRandomTinyCheckpoint, makeW8ASpikeTinyCheckpoint, tensorMapCheckpoint, type TinyCheckpointOptions } from './helpers/checkpoint-writer.ts';
import { referenceForward } from './helpers/reference-forward.ts';

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-int8-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** Deterministic uniform numbers in [−0.5, 0.5). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

describe.each([{ bits: 8 as QuantBits }, { bits: 4 as QuantBits }])('quantize, $bits bits', ({ bits }) => {
  it('gives every weight its nearest code for the block scale max|w|/Q, padding with the zero code', () => {
    const rnd = lcg(3 + bits);
    const N = 5;
    const K = 2 * QUANT_BLOCK + 7; // the third block is padded
    const w = Float32Array.from({ length: N * K }, () => rnd() * 3);
    w.fill(0, 0, QUANT_BLOCK); // an all-zero block
    const q = quantize(w, N, K, bits);
    const Q = maxLevel(bits);
    const zero = zeroCode(bits);
    expect(q.blocksPerRow).toBe(3);
    expect(q.codes.length).toBe((N * 3 * QUANT_BLOCK * bits) / 8);
    expect(q.scales.length).toBe(N * 3);
    for (let n = 0; n < N; n++) {
      for (let b = 0; b < 3; b++) {
        const block = Array.from({ length: QUANT_BLOCK }, (_, j) => b * QUANT_BLOCK + j);
        const absMax = Math.max(...block.filter((k) => k < K).map((k) => Math.abs(w[n * K + k] as number)));
        const s = q.scales[n * 3 + b] as number;
        expect(s).toBe(absMax === 0 ? 1 : Math.fround(absMax / Q));
        for (const k of block) {
          const code = codeAt(q, bits, n, k);
          if (k >= K) {
            expect(code).toBe(zero);
            continue;
          }
          // Brute force: no other code of the symmetric range decodes closer to the weight.
          const x = w[n * K + k] as number;
          const err = (c: number): number => Math.abs((c - zero) * s - x);
          let best = zero - Q;
          for (let c = zero - Q + 1; c <= zero + Q; c++) if (err(c) < err(best)) best = c;
          expect(err(code)).toBeLessThanOrEqual(err(best) + 1e-12);
          expect(Math.abs(code - zero)).toBeLessThanOrEqual(Q);
        }
      }
    }
  });
});

describe('quantized weights: bad input', () => {
  it('refuses a non-finite weight, naming the tensor, when the model is built', async () => {
    const tiny = makeRandomTinyCheckpoint(join(root, 'nan'), { seed: 2 });
    const tensors = new Map(tiny.tensors);
    const name = [...tensors.keys()].find((k) => k.endsWith('mlp.down_proj.weight')) ?? '';
    const t = tensors.get(name) as Tensor32;
    const data = Float32Array.from(t.data);
    data[3] = NaN;
    tensors.set(name, { shape: t.shape, data });
    const ckpt = tensorMapCheckpoint(tiny.config, tensors);
    await expect(Model.load(ckpt, { cacheDir: join(root, 'nan-models'), weightDtype: 'int8' })).rejects.toThrow(/"layers\.\d+\.mlp\.down\.weight" holds NaN/);
  });
});

/**
 * The tensors with every matrix row snapped, per block of QUANT_BLOCK along the input dim, to
 * q·2^e with integer |q| ≤ Q and the block's largest entry exactly ±Q·2^e: the quantizer then finds
 * scale 2^e and codes q again, exactly.
 */
function snapToGrid(tensors: ReadonlyMap<string, Tensor32>, bits: QuantBits): Map<string, Tensor32> {
  const Q = maxLevel(bits);
  const out = new Map<string, Tensor32>();
  for (const [name, t] of tensors) {
    if (t.shape.length !== 2) {
      out.set(name, t);
      continue;
    }
    const [rows, K] = t.shape as [number, number];
    const data = Float32Array.from(t.data);
    for (let r = 0; r < rows; r++) {
      for (let b0 = 0; b0 < K; b0 += QUANT_BLOCK) {
        const end = Math.min(K, b0 + QUANT_BLOCK);
        let arg = r * K + b0;
        for (let i = r * K + b0; i < r * K + end; i++) if (Math.abs(data[i] as number) > Math.abs(data[arg] as number)) arg = i;
        const absMax = Math.abs(data[arg] as number);
        if (absMax === 0) continue;
        const s = 2 ** Math.ceil(Math.log2(absMax / Q));
        for (let i = r * K + b0; i < r * K + end; i++) data[i] = Math.round((data[i] as number) / s) * s;
        data[arg] = Math.sign(data[arg] as number) * Q * s;
      }
    }
    out.set(name, { shape: t.shape, data });
  }
  return out;
}

const CASES: { name: string; opts: TinyCheckpointOptions }[] = [
  { name: 'H/Hkv=2, d=16, low-rank gates (K=16 < one block)', opts: { kvRatio: 2, headDim: 16, seed: 11 } },
  { name: 'H/Hkv=1, d=64, full-rank gates, tied (lm_head from the embedding)', opts: { numHeads: 2, kvRatio: 1, headDim: 64, gkLayout: 'full', tied: true, numLayers: 2, seed: 12 } },
  { name: 'd=24: K=96 and 48 (a padded block), attn_layers [0, 3]', opts: { numHeads: 2, kvRatio: 2, headDim: 24, attnLayers: [0, 3], seed: 13 } },
];

let caseNo = 0;
describe.each([
  { variant: 'fused', fusedOps: true, weightDtype: 'int8' as const, bits: 8 as QuantBits },
  { variant: 'plain', fusedOps: false, weightDtype: 'int8' as const, bits: 8 as QuantBits },
  { variant: 'fused', fusedOps: true, weightDtype: 'int4' as const, bits: 4 as QuantBits },
  { variant: 'plain', fusedOps: false, weightDtype: 'int4' as const, bits: 4 as QuantBits },
])('$weightDtype graph vs float64 reference ($variant graph)', ({ fusedOps, weightDtype, bits }) => {
  it.each(CASES)('$name: lossless weights, float32 activations: within 1e-4; int8 activations: within 5% of max |logit|', async ({ opts }) => {
    const tiny = makeRandomTinyCheckpoint(join(root, `ckpt-${caseNo}`), opts);
    const ckpt = tensorMapCheckpoint(tiny.config, snapToGrid(tiny.tensors, bits));
    const cacheDir = join(root, `models-${caseNo++}`);
    const V = ckpt.config.vocabSize;
    const ids = Array.from({ length: 29 }, (_, i) => (i * 37 + 11) % V);
    const ref = referenceForward(ckpt, ids);
    const diff = (a: Float32Array): { maxDiff: number; maxLogit: number } => {
      let maxDiff = 0;
      let maxLogit = 0;
      ref.forEach((row, t) => {
        for (let v = 0; v < V; v++) {
          maxDiff = Math.max(maxDiff, Math.abs((a[t * V + v] as number) - (row[v] as number)));
          maxLogit = Math.max(maxLogit, Math.abs(row[v] as number));
        }
      });
      return { maxDiff, maxLogit };
    };
    const exact = await Model.load(ckpt, { cacheDir, fusedOps, intraOpThreads: 1, weightDtype, int8Activations: false });
    const fast = await Model.load(ckpt, { cacheDir, fusedOps, intraOpThreads: 1, weightDtype });
    try {
      expect(diff(await prefill(exact, newSequence(exact), ids, { allLogits: true })).maxDiff).toBeLessThan(1e-4);
      const { maxDiff, maxLogit } = diff(await prefill(fast, newSequence(fast), ids, { allLogits: true }));
      // Measured 2.5–3.5% on these tiny random models (D ≤ 64: every block is a whole head or less).
      expect(maxDiff).toBeLessThan(0.05 * maxLogit);
      expect(maxDiff).toBeGreaterThan(1e-4); // the activations really were quantized
    } finally {
      await exact.close();
      await fast.close();
    }
  });
});

describe('int8 weights on the default model', () => {
  const MODEL_DIR = resolve(import.meta.dirname, '..', 'models', 'spikingbrain-tiny');
  interface EvalSlice {
    token_ids: number[];
    mean_nll: number;
  }

  it('stores < 0.4 of the fp32 bytes, loses < 1% of validation loss and keeps the most likely token at > 95% of positions', async () => {
    const ckpt = openCheckpoint(MODEL_DIR);
    const cacheDir = join(root, 'default-models');
    const m32 = await Model.load(ckpt, { cacheDir, intraOpThreads: 1 });
    const m8 = await Model.load(ckpt, { cacheDir, intraOpThreads: 1, weightDtype: 'int8' });
    try {
      const dirs = readdirSync(cacheDir);
      const bytes = (suffix: string): number => {
        const d = dirs.find((x) => (suffix === '' ? !x.includes('-int8') : x.endsWith(suffix)));
        return statSync(join(cacheDir, d ?? 'missing', EXTERNAL_DATA_FILE)).size;
      };
      // 1.125 bytes per linear weight (a 4-byte scale per 32 codes); the embedding table stays fp32
      // (4096×256, 11% of the fp32 model) and the tied lm_head adds an int8 copy: 0.36 of the fp32 file.
      expect(bytes('-int8') / bytes('')).toBeLessThan(0.4);

      const ev = JSON.parse(readFileSync(join(MODEL_DIR, 'eval.json'), 'utf8')) as EvalSlice;
      const V = ckpt.config.vocabSize;
      const ids = ev.token_ids;
      const score = async (model: Model): Promise<NextTokenScore> =>
        scoreNextTokens(await prefill(model, newSequence(model), ids, { chunkTokens: 512, allLogits: true }), ids, V);
      const s32 = await score(m32);
      const s8 = await score(m8);
      expect(Math.abs(s32.meanNll - ev.mean_nll) / ev.mean_nll).toBeLessThan(0.01);
      expect(Math.abs(s8.meanNll - s32.meanNll) / s32.meanNll).toBeLessThan(0.01);
      // The most likely next token is the same at almost every position of the slice.
      const same = s32.argmax.filter((v, i) => v === s8.argmax[i]).length / s32.argmax.length;
      console.log(`int8 vs fp32 on eval.json: mean NLL ${s8.meanNll.toFixed(4)} vs ${s32.meanNll.toFixed(4)}, same argmax at ${(same * 100).toFixed(1)}% of ${s32.argmax.length} positions`);
      expect(same).toBeGreaterThan(0.95);
    } finally {
      await m32.close();
      await m8.close();
    }
  });
});

describe("the server's 'auto' weights and decode session", () => {
  it('int8 and a 1-thread decode session on the CPU for a small model; float32 for W8ASpike; float16 and one session on GPUs', async () => {
    const plain = openCheckpoint(makeRandomTinyCheckpoint(join(root, 'auto-plain'), { numLayers: 2, seed: 3 }).dir);
    const spiking = openCheckpoint(makeW8ASpikeTinyCheckpoint(join(root, 'auto-w8'), { numLayers: 2, slidingWindow: 8, seed: 3 }).dir);
    expect([autoWeightDtype(plain, 'cpu'), autoWeightDtype(spiking, 'cpu'), autoWeightDtype(plain, 'webgpu'), autoWeightDtype(plain, 'cuda')]).toEqual(['int8', 'float32', 'float16', 'float16']);
    const large = Object.assign(Object.create(plain) as typeof plain, { numParameters: AUTO_DECODE_SESSION_MAX_PARAMETERS + 1 });
    expect([autoDecodeThreads(plain, 'cpu'), autoDecodeThreads(large, 'cpu'), autoDecodeThreads(plain, 'webgpu')]).toEqual([1, undefined, undefined]);

    const model = await Model.load(plain, { cacheDir: join(root, 'auto-models'), intraOpThreads: 1, weightDtype: 'auto', decodeIntraOpThreads: 'auto' });
    try {
      expect([model.weightDtype, model.decodeThreads, model.hasDecodeSession]).toEqual(['int8', 1, true]);
      expect(model.summary).toMatch(/weights int8, decode session of 1 thread/);
    } finally {
      await model.close();
    }
  });
});
