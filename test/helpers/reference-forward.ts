// Test helper: a float64 reference forward of the gla_swa family that follows DESIGN.md §2 literally,
// one token at a time, independent of any graph code. Used only to check the engine at stated tolerances.
//
// Per token at absolute position p, per layer:
//   u = RMSNorm(h)·w_attn_norm
//   GLA:  q = relu(Wq u + bq) [H·d], k = relu(Wk u + bk) [Hkv·d], v = Wv u + bv [Hkv·d],
//         g = logsigmoid(Wg2(Wg1 u) + bg2)/16 (or one full-rank Wg u + bg) [Hkv·d]
//         per kv head j:  S_j ← diag(exp(g_j)) S_j + k_jᵀ v_j          S_j ∈ R^{d×d}, [key dim c, value dim e]
//         per query head h (kv head j = ⌊h/(H/Hkv)⌋):  o_h = (q_h·d^-½) S_j, then RMSNorm over d (g_norm)
//   SWA/full: q = Wq u + bq, k, v likewise; rotate-half RoPE at p on q and k;
//         query at p attends keys max(0, p−W)…p (all of 0…p for full), softmax(q·k·d^-½)
//   h ← h + Wo concat(o);  h ← h + Wdown(silu(Wgate u') ⊙ Wup u'),  u' = RMSNorm(h)·w_mlp_norm
// logits = lm_head · RMSNorm(h)·w_norm.
//
// W8ASpike checkpoints (they store `…_proj.weight_quantizer.scales` [out, in/128, 1]), as the official
// inference code runs them: every projection weight but the MLP's down_proj is round(w/s)·s per group
// of 128 inputs; the input of every projection but down_proj is spike-coded per token,
// x' = round(x/vth)·vth with vth = clamp(mean|x|/3, 1e−5, 1e4); in attention layers the RoPE'd query
// is spike-coded per head and keys and values are 8-bit quantized per token and kv head,
// x' = clamp(round(x/s), −128, 127)·s with s = clamp(max|x|/127, 1e−5, 1e4). round = half to even.
import type { Checkpoint } from '../../src/engine/model/checkpoint.ts';
import type { LayerKind, ModelConfig } from '../../src/engine/model/config.ts';
import { detectGkLayout, EMBEDDINGS, FINAL_NORM, layerTensorNames, LM_HEAD } from '../../src/engine/model/tensor-names.ts';

/** A [rows, cols] row-major float64 matrix. */
interface Mat {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
}

/** Round half to even (torch.round). */
function roundEven(x: number): number {
  const f = Math.floor(x);
  const diff = x - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

const scalesOf = (name: string): string => name.replace(/\.weight$/, '.weight_quantizer.scales');

function mat(ckpt: Checkpoint, name: string, rows: number, cols: number): Mat {
  const data = Float64Array.from(ckpt.tensor(name, [rows, cols]).data);
  if (ckpt.has(scalesOf(name)) && !name.endsWith('down_proj.weight')) {
    // W8ASpike: round(w/s)·s with one scale per row and group of 128 columns. The quotient is taken in
    // fp32 as the official code computes it (its fp32 rounding decides near-ties: w/s is 2.4999999 in
    // float64 but 2.5 in fp32 for some weights); the rest stays float64.
    const scales = ckpt.tensor(scalesOf(name), [rows, cols / 128, 1]).data;
    for (let i = 0; i < data.length; i++) {
      const s = scales[Math.floor(i / cols) * (cols / 128) + Math.floor((i % cols) / 128)] as number;
      data[i] = roundEven(Math.fround((data[i] as number) / s)) * s;
    }
  }
  return { rows, cols, data };
}

/**
 * Activation roundings closer than this to a tie (…​.5) are counted: there an fp32 engine, whose x/vth
 * differs from float64 by ~1e-5 at most, may round the other way, which is a legitimate difference.
 */
export const NEAR_TIE = 3e-5;

/** Counts near-tie activation roundings (see NEAR_TIE). */
export const tieCounter = { count: 0 };

function roundActivation(x: number): number {
  if (Math.abs(x - Math.floor(x) - 0.5) < NEAR_TIE) tieCounter.count++;
  return roundEven(x);
}

/** W8ASpike spike coding of one vector: round(x/vth)·vth, vth = clamp(mean|x|/3, 1e−5, 1e4). */
export function spikeCode(x: Float64Array): Float64Array<ArrayBuffer> {
  let sum = 0;
  for (const v of x) sum += Math.abs(v);
  const vth = Math.min(1e4, Math.max(1e-5, sum / x.length / 3));
  return Float64Array.from(x, (v) => roundActivation(v / vth) * vth);
}

/** W8ASpike 8-bit fake quantization of one vector: clamp(round(x/s), −128, 127)·s, s = clamp(max|x|/127, …). */
export function quantize8(x: Float64Array): Float64Array<ArrayBuffer> {
  let max = 0;
  for (const v of x) max = Math.max(max, Math.abs(v));
  const s = Math.min(1e4, Math.max(1e-5, max / 127));
  return Float64Array.from(x, (v) => Math.min(127, Math.max(-128, roundActivation(v / s))) * s);
}

/** `f` on each of the `heads` consecutive pieces of x. */
function perHead(x: Float64Array, heads: number, f: (h: Float64Array) => Float64Array): Float64Array<ArrayBuffer> {
  const d = x.length / heads;
  const out = new Float64Array(x.length);
  for (let h = 0; h < heads; h++) out.set(f(x.subarray(h * d, (h + 1) * d)), h * d);
  return out;
}

function vec(ckpt: Checkpoint, name: string, n: number): Float64Array {
  return Float64Array.from(ckpt.tensor(name, [n]).data);
}

/** y = W x (+ b). */
function matVec(w: Mat, x: Float64Array, b?: Float64Array): Float64Array<ArrayBuffer> {
  const y = new Float64Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    let s = b === undefined ? 0 : (b[r] as number);
    const off = r * w.cols;
    for (let c = 0; c < w.cols; c++) s += (w.data[off + c] as number) * (x[c] as number);
    y[r] = s;
  }
  return y;
}

/** RMSNorm(x) = x / sqrt(mean(x²) + ε) · w. */
export function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * (w[i] as number));
}

/** log σ(x), computed without overflow. */
export function logSigmoid(x: number): number {
  return x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x));
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * Rotate-half RoPE on one head vector x [d] at position p: inv_freq_i = θ^(−2i/d), i < d/2;
 * x'[i] = x[i]·cos(p·f_i) − x[i+d/2]·sin(p·f_i),  x'[i+d/2] = x[i+d/2]·cos(p·f_i) + x[i]·sin(p·f_i).
 */
export function applyRope(x: Float64Array, position: number, theta: number): Float64Array {
  const d = x.length;
  const half = d / 2;
  const out = new Float64Array(d);
  for (let i = 0; i < half; i++) {
    const angle = position * theta ** ((-2 * i) / d);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    const a = x[i] as number;
    const b = x[i + half] as number;
    out[i] = a * c - b * s;
    out[i + half] = b * c + a * s;
  }
  return out;
}

interface LayerWeights {
  readonly kind: LayerKind;
  readonly attnNorm: Float64Array;
  readonly wq: Mat; readonly bq: Float64Array;
  readonly wk: Mat; readonly bk: Float64Array;
  readonly wv: Mat; readonly bv: Float64Array;
  readonly wo: Mat;
  /** GLA gate: either low-rank (g1 then g2 + bias) or full-rank (g2 = [Hkv·d, D] + bias, g1 null). */
  readonly wg1: Mat | null;
  readonly wg2: Mat | null;
  readonly bg: Float64Array | null;
  readonly gNorm: Float64Array | null;
  readonly mlpNorm: Float64Array;
  readonly wGate: Mat; readonly wUp: Mat; readonly wDown: Mat;
}

function loadLayer(ckpt: Checkpoint, layer: number): LayerWeights {
  const c = ckpt.config;
  const kind = c.layerKinds[layer] as LayerKind;
  const D = c.hiddenSize;
  const d = c.headDim;
  const qDim = c.numHeads * d;
  const kvDim = c.numKvHeads * d;
  const F = c.intermediateSize;
  const n = layerTensorNames(layer);
  let wg1: Mat | null = null;
  let wg2: Mat | null = null;
  let bg: Float64Array | null = null;
  let gNorm: Float64Array | null = null;
  if (kind === 'gla') {
    if (detectGkLayout(c, (x) => ckpt.has(x)) === 'full') {
      wg2 = mat(ckpt, n.gkWeight, kvDim, D);
      bg = vec(ckpt, n.gkBias, kvDim);
    } else {
      wg1 = mat(ckpt, n.gk0Weight, 16, D);
      wg2 = mat(ckpt, n.gk1Weight, kvDim, 16);
      bg = vec(ckpt, n.gk1Bias, kvDim);
    }
    gNorm = vec(ckpt, n.gNorm, d);
  }
  return {
    kind,
    attnNorm: vec(ckpt, n.attnNorm, D),
    wq: mat(ckpt, n.qWeight, qDim, D), bq: vec(ckpt, n.qBias, qDim),
    wk: mat(ckpt, n.kWeight, kvDim, D), bk: vec(ckpt, n.kBias, kvDim),
    wv: mat(ckpt, n.vWeight, kvDim, D), bv: vec(ckpt, n.vBias, kvDim),
    wo: mat(ckpt, n.oWeight, D, qDim),
    wg1, wg2, bg, gNorm,
    mlpNorm: vec(ckpt, n.mlpNorm, D),
    wGate: mat(ckpt, n.gateWeight, F, D),
    wUp: mat(ckpt, n.upWeight, F, D),
    wDown: mat(ckpt, n.downWeight, D, F),
  };
}

/**
 * A stateful reference: feed tokens one at a time (positions 0, 1, 2, …); GLA states and all
 * attention keys/values are kept and can be inspected.
 */
export class ReferenceSession {
  readonly config: ModelConfig;
  /** Number of tokens processed so far = position of the next token. */
  position = 0;
  private readonly layers: LayerWeights[];
  private readonly embeddings: Mat;
  private readonly finalNorm: Float64Array;
  private readonly lmHead: Mat;
  /** Per layer: GLA state [Hkv, d, d] (empty array for attention layers). */
  private readonly states: Float64Array[];
  /** Per layer: keys (post-RoPE) and values [Hkv·d] of every position so far (empty for GLA layers). */
  private readonly keys: Float64Array[][];
  private readonly values: Float64Array[][];
  /** Per layer: the mixer output (after o_proj) [D] of the last token, for tests of the reference itself. */
  readonly lastMixerOutput: Float64Array[];
  /** A W8ASpike checkpoint: spike-coded projection inputs, quantized attention q/k/v. */
  private readonly spiking: boolean;
  /** W8ASpike: zero spikes and all spikes of the linear-layer inputs so far (the graph's sparsity outputs). */
  readonly spikeCounts = { zeros: 0, values: 0 };
  /** x as a QuantLinear sees it. */
  private linIn(x: Float64Array): Float64Array {
    if (!this.spiking) return x;
    const coded = spikeCode(x);
    this.spikeCounts.values += coded.length;
    for (const v of coded) if (v === 0) this.spikeCounts.zeros++;
    return coded;
  }

  constructor(ckpt: Checkpoint) {
    const c = ckpt.config;
    this.config = c;
    this.embeddings = mat(ckpt, EMBEDDINGS, c.vocabSize, c.hiddenSize);
    this.layers = Array.from({ length: c.numLayers }, (_, i) => loadLayer(ckpt, i));
    this.finalNorm = vec(ckpt, FINAL_NORM, c.hiddenSize);
    this.lmHead = mat(ckpt, LM_HEAD, c.vocabSize, c.hiddenSize);
    const stateSize = c.numKvHeads * c.headDim * c.headDim;
    this.states = this.layers.map((l) => new Float64Array(l.kind === 'gla' ? stateSize : 0));
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
    this.lastMixerOutput = this.layers.map(() => new Float64Array(c.hiddenSize));
    this.spiking = ckpt.has('model.layers.0.mlp.gate_proj.weight_quantizer.scales');
  }

  /** An independent copy at the same position (weights shared, state/KV copied): fork a prefix. */
  clone(): ReferenceSession {
    const copy = Object.create(ReferenceSession.prototype) as ReferenceSession;
    Object.assign(copy, {
      config: this.config,
      position: this.position,
      layers: this.layers,
      embeddings: this.embeddings,
      finalNorm: this.finalNorm,
      lmHead: this.lmHead,
      states: this.states.map((x) => Float64Array.from(x)),
      keys: this.keys.map((k) => [...k]),
      values: this.values.map((v) => [...v]),
      lastMixerOutput: this.lastMixerOutput.map((x) => Float64Array.from(x)),
      spiking: this.spiking,
      spikeCounts: { ...this.spikeCounts },
    });
    return copy;
  }

  /** GLA state of a layer, [Hkv, d, d] with S[j][c][e] at (j·d + c)·d + e (a copy). */
  glaState(layer: number): Float64Array {
    return Float64Array.from(this.states[layer] ?? []);
  }

  /** Keys (post-RoPE) [Hkv·d] of an attention layer at each position so far. */
  attnKeys(layer: number): readonly Float64Array[] {
    return this.keys[layer] ?? [];
  }

  attnValues(layer: number): readonly Float64Array[] {
    return this.values[layer] ?? [];
  }

  /** Processes one token at position `this.position`; returns logits [V]. */
  step(tokenId: number): Float64Array<ArrayBuffer> {
    const c = this.config;
    if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId >= c.vocabSize) throw new RangeError(`token id ${tokenId}`);
    const D = c.hiddenSize;
    let h = this.embeddings.data.slice(tokenId * D, (tokenId + 1) * D);
    for (let i = 0; i < this.layers.length; i++) {
      const l = this.layers[i] as LayerWeights;
      const u = rmsNorm(h, l.attnNorm, c.normEps);
      const a = l.kind === 'gla' ? this.gla(i, l, u) : this.attention(i, l, u);
      this.lastMixerOutput[i] = a;
      h = h.map((x, j) => x + (a[j] as number));
      const u2 = this.linIn(rmsNorm(h, l.mlpNorm, c.normEps));
      const gate = matVec(l.wGate, u2);
      const up = matVec(l.wUp, u2);
      const m = matVec(l.wDown, gate.map((g, j) => silu(g) * (up[j] as number)));
      h = h.map((x, j) => x + (m[j] as number));
    }
    this.position++;
    return matVec(this.lmHead, rmsNorm(h, this.finalNorm, c.normEps));
  }

  /** Logits at every position of `tokenIds`, continuing from the current position. */
  forward(tokenIds: readonly number[]): Float64Array<ArrayBuffer>[] {
    return tokenIds.map((t) => this.step(t));
  }

  private gla(layer: number, l: LayerWeights, uIn: Float64Array): Float64Array {
    const { numHeads: H, numKvHeads: Hkv, headDim: d, normEps } = this.config;
    const u = this.linIn(uIn);
    const q = matVec(l.wq, u, l.bq).map((x) => Math.max(0, x));
    const k = matVec(l.wk, u, l.bk).map((x) => Math.max(0, x));
    const v = matVec(l.wv, u, l.bv);
    const gPre = l.wg1 === null ? matVec(l.wg2 as Mat, u, l.bg as Float64Array) : matVec(l.wg2 as Mat, matVec(l.wg1, u), l.bg as Float64Array);
    const g = gPre.map((x) => logSigmoid(x) / 16);
    const S = this.states[layer] as Float64Array;
    // S_j ← diag(exp(g_j)) S_j + k_jᵀ v_j
    for (let j = 0; j < Hkv; j++) {
      for (let ci = 0; ci < d; ci++) {
        const decay = Math.exp(g[j * d + ci] as number);
        const kc = k[j * d + ci] as number;
        const row = (j * d + ci) * d;
        for (let e = 0; e < d; e++) S[row + e] = decay * (S[row + e] as number) + kc * (v[j * d + e] as number);
      }
    }
    // o_h = (q_h·d^-½) S_j, j = ⌊h/(H/Hkv)⌋, then g_norm over d
    const group = H / Hkv;
    const scale = 1 / Math.sqrt(d);
    const o = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) {
      const j = Math.floor(hh / group);
      const oh = new Float64Array(d);
      for (let ci = 0; ci < d; ci++) {
        const qc = (q[hh * d + ci] as number) * scale;
        const row = (j * d + ci) * d;
        for (let e = 0; e < d; e++) oh[e] = (oh[e] as number) + qc * (S[row + e] as number);
      }
      o.set(rmsNorm(oh, l.gNorm as Float64Array, normEps), hh * d);
    }
    return matVec(l.wo, this.linIn(o));
  }

  private attention(layer: number, l: LayerWeights, uIn: Float64Array): Float64Array {
    const { numHeads: H, numKvHeads: Hkv, headDim: d, ropeTheta, slidingWindow } = this.config;
    const p = this.position;
    const u = this.linIn(uIn);
    const qRaw = matVec(l.wq, u, l.bq);
    const kRaw = matVec(l.wk, u, l.bk);
    const vRaw = matVec(l.wv, u, l.bv);
    const qRoped = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) qRoped.set(applyRope(qRaw.subarray(hh * d, (hh + 1) * d), p, ropeTheta), hh * d);
    const kRoped = new Float64Array(Hkv * d);
    for (let j = 0; j < Hkv; j++) kRoped.set(applyRope(kRaw.subarray(j * d, (j + 1) * d), p, ropeTheta), j * d);
    const q = this.spiking ? perHead(qRoped, H, spikeCode) : qRoped;
    const k = this.spiking ? perHead(kRoped, Hkv, quantize8) : kRoped;
    const v = this.spiking ? perHead(vRaw, Hkv, quantize8) : vRaw;
    const keys = this.keys[layer] as Float64Array[];
    const values = this.values[layer] as Float64Array[];
    keys.push(k);
    values.push(v);
    // W+1 keys: positions p−W … p (every position for full attention).
    const first = this.config.layerKinds[layer] === 'swa' && slidingWindow !== null ? Math.max(0, p - slidingWindow) : 0;
    const group = H / Hkv;
    const scale = 1 / Math.sqrt(d);
    const o = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) {
      const j = Math.floor(hh / group);
      const scores: number[] = [];
      for (let t = first; t <= p; t++) {
        const kt = keys[t] as Float64Array;
        let s = 0;
        for (let ci = 0; ci < d; ci++) s += (q[hh * d + ci] as number) * (kt[j * d + ci] as number);
        scores.push(s * scale);
      }
      const max = Math.max(...scores);
      const w = scores.map((s) => Math.exp(s - max));
      const sum = w.reduce((x, y) => x + y, 0);
      for (let t = first; t <= p; t++) {
        const wt = (w[t - first] as number) / sum;
        const vt = values[t] as Float64Array;
        for (let e = 0; e < d; e++) o[hh * d + e] = (o[hh * d + e] as number) + wt * (vt[j * d + e] as number);
      }
    }
    return matVec(l.wo, this.linIn(o));
  }
}

/** Logits [V] at every position of `tokenIds` (positions 0…T−1), in float64. */
export function referenceForward(ckpt: Checkpoint, tokenIds: readonly number[]): Float64Array<ArrayBuffer>[] {
  return new ReferenceSession(ckpt).forward(tokenIds);
}
