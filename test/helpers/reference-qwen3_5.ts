// Test helper: a float64 reference forward of the Qwen3.5 text model, one token at a time, written from
// the official transformers code (models/qwen3_5/modeling_qwen3_5.py; every point is pinned with its
// function in docs/models/qwen3_5.md) and independent of any graph code. tools/qwen3_5_crosscheck.py
// checks it against that code on tiny random checkpoints (test/qwen3_5-reference.test.ts).
//
// Per token at position p, per layer (norms zero-centred: RMSNorm(x)·(1 + w), eps = rms_norm_eps):
//   u = RMSNorm(h)·(1 + w_in)
//   GDN:  [qkv | z | b | a] = W u;  qkv ← silu(Σ_j conv[:, j] · x_{p−K+1+j})  (the last K inputs, zeros before 0)
//         q, k, v = split(qkv);  q, k ← q/‖q‖, k/‖k‖ per key head (‖x‖ = sqrt(Σx² + 1e−6)),  q ← q·dk^−½
//         β = σ(b),  g = −exp(A_log)·softplus(a + dt_bias)
//         per value head h (key head ⌊h/(Hv/Hk)⌋), S_h ∈ R^{dk×dv}:
//           S ← e^g S;  δ = β (v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
//         o ← RMSNorm_dv(o)·w_norm ⊙ silu(z) per head;  a = W_out o
//   attention: [q_h | gate_h] per head from q_proj, k, v; q_h ← RMSNorm(q_h)(1 + w_qn), k ← RMSNorm(k)(1 + w_kn);
//         RoPE (rotate-half) on the first r dims at p, θ^(−2i/r); softmax(q·k·d^−½) over positions 0…p;
//         o_h ← o_h ⊙ σ(gate_h);  a = W_o o
//   h ← h + a;  h ← h + W_down(silu(W_gate u') ⊙ W_up u'),  u' = RMSNorm(h)·(1 + w_post)
// logits = lm_head · RMSNorm(h)·(1 + w_final).
import type { Checkpoint } from '../../src/engine/model/checkpoint.ts';
import type { GdnConfig, LayerKind, ModelConfig } from '../../src/engine/model/config.ts';
import { EMBEDDINGS, FINAL_NORM, gdnConvDim, layerTensorNames, LM_HEAD } from '../../src/engine/model/tensor-names.ts';
import { applyRope } from './reference-forward.ts';

interface Mat {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
}

function mat(ckpt: Checkpoint, name: string, rows: number, cols: number): Mat {
  return { rows, cols, data: Float64Array.from(ckpt.tensor(name, [rows, cols]).data) };
}

function vec(ckpt: Checkpoint, name: string, n: number): Float64Array {
  return Float64Array.from(ckpt.tensor(name, [n]).data);
}

function matVec(w: Mat, x: Float64Array): Float64Array {
  const y = new Float64Array(w.rows);
  for (let r = 0; r < w.rows; r++) {
    let s = 0;
    const off = r * w.cols;
    for (let c = 0; c < w.cols; c++) s += (w.data[off + c] as number) * (x[c] as number);
    y[r] = s;
  }
  return y;
}

/** x / sqrt(mean(x²) + ε) · (offset + w). */
function rms(x: Float64Array, w: Float64Array, eps: number, offset: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * (offset + (w[i] as number)));
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
const silu = (x: number): number => x * sigmoid(x);
const softplus = (x: number): number => (x > 20 ? x : Math.log1p(Math.exp(x)));

function l2norm(x: Float64Array): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss + 1e-6);
  return x.map((v) => v * inv);
}

interface GdnWeights {
  readonly qkv: Mat;
  readonly z: Mat;
  readonly b: Mat;
  readonly a: Mat;
  /** [convDim, K] */
  readonly conv: Float64Array;
  readonly dtBias: Float64Array;
  readonly aLog: Float64Array;
  readonly norm: Float64Array;
  readonly out: Mat;
}

interface AttnWeights {
  readonly q: Mat; // [2·H·d, D] (per head [query | gate])
  readonly k: Mat;
  readonly v: Mat;
  readonly bq: Float64Array | null;
  readonly bk: Float64Array | null;
  readonly bv: Float64Array | null;
  readonly o: Mat;
  readonly qNorm: Float64Array;
  readonly kNorm: Float64Array;
}

interface Layer {
  readonly kind: LayerKind;
  readonly inNorm: Float64Array;
  readonly postNorm: Float64Array;
  readonly gdn: GdnWeights | null;
  readonly attn: AttnWeights | null;
  readonly gate: Mat;
  readonly up: Mat;
  readonly down: Mat;
}

function loadLayer(ckpt: Checkpoint, i: number): Layer {
  const c = ckpt.config;
  const kind = c.layerKinds[i] as LayerKind;
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const n = layerTensorNames(i);
  let gdn: GdnWeights | null = null;
  let attn: AttnWeights | null = null;
  if (kind === 'gdn') {
    const g = c.gdn as GdnConfig;
    const convDim = gdnConvDim(c);
    const vDim = g.numValueHeads * g.valueHeadDim;
    gdn = {
      qkv: mat(ckpt, n.gdnQkv, convDim, D),
      z: mat(ckpt, n.gdnZ, vDim, D),
      b: mat(ckpt, n.gdnB, g.numValueHeads, D),
      a: mat(ckpt, n.gdnA, g.numValueHeads, D),
      conv: Float64Array.from(ckpt.tensor(n.gdnConv, [convDim, 1, g.convKernel]).data),
      dtBias: vec(ckpt, n.gdnDtBias, g.numValueHeads),
      aLog: vec(ckpt, n.gdnALog, g.numValueHeads),
      norm: vec(ckpt, n.gdnNorm, g.valueHeadDim),
      out: mat(ckpt, n.gdnOut, D, vDim),
    };
  } else {
    const d = c.headDim;
    const qRows = (c.attention.outputGate ? 2 : 1) * c.numHeads * d;
    const kv = c.numKvHeads * d;
    attn = {
      q: mat(ckpt, n.qWeight, qRows, D),
      k: mat(ckpt, n.kWeight, kv, D),
      v: mat(ckpt, n.vWeight, kv, D),
      bq: c.attention.bias ? vec(ckpt, n.qBias, qRows) : null,
      bk: c.attention.bias ? vec(ckpt, n.kBias, kv) : null,
      bv: c.attention.bias ? vec(ckpt, n.vBias, kv) : null,
      o: mat(ckpt, n.oWeight, D, c.numHeads * d),
      qNorm: vec(ckpt, n.qNorm, d),
      kNorm: vec(ckpt, n.kNorm, d),
    };
  }
  return {
    kind,
    inNorm: vec(ckpt, n.attnNorm, D),
    postNorm: vec(ckpt, n.mlpNorm, D),
    gdn,
    attn,
    gate: mat(ckpt, n.gateWeight, F, D),
    up: mat(ckpt, n.upWeight, F, D),
    down: mat(ckpt, n.downWeight, D, F),
  };
}

const add = (x: Float64Array, b: Float64Array | null): Float64Array => (b === null ? x : x.map((v, i) => v + (b[i] as number)));

/** A stateful float64 reference of a Qwen3.5 text model: feed tokens one at a time from position 0. */
export class Qwen3_5Reference {
  readonly config: ModelConfig;
  position = 0;
  private readonly layers: Layer[];
  private readonly embeddings: Mat;
  private readonly finalNorm: Float64Array;
  private readonly lmHead: Mat;
  /** GDN layers: the last K−1 conv inputs, oldest first, each [convDim]. */
  private convInputs: Float64Array[][];
  /** GDN layers: S [Hv, dk, dv] at (h·dk + c)·dv + e. */
  private states: Float64Array[];
  /** Attention layers: keys (normed, RoPE'd) and values [Hkv·d] of every position. */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  constructor(ckpt: Checkpoint) {
    const c = ckpt.config;
    if (c.modelType !== 'qwen3_5') throw new Error(`Qwen3_5Reference: model type ${c.modelType}`);
    this.config = c;
    this.embeddings = mat(ckpt, EMBEDDINGS, c.vocabSize, c.hiddenSize);
    this.layers = Array.from({ length: c.numLayers }, (_, i) => loadLayer(ckpt, i));
    this.finalNorm = vec(ckpt, FINAL_NORM, c.hiddenSize);
    this.lmHead = mat(ckpt, LM_HEAD, c.vocabSize, c.hiddenSize);
    const g = c.gdn;
    const convDim = gdnConvDim(c);
    this.convInputs = this.layers.map((l) =>
      l.kind === 'gdn' && g !== null ? Array.from({ length: g.convKernel - 1 }, () => new Float64Array(convDim)) : [],
    );
    this.states = this.layers.map((l) => new Float64Array(l.kind === 'gdn' && g !== null ? g.numValueHeads * g.keyHeadDim * g.valueHeadDim : 0));
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
  }

  /** An independent copy at the same position (weights shared). */
  clone(): Qwen3_5Reference {
    const copy = Object.create(Qwen3_5Reference.prototype) as Qwen3_5Reference;
    Object.assign(copy, {
      config: this.config,
      position: this.position,
      layers: this.layers,
      embeddings: this.embeddings,
      finalNorm: this.finalNorm,
      lmHead: this.lmHead,
      convInputs: this.convInputs.map((xs) => xs.map((x) => Float64Array.from(x))),
      states: this.states.map((s) => Float64Array.from(s)),
      keys: this.keys.map((k) => [...k]),
      values: this.values.map((v) => [...v]),
    });
    return copy;
  }

  /** GDN layer state: conv inputs [convDim, K−1] channel-major (the graph's layout) and S [Hv, dk, dv]. */
  gdnState(layer: number): { conv: Float64Array; recurrent: Float64Array } {
    const xs = this.convInputs[layer] ?? [];
    const convDim = xs[0]?.length ?? 0;
    const conv = new Float64Array(convDim * xs.length);
    xs.forEach((x, j) => x.forEach((v, ch) => (conv[ch * xs.length + j] = v)));
    return { conv, recurrent: Float64Array.from(this.states[layer] ?? []) };
  }

  /** Processes one token at `this.position`; returns logits [V]. */
  step(tokenId: number): Float64Array {
    const c = this.config;
    if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId >= c.vocabSize) throw new RangeError(`token id ${tokenId}`);
    const D = c.hiddenSize;
    let h: Float64Array = this.embeddings.data.slice(tokenId * D, (tokenId + 1) * D);
    this.layers.forEach((l, i) => {
      const u = rms(h, l.inNorm, c.normEps, 1);
      const a = l.kind === 'gdn' ? this.gdn(i, l.gdn as GdnWeights, u) : this.attention(i, l.attn as AttnWeights, u);
      h = h.map((x, j) => x + (a[j] as number));
      const u2 = rms(h, l.postNorm, c.normEps, 1);
      const gate = matVec(l.gate, u2);
      const up = matVec(l.up, u2);
      const m = matVec(l.down, gate.map((x, j) => silu(x) * (up[j] as number)));
      h = h.map((x, j) => x + (m[j] as number));
    });
    this.position++;
    return matVec(this.lmHead, rms(h, this.finalNorm, c.normEps, 1));
  }

  forward(tokenIds: readonly number[]): Float64Array[] {
    return tokenIds.map((t) => this.step(t));
  }

  private gdn(layer: number, w: GdnWeights, u: Float64Array): Float64Array {
    const c = this.config;
    const { numKeyHeads: Hk, numValueHeads: Hv, keyHeadDim: dk, valueHeadDim: dv, convKernel: K } = c.gdn as GdnConfig;
    const convDim = gdnConvDim(c);
    const x = matVec(w.qkv, u);
    const z = matVec(w.z, u);
    const b = matVec(w.b, u);
    const a = matVec(w.a, u);
    // Causal depthwise conv over the last K inputs (this one included), then SiLU.
    const past = this.convInputs[layer] as Float64Array[];
    const window = [...past, x];
    const mixed = new Float64Array(convDim);
    for (let ch = 0; ch < convDim; ch++) {
      let s = 0;
      for (let j = 0; j < K; j++) s += (w.conv[ch * K + j] as number) * ((window[j] as Float64Array)[ch] as number);
      mixed[ch] = silu(s);
    }
    this.convInputs[layer] = window.slice(1);
    const scale = 1 / Math.sqrt(dk);
    const qs = Array.from({ length: Hk }, (_, hk) => l2norm(mixed.slice(hk * dk, (hk + 1) * dk)).map((v) => v * scale));
    const ks = Array.from({ length: Hk }, (_, hk) => l2norm(mixed.slice(Hk * dk + hk * dk, Hk * dk + (hk + 1) * dk)));
    const v = mixed.subarray(2 * Hk * dk);
    const S = this.states[layer] as Float64Array;
    const o = new Float64Array(Hv * dv);
    const group = Hv / Hk;
    for (let hv = 0; hv < Hv; hv++) {
      const q = qs[Math.floor(hv / group)] as Float64Array;
      const k = ks[Math.floor(hv / group)] as Float64Array;
      const beta = sigmoid(b[hv] as number);
      const decay = Math.exp(-Math.exp(w.aLog[hv] as number) * softplus((a[hv] as number) + (w.dtBias[hv] as number)));
      const base = hv * dk * dv;
      for (let i = 0; i < dk * dv; i++) S[base + i] = (S[base + i] as number) * decay;
      for (let e = 0; e < dv; e++) {
        let mem = 0;
        for (let ci = 0; ci < dk; ci++) mem += (S[base + ci * dv + e] as number) * (k[ci] as number);
        const delta = beta * ((v[hv * dv + e] as number) - mem);
        for (let ci = 0; ci < dk; ci++) S[base + ci * dv + e] = (S[base + ci * dv + e] as number) + (k[ci] as number) * delta;
      }
      const oh = new Float64Array(dv);
      for (let e = 0; e < dv; e++) {
        let s = 0;
        for (let ci = 0; ci < dk; ci++) s += (S[base + ci * dv + e] as number) * (q[ci] as number);
        oh[e] = s;
      }
      const normed = rms(oh, w.norm, c.normEps, 0);
      for (let e = 0; e < dv; e++) o[hv * dv + e] = (normed[e] as number) * silu(z[hv * dv + e] as number);
    }
    return matVec(w.out, o);
  }

  private attention(layer: number, w: AttnWeights, u: Float64Array): Float64Array {
    const c = this.config;
    const { numHeads: H, numKvHeads: Hkv, headDim: d, ropeTheta, normEps } = c;
    const r = c.attention.rotaryDim;
    const p = this.position;
    const qg = add(matVec(w.q, u), w.bq);
    const kAll = add(matVec(w.k, u), w.bk);
    const v = add(matVec(w.v, u), w.bv);
    const rope = (x: Float64Array): Float64Array => {
      const out = Float64Array.from(x);
      out.set(applyRope(x.slice(0, r), p, ropeTheta), 0);
      return out;
    };
    const qs: Float64Array[] = [];
    const gates: Float64Array[] = [];
    for (let hh = 0; hh < H; hh++) {
      const row = qg.slice(hh * 2 * d, (hh + 1) * 2 * d);
      qs.push(rope(rms(row.slice(0, d), w.qNorm, normEps, 1)));
      gates.push(row.slice(d));
    }
    const k = new Float64Array(Hkv * d);
    for (let j = 0; j < Hkv; j++) k.set(rope(rms(kAll.slice(j * d, (j + 1) * d), w.kNorm, normEps, 1)), j * d);
    const keys = this.keys[layer] as Float64Array[];
    const values = this.values[layer] as Float64Array[];
    keys.push(k);
    values.push(v);
    const scale = 1 / Math.sqrt(d);
    const o = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) {
      const j = Math.floor(hh / (H / Hkv));
      const q = qs[hh] as Float64Array;
      const scores = keys.map((kt) => {
        let s = 0;
        for (let ci = 0; ci < d; ci++) s += (q[ci] as number) * (kt[j * d + ci] as number);
        return s * scale;
      });
      const max = Math.max(...scores);
      const ws = scores.map((s) => Math.exp(s - max));
      const sum = ws.reduce((x, y) => x + y, 0);
      const gate = gates[hh] as Float64Array;
      for (let e = 0; e < d; e++) {
        let acc = 0;
        values.forEach((vt, t) => (acc += ((ws[t] as number) / sum) * (vt[j * d + e] as number)));
        o[hh * d + e] = acc * sigmoid(gate[e] as number);
      }
    }
    return matVec(w.o, o);
  }
}

/** Logits [V] at every position of `tokenIds` from position 0, in float64. */
export function qwen3_5ReferenceForward(ckpt: Checkpoint, tokenIds: readonly number[]): Float64Array[] {
  return new Qwen3_5Reference(ckpt).forward(tokenIds);
}
