// Test helper: a float64 reference forward of SpikingBrain 2.0 (`sse_swa_moba`), one token at a time,
// written from the official HF code (spb2/sse_swa.py SSEGDNH, spb2/moba_attn.py, spb2/attn.py,
// MoBA's moba_naive.py; every point pinned with its function in docs/models/spikingbrain2.md) and
// independent of any graph code. tools/spikingbrain2_crosscheck.py checks it against that code on a tiny
// random checkpoint (test/spikingbrain2-reference.test.ts).
//
// Per token at position p, per layer (RMSNorm_n(x)·w = x·rsqrt(mean(x²) + ε)·w, ε = norm_eps):
//   u = RMSNorm_D(h)·w_attn_norm
//   hybrid: q1 = Wq u, k1 = Wk u, v = Wv u [H·d];  q2 = q1 + Bq(Aq u), k2 = k1 + Bk(Ak u)   (LoRA, rank d)
//           q1, q2, k1, k2 ← silu (relu if sse_qk_relu);  v ← silu(v)
//           β = σ(Wb u) [2H] (·2 if allow_neg_eigval);  g = −exp(A_log)·softplus(Wa u + dt_bias) [2H]
//           first H of β, g → the shared state S₀; last H → the partitions
//           p = softmax(We u) [N];  T = top-k(p) (ties → lower index)
//           per head h:  o_h = δ(S₀_h; q1, k1, v) + Σ_{n∈T} δ(S_n_h; p_n·q2, p_n·k2, v)   (other partitions untouched)
//             δ(S; q, k, v): q ← q/‖q‖·d^−½, k ← k/‖k‖ (‖x‖ = sqrt(Σx² + 1e−6)); S ← e^g S;
//                            S ← S + k (β (v − Sᵀk))ᵀ;  returns Sᵀq
//           sse = W_o [RMSNorm_d(o_h)·w_o_norm]_h
//           window: q = W u + b [H·d], k, v [Hkv·d]; q/k RMSNorm_d per head; RoPE at p (rotate-half, θ);
//           softmax(q·k·d^−½) over the W positions p−W+1…p (GQA h → ⌊h/(H/Hkv)⌋);  swa = W_o o
//           a = (RMSNorm_D(sse)·w_sse_merge + RMSNorm_D(swa)·w_swa_merge) / 2
//   MoBA:   q [Ha·d], k, v [Hkv·d] as the window branch (own weights); prompt tokens: keys in chunks of C,
//           own chunk causally + the top (K−1) earlier chunks by q·mean(k of the chunk) (ties → lower
//           index); generated tokens (`moba: false`): every position 0…p, as the official decode
//   full:   every position 0…p
//   h ← h + a;  h ← h + W_down(silu(W_gate u') ⊙ W_up u'),  u' = RMSNorm_D(h)·w_mlp_norm
// logits = W_emb · RMSNorm_D(h)·w_norm (tied) or lm_head · ….
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openSafetensorsDir, readSafetensorsEntry } from '../../src/engine/model/safetensors.ts';
import { parseSpikingBrain2Config, type SpikingBrain2Config } from '../../src/engine/model/spikingbrain2-config.ts';
import { SPB2_EMBEDDINGS, SPB2_FINAL_NORM, SPB2_LM_HEAD, spb2LayerNames } from '../../src/engine/model/spikingbrain2-tensors.ts';
import { applyRope } from './reference-forward.ts';

/** A checkpoint directory's config and tensors (as float64), read without the serving loader (which refuses the type). */
export interface Spb2Weights {
  readonly config: SpikingBrain2Config;
  tensor(name: string, shape: readonly number[]): Float64Array;
  has(name: string): boolean;
}

export function openSpikingBrain2Dir(dir: string): Spb2Weights {
  const config = parseSpikingBrain2Config(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  const store = openSafetensorsDir(dir);
  return {
    config,
    has: (name) => store.entries.has(name),
    tensor(name, shape) {
      const entry = store.entries.get(name);
      if (entry === undefined) throw new Error(`${dir}: tensor "${name}" is missing`);
      if (entry.shape.length !== shape.length || entry.shape.some((x, i) => x !== shape[i])) {
        throw new Error(`tensor "${name}" has shape [${entry.shape.join(', ')}], expected [${shape.join(', ')}]`);
      }
      return Float64Array.from(readSafetensorsEntry(entry).data);
    },
  };
}

interface Mat {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
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

function rms(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * (w[i] as number));
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

/** Indices of the `count` largest values, ties to the lower index, in descending order of value. */
export function topIndices(values: readonly number[], count: number): number[] {
  return values
    .map((v, i) => [v, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, count)
    .map(([, i]) => i);
}

/** Projections of a softmax attention (the window branch or a MoBA/full layer). */
interface AttnWeights {
  readonly q: Mat;
  readonly k: Mat;
  readonly v: Mat;
  readonly bq: Float64Array | null;
  readonly bk: Float64Array | null;
  readonly bv: Float64Array | null;
  readonly o: Mat;
  readonly qNorm: Float64Array | null;
  readonly kNorm: Float64Array | null;
  readonly numHeads: number;
}

interface SseWeights {
  readonly q: Mat;
  readonly k: Mat;
  readonly v: Mat;
  readonly loraQ0: Mat;
  readonly loraQ1: Mat;
  readonly loraK0: Mat;
  readonly loraK1: Mat;
  readonly a: Mat;
  readonly b: Mat;
  readonly aLog: Float64Array;
  readonly dtBias: Float64Array;
  readonly router: Mat;
  readonly oNorm: Float64Array;
  readonly o: Mat;
  readonly mergeNorm: Float64Array;
  readonly swaMergeNorm: Float64Array;
}

interface Layer {
  readonly kind: SpikingBrain2Config['layerKinds'][number];
  readonly inNorm: Float64Array;
  readonly postNorm: Float64Array;
  readonly sse: SseWeights | null;
  readonly attn: AttnWeights;
  readonly gate: Mat;
  readonly up: Mat;
  readonly down: Mat;
}

function loadLayer(w: Spb2Weights, i: number): Layer {
  const c = w.config;
  const D = c.hiddenSize;
  const d = c.headDim;
  const F = c.intermediateSize;
  const n = spb2LayerNames(i);
  const kind = c.layerKinds[i] as Layer['kind'];
  const mat = (name: string, rows: number, cols: number): Mat => ({ rows, cols, data: w.tensor(name, [rows, cols]) });
  const vec = (name: string, len: number): Float64Array => w.tensor(name, [len]);
  const { numKvHeads: Hkv, qkNorm, bias } = c.attention;
  const attn = (prefix: { q: string; k: string; v: string; o: string; qNorm: string; kNorm: string }, numHeads: number): AttnWeights => ({
    q: mat(`${prefix.q}.weight`, numHeads * d, D),
    k: mat(`${prefix.k}.weight`, Hkv * d, D),
    v: mat(`${prefix.v}.weight`, Hkv * d, D),
    bq: bias ? vec(`${prefix.q}.bias`, numHeads * d) : null,
    bk: bias ? vec(`${prefix.k}.bias`, Hkv * d) : null,
    bv: bias ? vec(`${prefix.v}.bias`, Hkv * d) : null,
    o: mat(prefix.o, D, numHeads * d),
    qNorm: qkNorm ? vec(prefix.qNorm, d) : null,
    kNorm: qkNorm ? vec(prefix.kNorm, d) : null,
    numHeads,
  });
  let sse: SseWeights | null = null;
  let a: AttnWeights;
  if (kind === 'hybrid') {
    const H = c.sse.numHeads;
    sse = {
      q: mat(n.sseQ, H * d, D),
      k: mat(n.sseK, H * d, D),
      v: mat(n.sseV, H * d, D),
      loraQ0: mat(n.loraQ0, d, D),
      loraQ1: mat(n.loraQ1, H * d, d),
      loraK0: mat(n.loraK0, d, D),
      loraK1: mat(n.loraK1, H * d, d),
      a: mat(n.sseA, 2 * H, D),
      b: mat(n.sseB, 2 * H, D),
      aLog: vec(n.aLog, 2 * H),
      dtBias: vec(n.dtBias, 2 * H),
      router: mat(n.router, c.sse.numPartitions, D),
      oNorm: vec(n.sseONorm, d),
      o: mat(n.sseO, D, H * d),
      mergeNorm: vec(n.sseMergeNorm, D),
      swaMergeNorm: vec(n.swaMergeNorm, D),
    };
    a = attn({ q: n.swaQ, k: n.swaK, v: n.swaV, o: n.swaO, qNorm: n.swaQNorm, kNorm: n.swaKNorm }, H);
  } else {
    a = attn({ q: n.q, k: n.k, v: n.v, o: n.o, qNorm: n.qNorm, kNorm: n.kNorm }, c.attention.numHeads);
  }
  return {
    kind,
    inNorm: vec(n.attnNorm, D),
    postNorm: vec(n.mlpNorm, D),
    sse,
    attn: a,
    gate: mat(n.gate, F, D),
    up: mat(n.up, F, D),
    down: mat(n.down, D, F),
  };
}

const addBias = (x: Float64Array, b: Float64Array | null): Float64Array => (b === null ? x : x.map((v, i) => v + (b[i] as number)));

export interface StepOptions {
  /**
   * MoBA selection for this token (a prompt token, the default); false: dense attention in the MoBA
   * layers, as the official code does for a token the model generates.
   */
  readonly moba?: boolean;
}

/** A stateful float64 reference of SpikingBrain 2.0: feed tokens one at a time from position 0. */
export class SpikingBrain2Reference {
  readonly config: SpikingBrain2Config;
  position = 0;
  private readonly layers: Layer[];
  private readonly embeddings: Mat;
  private readonly finalNorm: Float64Array;
  private readonly lmHead: Mat;
  /** Hybrid layers: (1 + N) states × H heads, each [d (key), d (value)] at c·d + e; index 0 is the shared state. */
  private states: Float64Array[][];
  /** Per layer: keys (normed, RoPE'd) and values [Hkv·d]; the window branch keeps the last W, MoBA/full all. */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  constructor(w: Spb2Weights) {
    const c = w.config;
    this.config = c;
    this.embeddings = { rows: c.vocabSize, cols: c.hiddenSize, data: w.tensor(SPB2_EMBEDDINGS, [c.vocabSize, c.hiddenSize]) };
    this.layers = Array.from({ length: c.numLayers }, (_, i) => loadLayer(w, i));
    this.finalNorm = w.tensor(SPB2_FINAL_NORM, [c.hiddenSize]);
    this.lmHead = c.tieWordEmbeddings
      ? this.embeddings
      : { rows: c.vocabSize, cols: c.hiddenSize, data: w.tensor(SPB2_LM_HEAD, [c.vocabSize, c.hiddenSize]) };
    const stateLen = c.sse.numHeads * c.headDim * c.headDim;
    this.states = this.layers.map((l) =>
      l.kind === 'hybrid' ? Array.from({ length: 1 + c.sse.numPartitions }, () => new Float64Array(stateLen)) : [],
    );
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
  }

  /** An independent copy at the same position (weights shared): a prefix to resume from. */
  clone(): SpikingBrain2Reference {
    const copy = Object.create(SpikingBrain2Reference.prototype) as SpikingBrain2Reference;
    Object.assign(copy, {
      config: this.config,
      position: this.position,
      layers: this.layers,
      embeddings: this.embeddings,
      finalNorm: this.finalNorm,
      lmHead: this.lmHead,
      states: this.states.map((s) => s.map((x) => Float64Array.from(x))),
      keys: this.keys.map((k) => [...k]),
      values: this.values.map((v) => [...v]),
    });
    return copy;
  }

  /** Processes one token at `this.position`; returns logits [V]. */
  step(tokenId: number, options: StepOptions = {}): Float64Array {
    const c = this.config;
    if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId >= c.vocabSize) throw new RangeError(`token id ${tokenId}`);
    const D = c.hiddenSize;
    let h: Float64Array = this.embeddings.data.slice(tokenId * D, (tokenId + 1) * D);
    this.layers.forEach((l, i) => {
      const u = rms(h, l.inNorm, c.normEps);
      let a: Float64Array;
      if (l.kind === 'hybrid') {
        const s = l.sse as SseWeights;
        const sse = rms(this.sse(i, s, u), s.mergeNorm, c.normEps);
        const swa = rms(this.attention(i, l.attn, u, 'window'), s.swaMergeNorm, c.normEps);
        a = sse.map((x, j) => (x + (swa[j] as number)) / 2);
      } else {
        a = this.attention(i, l.attn, u, l.kind === 'moba' && options.moba !== false ? 'moba' : 'dense');
      }
      h = h.map((x, j) => x + (a[j] as number));
      const u2 = rms(h, l.postNorm, c.normEps);
      const gate = matVec(l.gate, u2);
      const up = matVec(l.up, u2);
      const m = matVec(l.down, gate.map((x, j) => silu(x) * (up[j] as number)));
      h = h.map((x, j) => x + (m[j] as number));
    });
    this.position++;
    return matVec(this.lmHead, rms(h, this.finalNorm, c.normEps));
  }

  /** Logits of every token of `tokenIds`, continuing from the current position. */
  forward(tokenIds: readonly number[], options: StepOptions = {}): Float64Array[] {
    return tokenIds.map((t) => this.step(t, options));
  }

  private sse(layer: number, w: SseWeights, u: Float64Array): Float64Array {
    const c = this.config;
    const { numHeads: H, numWriters: k, qkActivation, allowNegEigval } = c.sse;
    const d = c.headDim;
    const act = qkActivation === 'relu' ? (x: number) => Math.max(0, x) : silu;
    const q1lin = matVec(w.q, u);
    const k1lin = matVec(w.k, u);
    const q2lin = matVec(w.loraQ1, matVec(w.loraQ0, u)).map((x, j) => x + (q1lin[j] as number));
    const k2lin = matVec(w.loraK1, matVec(w.loraK0, u)).map((x, j) => x + (k1lin[j] as number));
    const [q1, k1, q2, k2] = [q1lin, k1lin, q2lin, k2lin].map((x) => x.map(act)) as [Float64Array, Float64Array, Float64Array, Float64Array];
    const v = matVec(w.v, u).map(silu);
    const bRaw = matVec(w.b, u);
    const aRaw = matVec(w.a, u);
    const beta = bRaw.map((x) => sigmoid(x) * (allowNegEigval ? 2 : 1));
    const g = aRaw.map((x, j) => -Math.exp(w.aLog[j] as number) * softplus(x + (w.dtBias[j] as number)));
    // Router: softmax over the N partitions, the token's top-k.
    const logits = Array.from(matVec(w.router, u));
    const max = Math.max(...logits);
    const ex = logits.map((x) => Math.exp(x - max));
    const sum = ex.reduce((x, y) => x + y, 0);
    const probs = ex.map((x) => x / sum);
    const chosen = topIndices(probs, k);

    const states = this.states[layer] as Float64Array[];
    const scale = 1 / Math.sqrt(d);
    const o = new Float64Array(H * d);
    /** One delta-rule step of head hh on state S (in place); adds Sᵀq to o. */
    const deltaStep = (S: Float64Array, hh: number, q: Float64Array, kv: Float64Array, gate: number, b: number, mul: number): void => {
      const qh = l2norm(q.slice(hh * d, (hh + 1) * d).map((x) => x * mul)).map((x) => x * scale);
      const kh = l2norm(kv.slice(hh * d, (hh + 1) * d).map((x) => x * mul));
      const base = hh * d * d;
      const decay = Math.exp(gate);
      for (let i = 0; i < d * d; i++) S[base + i] = (S[base + i] as number) * decay;
      for (let e = 0; e < d; e++) {
        let mem = 0;
        for (let ci = 0; ci < d; ci++) mem += (S[base + ci * d + e] as number) * (kh[ci] as number);
        const delta = b * ((v[hh * d + e] as number) - mem);
        for (let ci = 0; ci < d; ci++) S[base + ci * d + e] = (S[base + ci * d + e] as number) + (kh[ci] as number) * delta;
      }
      for (let e = 0; e < d; e++) {
        let s = 0;
        for (let ci = 0; ci < d; ci++) s += (S[base + ci * d + e] as number) * (qh[ci] as number);
        o[hh * d + e] = (o[hh * d + e] as number) + s;
      }
    };
    for (let hh = 0; hh < H; hh++) {
      deltaStep(states[0] as Float64Array, hh, q1, k1, g[hh] as number, beta[hh] as number, 1);
      for (const n of chosen) {
        deltaStep(states[1 + n] as Float64Array, hh, q2, k2, g[H + hh] as number, beta[H + hh] as number, probs[n] as number);
      }
    }
    const normed = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) normed.set(rms(o.slice(hh * d, (hh + 1) * d), w.oNorm, c.normEps), hh * d);
    return matVec(w.o, normed);
  }

  private attention(layer: number, w: AttnWeights, u: Float64Array, mode: 'window' | 'moba' | 'dense'): Float64Array {
    const c = this.config;
    const d = c.headDim;
    const H = w.numHeads;
    const Hkv = c.attention.numKvHeads;
    const { ropeTheta, windowTokens: W, mobaChunkTokens: C, mobaTopk: K } = c.attention;
    const p = this.position;
    const qAll = addBias(matVec(w.q, u), w.bq);
    const kAll = addBias(matVec(w.k, u), w.bk);
    const v = addBias(matVec(w.v, u), w.bv);
    const prep = (x: Float64Array, norm: Float64Array | null): Float64Array =>
      applyRope(norm === null ? x : rms(x, norm, c.normEps), p, ropeTheta);
    const k = new Float64Array(Hkv * d);
    for (let j = 0; j < Hkv; j++) k.set(prep(kAll.slice(j * d, (j + 1) * d), w.kNorm), j * d);
    const keys = this.keys[layer] as Float64Array[];
    const values = this.values[layer] as Float64Array[];
    keys.push(k);
    values.push(v);
    if (mode === 'window' && keys.length > W) {
      keys.shift();
      values.shift();
    }
    // Absolute position of keys[0]: the window keeps the last W, MoBA/full every position.
    const first = p + 1 - keys.length;
    const scale = 1 / Math.sqrt(d);
    const o = new Float64Array(H * d);
    for (let hh = 0; hh < H; hh++) {
      const j = Math.floor(hh / (H / Hkv));
      const q = prep(qAll.slice(hh * d, (hh + 1) * d), w.qNorm);
      const dot = (kt: Float64Array): number => {
        let s = 0;
        for (let ci = 0; ci < d; ci++) s += (q[ci] as number) * (kt[j * d + ci] as number);
        return s;
      };
      let positions = keys.map((_, t) => first + t);
      if (mode === 'moba') {
        const own = Math.floor(p / C);
        // Gate of each earlier (complete) chunk: q · mean of its keys; keep the top (K − 1).
        const gates = Array.from({ length: own }, (_, chunk) => {
          const mean = new Float64Array(Hkv * d);
          for (let t = chunk * C; t < (chunk + 1) * C; t++) {
            const kt = keys[t - first] as Float64Array;
            for (let x = 0; x < mean.length; x++) mean[x] = (mean[x] as number) + (kt[x] as number) / C;
          }
          return dot(mean);
        });
        const selected = new Set(topIndices(gates, Math.min(K - 1, own)));
        selected.add(own);
        positions = positions.filter((t) => selected.has(Math.floor(t / C)));
      }
      const scores = positions.map((t) => dot(keys[t - first] as Float64Array) * scale);
      const max = Math.max(...scores);
      const ws = scores.map((s) => Math.exp(s - max));
      const sum = ws.reduce((x, y) => x + y, 0);
      for (let e = 0; e < d; e++) {
        let acc = 0;
        positions.forEach((t, idx) => (acc += ((ws[idx] as number) / sum) * ((values[t - first] as Float64Array)[j * d + e] as number)));
        o[hh * d + e] = acc;
      }
    }
    return matVec(w.o, o);
  }
}
