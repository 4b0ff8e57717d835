// Checks of the float64 reference itself on hand-computable models (identity projections, zero MLPs),
// so that the engine's numerics tests compare against something known to be right.
import { describe, expect, it } from 'vitest';
import type { Tensor32 } from '../src/engine/model/checkpoint.ts';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { layerTensorNames, modelTensorSpecs, LM_HEAD } from '../src/engine/model/tensor-names.ts';
import { tensorMapCheckpoint, tinyRawConfig, type TinyCheckpointOptions } from './helpers/checkpoint-writer.ts';
import { applyRope, logSigmoid, ReferenceSession, referenceForward } from './helpers/reference-forward.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';

const EPS = 1e-6; // norm_eps of tinyRawConfig

/** A checkpoint whose tensors are all zero except norms (1) and the given overrides (row-major values). */
function handModel(opts: TinyCheckpointOptions, overrides: Record<string, number[]>, raw: Record<string, unknown> = {}) {
  const config = parseModelConfig({ ...tinyRawConfig(opts), ...raw });
  const tensors = new Map<string, Tensor32>();
  for (const spec of modelTensorSpecs(config, opts.gkLayout ?? 'lowrank')) {
    const size = spec.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size).fill(spec.name.endsWith('norm.weight') ? 1 : 0);
    const o = overrides[spec.name];
    if (o !== undefined) {
      if (o.length !== size) throw new Error(`${spec.name}: ${o.length} values for shape ${spec.shape}`);
      data.set(o);
    }
    tensors.set(spec.name, { shape: spec.shape, data });
  }
  return tensorMapCheckpoint(config, tensors);
}

const identity = (n: number): number[] => Array.from({ length: n * n }, (_, i) => (Math.floor(i / n) === i % n ? 1 : 0));
const rms = (x: number[]): number[] => {
  const r = Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length + EPS);
  return x.map((v) => v / r);
};
const close = (actual: ArrayLike<number>, expected: number[], tol = 1e-12): void => {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(Math.abs((actual[i] as number) - (expected[i] as number))).toBeLessThanOrEqual(tol);
};

describe('reference: GLA recurrence by hand', () => {
  // One GLA layer, H = Hkv = 1, d = D = 2, V = 2; q/k/v/o and lm_head are identities, MLP is zero.
  // The gate is constant: gk_proj weights zero, bias b → g = logsigmoid(b)/16.
  const b = [0, -2];
  const l0 = layerTensorNames(0);
  const ck = handModel(
    { numHeads: 1, kvRatio: 1, headDim: 2, numLayers: 1, attnLayers: [], vocabSize: 2, intermediateSize: 2 },
    {
      'model.embeddings.weight': [1, 1, 1, -1],
      [l0.qWeight]: identity(2), [l0.kWeight]: identity(2), [l0.vWeight]: identity(2), [l0.oWeight]: identity(2),
      [l0.gk1Bias]: b,
      [LM_HEAD]: identity(2),
    },
  );

  it('follows S ← diag(exp(g)) S + kᵀv and o = (q·d^-½) S for two tokens', () => {
    const s = 1 / Math.sqrt(1 + EPS); // RMSNorm of [1, ±1]
    const g = [Math.log(0.5) / 16, -Math.log(1 + Math.exp(2)) / 16];
    const eg0 = Math.exp(g[0]!);
    const eg1 = Math.exp(g[1]!);
    const session = new ReferenceSession(ck);
    // token 0: u = [s, s]; q = k = v = [s, s]; S1 = kᵀv = s²·ones
    session.step(0);
    close(session.glaState(0), [s * s, s * s, s * s, s * s]);
    // token 1: u = [s, −s]; q = relu(u) = [s, 0], k = [s, 0], v = [s, −s]
    //   S2 = diag(e^g) S1 + kᵀv = [[e^g0 s² + s², e^g0 s² − s²], [e^g1 s², e^g1 s²]]
    const logits = session.step(1);
    close(session.glaState(0), [eg0 * s * s + s * s, eg0 * s * s - s * s, eg1 * s * s, eg1 * s * s]);
    //   o = (q/√2) S2 = (s/√2)·row 0, then g_norm; o_proj is the identity
    const o = [(s / Math.SQRT2) * (eg0 * s * s + s * s), (s / Math.SQRT2) * (eg0 * s * s - s * s)];
    const mixer = rms(o);
    close(session.lastMixerOutput[0]!, mixer);
    // h = emb + mixer (MLP adds 0); logits = lm_head · RMSNorm(h) = RMSNorm(h)
    close(logits, rms([1 + mixer[0]!, -1 + mixer[1]!]));
  });

  it('logsigmoid is exact and finite at the extremes', () => {
    expect(logSigmoid(0)).toBeCloseTo(-Math.LN2, 15);
    expect(logSigmoid(-1000)).toBe(-1000);
    expect(logSigmoid(1000)).toBe(-0);
    expect(logSigmoid(2)).toBeCloseTo(-Math.log(1 + Math.exp(-2)), 15);
  });
});

describe('reference: attention window and heads', () => {
  // One attention layer, q = 0 so every attended key gets the same weight: the mixer output is the
  // mean of the attended values. Embeddings are distinct per token; v = RMSNorm(emb).
  const emb = [1, 0, 0, 1, 1, 1, 2, -1];
  const l0 = layerTensorNames(0);
  const vOf = (t: number): number[] => rms([emb[2 * t]!, emb[2 * t + 1]!]);
  const mean = (ts: number[]): number[] => [0, 1].map((e) => ts.reduce((s, t) => s + vOf(t)[e]!, 0) / ts.length);
  const model = (window: number | null) =>
    handModel(
      { numHeads: 1, kvRatio: 1, headDim: 2, numLayers: 1, attnLayers: [0], vocabSize: 4, intermediateSize: 2, slidingWindow: window },
      { 'model.embeddings.weight': emb, [l0.kWeight]: identity(2), [l0.vWeight]: identity(2), [l0.oWeight]: identity(2), [LM_HEAD]: identity(2).concat([0, 0, 0, 0]) },
    );

  it('with W = 1 the token at p attends exactly p−1 and p', () => {
    const session = new ReferenceSession(model(1));
    const attended: number[][] = [[0], [0, 1], [1, 2], [2, 3]];
    [0, 1, 2, 3].forEach((t, p) => {
      session.step(t);
      close(session.lastMixerOutput[0]!, mean(attended[p]!));
    });
  });

  it('with W = 2 it attends p−2…p, and full attention attends 0…p', () => {
    const w2 = new ReferenceSession(model(2));
    const full = new ReferenceSession(model(null));
    expect(full.config.layerKinds).toEqual(['full']);
    for (let p = 0; p < 4; p++) {
      w2.step(p);
      full.step(p);
      close(w2.lastMixerOutput[0]!, mean([p - 2, p - 1, p].filter((t) => t >= 0)));
      close(full.lastMixerOutput[0]!, mean(Array.from({ length: p + 1 }, (_, t) => t)));
    }
  });

  it('query head h uses kv head ⌊h/(H/Hkv)⌋', () => {
    // H = 4, Hkv = 2, d = 2, D = 8; v = the first 4 coordinates of u; output of head h = v of its kv head.
    const D = 8;
    const wv = Array.from({ length: 4 * D }, (_, i) => (Math.floor(i / D) === i % D ? 1 : 0));
    const l = layerTensorNames(0);
    const e0 = [1, 2, 3, 4, 5, 6, 7, 8];
    const ck = handModel(
      { numHeads: 4, kvRatio: 2, headDim: 2, numLayers: 1, attnLayers: [0], vocabSize: 2, intermediateSize: 2 },
      { 'model.embeddings.weight': [...e0, ...e0], [l.vWeight]: wv, [l.oWeight]: identity(D) },
    );
    const session = new ReferenceSession(ck);
    session.step(0);
    const u = rms(e0);
    close(session.lastMixerOutput[0]!, [u[0]!, u[1]!, u[0]!, u[1]!, u[2]!, u[3]!, u[2]!, u[3]!]);
  });
});

describe('reference: RoPE', () => {
  it('is the identity at position 0', () => {
    const x = Float64Array.from([0.3, -1.2, 2.5, 0.7]);
    close(applyRope(x, 0, 10000), [0.3, -1.2, 2.5, 0.7], 0);
  });
  it('rotates half-split pairs (i, i + d/2) by p·θ^(−2i/d)', () => {
    // d = 2: one pair, frequency 1 → rotation by p radians.
    close(applyRope(Float64Array.from([1, 0]), 1, 10000), [Math.cos(1), Math.sin(1)]);
    // d = 4, θ = 100: pair (0, 2) at frequency 1, pair (1, 3) at 100^(−1/2) = 0.1; position 3.
    const [a, b] = [3, 0.3];
    const x = [1, 2, 3, 4];
    close(applyRope(Float64Array.from(x), 3, 100), [
      1 * Math.cos(a) - 3 * Math.sin(a),
      2 * Math.cos(b) - 4 * Math.sin(b),
      3 * Math.cos(a) + 1 * Math.sin(a),
      4 * Math.cos(b) + 2 * Math.sin(b),
    ]);
  });
  it('makes attention scores depend only on the distance between positions', () => {
    const q = Float64Array.from([0.5, -1, 2, 0.25, 1, 0.1]);
    const k = Float64Array.from([1, 0.3, -0.7, 2, -1, 0.5]);
    const dot = (p: number, t: number): number => {
      const qa = applyRope(q, p, 10000);
      const ka = applyRope(k, t, 10000);
      return qa.reduce((s, v, i) => s + v * ka[i]!, 0);
    };
    expect(dot(7, 4)).toBeCloseTo(dot(103, 100), 10);
    expect(Math.abs(dot(7, 4) - dot(7, 5))).toBeGreaterThan(1e-3);
  });
});

describe('reference: consistency', () => {
  const config = parseModelConfig(tinyRawConfig({ numLayers: 4, headDim: 16, kvRatio: 2 }));
  const tokens = [5, 17, 3, 3, 90, 41, 8, 22, 1, 64, 7, 12];

  it('stepping a session equals the one-shot forward', () => {
    const ck = randomCheckpoint(config, { seed: 7, gkLayout: 'lowrank' });
    const all = referenceForward(ck, tokens);
    const s = new ReferenceSession(ck);
    const first = s.forward(tokens.slice(0, 5));
    const rest = tokens.slice(5).map((t) => s.step(t));
    [...first, ...rest].forEach((l, i) => close(l, Array.from(all[i]!), 0));
    expect(s.position).toBe(tokens.length);
  });

  it('a cloned session continues exactly like the original and does not disturb it', () => {
    const ck = randomCheckpoint(config, { seed: 3, gkLayout: 'lowrank' });
    const all = referenceForward(ck, tokens);
    const s = new ReferenceSession(ck);
    s.forward(tokens.slice(0, 6));
    const fork = s.clone();
    fork.forward([9, 9, 9]); // diverge the fork first
    const rest = s.forward(tokens.slice(6));
    rest.forEach((l, i) => close(l, Array.from(all[6 + i]!), 0));
    const fork2 = s.clone();
    expect(fork2.position).toBe(tokens.length);
    close(fork2.glaState(0), Array.from(s.glaState(0)), 0);
  });

  it('a full-rank gate equal to the low-rank product gives the same logits', () => {
    const low = randomCheckpoint(config, { seed: 11, gkLayout: 'lowrank' });
    const tensors = new Map<string, Tensor32>();
    for (const spec of modelTensorSpecs(config, 'lowrank')) tensors.set(spec.name, low.tensor(spec.name));
    const kvDim = config.numKvHeads * config.headDim;
    const D = config.hiddenSize;
    config.layerKinds.forEach((kind, i) => {
      if (kind !== 'gla') return;
      const n = layerTensorNames(i);
      const w1 = tensors.get(n.gk0Weight)!.data; // [16, D]
      const w2 = tensors.get(n.gk1Weight)!.data; // [kvDim, 16]
      const w = new Float32Array(kvDim * D); // W = W2 · W1, summed in float64 then stored as float32
      for (let r = 0; r < kvDim; r++) {
        for (let c = 0; c < D; c++) {
          let s = 0;
          for (let j = 0; j < 16; j++) s += w2[r * 16 + j]! * w1[j * D + c]!;
          w[r * D + c] = s;
        }
      }
      tensors.set(n.gkWeight, { shape: [kvDim, D], data: w });
      tensors.set(n.gkBias, tensors.get(n.gk1Bias)!);
      tensors.delete(n.gk0Weight);
      tensors.delete(n.gk1Weight);
      tensors.delete(n.gk1Bias);
    });
    const a = referenceForward(low, tokens);
    const b = referenceForward(tensorMapCheckpoint(config, tensors), tokens);
    // Only float32 storage of W2·W1 differs: a relative 1e-7 on gate pre-activations.
    a.forEach((l, i) => close(b[i]!, Array.from(l), 1e-5));
    // …and the gate matters: a different gate bias changes the logits.
    const n2 = layerTensorNames(2);
    tensors.set(n2.gkBias, { shape: [kvDim], data: new Float32Array(kvDim).fill(5) });
    const c = referenceForward(tensorMapCheckpoint(config, tensors), tokens);
    expect(Math.abs(c[11]![0]! - a[11]![0]!)).toBeGreaterThan(1e-4);
  });
});
