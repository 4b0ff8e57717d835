// The softmax-attention mixer (DESIGN.md §2, "SWA mixer" and full attention) as ONNX: fused q/k/v
// projection with bias, rotate-half RoPE at absolute positions, GQA over past slots + the chunk, the
// mask from positions (sliding window W+1 keys inclusive, or causal only), o_proj.
// Qwen3.5's gated form (config.attention; docs/models/qwen3_5.md): q_proj also yields a per-head gate
// (rows per head: [query d | gate d]), no biases, per-head RMSNorm of q and k (zero-centred) before
// RoPE, RoPE on the first rotaryDim dims of each head only, and o ← o ⊙ sigmoid(gate) before o_proj.
// SpikingBrain 2.0 (AttentionVariant): the hybrid layers' window branch has its own query-head count,
// and MoBA layers add the block-selection mask of moba-mask.ts for prompt tokens.
import { pastKey, pastValue, presentKey, presentValue } from '../io-names.ts';
import type { LayerTensorNames } from '../tensor-names.ts';
import { normWeight, rmsNorm, splitLast } from './blocks.ts';
import { linear, matmulWeight, reshape, transpose, vectorWeight, type GraphContext } from './context.ts';
import type { ModelConfig } from '../config.ts';
import { ropeInverseFrequencies } from '../rope.ts';
import { float, int, type GraphBuilder } from './graph-builder.ts';
import { linearInput, perHead, quantize8, spikeCode } from './spike-coding.ts';
import { DataType } from './proto.ts';
import { mobaMask } from './moba-mask.ts';

/** How one attention layer departs from the config's plain form (SpikingBrain 2.0). */
export interface AttentionVariant {
  /** Query heads (default config.numHeads): the hybrid window branch has sse.numHeads. */
  readonly numHeads?: number;
  /**
   * A MoBA layer: in the step graph, a row's prompt tokens attend only their own chunk and the chunks
   * they select (moba-mask.ts); generated tokens, and every row of the decode graph, attend densely.
   */
  readonly moba?: boolean;
}

/**
 * Rotary tables for the chunk, from the angles p·θ^(−2i/r) (../rope.ts); r = config.attention.rotaryDim
 * (d unless RoPE is partial).
 */
export interface RopeTables {
  /** Fused path (ONNX RotaryEmbedding, opset 23, without position ids): [B, T, r/2] cos and sin. */
  readonly cos: string;
  readonly sin: string;
  /** Plain path: [B, T, 1, r] cos of each half, and [B, T, 1, r] (−sin, sin). */
  readonly cosFull: string;
  readonly sinSigned: string;
}

/**
 * The step graph's RoPE angles from its positions [B, T] (int32): [B, T, r/2] float32 cos and sin,
 * computed in float64 (exact for long positions) and rounded at the end, as ../rope.ts does in JS.
 */
export function ropeAnglesFromPositions(g: GraphBuilder, config: ModelConfig, positions: string): { cos: string; sin: string } {
  const r = config.attention.rotaryDim;
  return g.scope('rope', () => {
    const pos = g.op('Cast', [g.op('Unsqueeze', [positions, g.i64([2])])], { to: int(DataType.DOUBLE) }); // [B, T, 1]
    const angles = g.op('Mul', [pos, g.f64(ropeInverseFrequencies(config.ropeTheta, r), [1, 1, r / 2])]); // [B, T, r/2]
    return {
      cos: g.op('Cast', [g.op('Cos', [angles])], { to: int(DataType.FLOAT) }),
      sin: g.op('Cast', [g.op('Sin', [angles])], { to: int(DataType.FLOAT) }),
    };
  });
}

export function ropeTables(ctx: GraphContext): RopeTables {
  const { g } = ctx;
  const { cos, sin } = ctx.ropeAngles();
  if (ctx.options.fusedOps) return { cos, sin, cosFull: '', sinSigned: '' };
  return g.scope('rope', () => {
    const cosFull = g.op('Unsqueeze', [g.op('Concat', [cos, cos], { axis: int(-1) }), g.i64([2])]);
    const sinSigned = g.op('Unsqueeze', [g.op('Concat', [g.op('Neg', [sin]), sin], { axis: int(-1) }), g.i64([2])]);
    return { cos: '', sin: '', cosFull, sinSigned };
  });
}

/**
 * Rotate-half RoPE on x [B, T, heads·d] (queries and keys together) → [B, T, heads, d]:
 * x' = x·cos + rotate_half(x)·sin with rotate_half([x₁, x₂]) = [−x₂, x₁], on the first r dims of each
 * head (r = rotaryDim); dims r…d pass through. Plain ops.
 */
function applyRope(ctx: GraphContext, x: string, heads: number, rope: RopeTables): string {
  const { g } = ctx;
  const d = ctx.config.headDim;
  const r = ctx.config.attention.rotaryDim;
  return g.scope('rope', () => {
    const x4 = reshape(ctx, x, [ctx.B, ctx.T, heads, d]);
    const parts = splitLast(ctx, x4, r < d ? [r / 2, r / 2, d - r] : [r / 2, r / 2]);
    const [x1, x2, pass] = parts as [string, string, string | undefined];
    const rot = r < d ? g.op('Concat', [x1, x2], { axis: int(-1) }) : x4;
    const swapped = g.op('Concat', [x2, x1], { axis: int(-1) }); // with sinSigned: [−x₂ sin, x₁ sin]
    const rotated = g.op('Add', [g.op('Mul', [rot, rope.cosFull]), g.op('Mul', [swapped, rope.sinSigned])]);
    return pass === undefined ? rotated : g.op('Concat', [rotated, pass], { axis: int(-1) });
  });
}

/**
 * q, k, v and Qwen3.5's output gate from x [B, T, D]: one MatMul, then (gated form) the gate split off
 * each head's query rows and q/k RMSNorm per head. The softmax scale d^-½ is folded into Wq (or into
 * q_norm's weight: RMSNorm's output is linear in its weight). Returns qk [B, T, (H+Hkv)·d], v, gate|null.
 */
function projectQkv(ctx: GraphContext, layer: number, names: LayerTensorNames, x: string, H: number): { qk: string; v: string; gate: string | null } {
  const { g, config } = ctx;
  const { hiddenSize: D, numKvHeads: Hkv, headDim: d } = config;
  const form = config.attention;
  const scale = 1 / Math.sqrt(d);
  const qRows = form.outputGate ? 2 * H * d : H * d;
  // The scale goes into Wq and bq only when every q_proj row is a query row and no norm follows.
  const wqScale = form.qkNorm || form.outputGate ? 1 : scale;
  const w = matmulWeight(ctx, `layers.${layer}.attn.qkv.weight`, [
    { name: names.qWeight, rows: qRows, scale: wqScale },
    { name: names.kWeight, rows: Hkv * d },
    { name: names.vWeight, rows: Hkv * d },
  ], D);
  const b = form.bias
    ? vectorWeight(ctx, `layers.${layer}.attn.qkv.bias`, [
        { name: names.qBias, rows: qRows, scale: wqScale },
        { name: names.kBias, rows: Hkv * d },
        { name: names.vBias, rows: Hkv * d },
      ])
    : null;
  const proj = linear(ctx, linearInput(ctx, x), w, b, 'qkv_proj');
  if (!form.outputGate && !form.qkNorm) {
    const [qk, v] = splitLast(ctx, proj, [(H + Hkv) * d, Hkv * d]) as [string, string];
    return { qk, v, gate: null };
  }
  const [qPart, kLin, v] = splitLast(ctx, proj, [qRows, Hkv * d, Hkv * d]) as [string, string, string];
  let q4: string;
  let gate: string | null = null;
  if (form.outputGate) {
    const [q, gt] = splitLast(ctx, reshape(ctx, qPart, [ctx.B, ctx.T, H, 2 * d]), [d, d]) as [string, string];
    q4 = q;
    gate = reshape(ctx, gt, [ctx.B, ctx.T, H * d]);
  } else {
    q4 = reshape(ctx, qPart, [ctx.B, ctx.T, H, d]);
  }
  let k4 = reshape(ctx, kLin, [ctx.B, ctx.T, Hkv, d]);
  if (form.qkNorm) {
    q4 = rmsNorm(ctx, q4, normWeight(ctx, names.qNorm, d, scale, `layers.${layer}.attn.q_norm.scaled`), 'q_norm');
    k4 = rmsNorm(ctx, k4, normWeight(ctx, names.kNorm, d), 'k_norm');
  } else {
    q4 = g.op('Mul', [q4, g.f32([scale], [])]);
  }
  const qk = g.op('Concat', [reshape(ctx, q4, [ctx.B, ctx.T, H * d]), reshape(ctx, k4, [ctx.B, ctx.T, Hkv * d])], { axis: int(-1) });
  return { qk, v, gate };
}

/**
 * x [B, T, D] (normalised) → mixer output [B, T, D]. Declares past_key/past_value.{layer} [B, Hkv, P, d] in
 * (P: the kind's own past, ctx.pastDim)
 * and present_key/present_value.{layer} [B, Hkv, T, d] out (keys after RoPE).
 */
export function attentionMixer(ctx: GraphContext, layer: number, names: LayerTensorNames, x: string, rope: RopeTables, kind: 'swa' | 'full', variant: AttentionVariant = {}): string {
  const { g, config } = ctx;
  const { hiddenSize: D, numKvHeads: Hkv, headDim: d } = config;
  const H = variant.numHeads ?? config.numHeads;
  const heads: Heads = { H, moba: variant.moba === true && !ctx.singleToken };
  return g.scope('attn', () => {
    // The softmax scale d^-½ is already in q (RoPE is linear).
    const { qk: qkLin, v: vLin, gate } = projectQkv(ctx, layer, names, x, H);
    // W8ASpike: values 8-bit per token and kv head (keys likewise, after RoPE, in the paths below).
    const v = ctx.spiking ? perHead(ctx, vLin, Hkv, (x4) => quantize8(ctx, x4, 'v_quant8')) : vLin;
    const kPast = g.input(pastKey(layer), DataType.FLOAT, ['batch', Hkv, ctx.pastDim(kind), d]);
    const vPast = g.input(pastValue(layer), DataType.FLOAT, ['batch', Hkv, ctx.pastDim(kind), d]);
    const [o, kPresent, vPresent] = ctx.options.fusedOps
      ? fusedAttention(ctx, qkLin, v, kPast, vPast, rope, kind, heads)
      : plainAttention(ctx, qkLin, v, kPast, vPast, rope, kind, heads);
    // Decode graph (fused): [B, 1, Hkv·d], the same memory as [B, Hkv, 1, d] (see fusedAttention).
    const presentDims = ctx.singleToken && ctx.options.fusedOps ? ['batch', 1, Hkv * d] : ['batch', Hkv, 'tokens', d];
    g.output(presentKey(layer), kPresent, DataType.FLOAT, presentDims);
    g.output(presentValue(layer), vPresent, DataType.FLOAT, presentDims);
    const gated = gate === null ? o : g.op('Mul', [o, g.op('Sigmoid', [gate])], {}, { name: 'output_gate' });
    const wO = matmulWeight(ctx, `layers.${layer}.attn.o_proj.weight`, [{ name: names.oWeight, rows: D }], H * d);
    return linear(ctx, linearInput(ctx, gated), wO, null, 'o_proj');
  });
}

type AttentionParts = [output: string, presentKey: string, presentValue: string];

/** Query heads of the layer and whether its prompt tokens take MoBA's selection mask. */
interface Heads {
  readonly H: number;
  readonly moba: boolean;
}

/**
 * Plain ops. Keys = past slots then the chunk: K [B, Hkv, P+T, d]; queries grouped by kv head
 * [B, Hkv, G·T, d]; scores [B, Hkv, G, T, P+T] + mask; softmax; · V. Returns o [B, T, H·d].
 */
function plainAttention(ctx: GraphContext, qkLin: string, v: string, kPast: string, vPast: string, rope: RopeTables, kind: 'swa' | 'full', heads: Heads): AttentionParts {
  const { g } = ctx;
  const { numKvHeads: Hkv, headDim: d } = ctx.config;
  const { H } = heads;
  const G = H / Hkv;
  const qk = applyRope(ctx, qkLin, H + Hkv, rope); // [B, T, H+Hkv, d]
  const [qRoped, kRoped] = g.opN('Split', [qk, g.i64([H, Hkv])], { axis: int(2) }, { outputs: 2 }) as [string, string];
  const q = ctx.spiking ? spikeCode(ctx, qRoped, 'q_spike') : qRoped; // per head: the last axis is d
  const k = ctx.spiking ? quantize8(ctx, kRoped, 'k_quant8') : kRoped;
  const kPresent = transpose(ctx, k, [0, 2, 1, 3]); // [B, Hkv, T, d]
  const vPresent = transpose(ctx, reshape(ctx, v, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]);
  const kAll = g.op('Concat', [kPast, kPresent], { axis: int(2) }); // [B, Hkv, P+T, d]
  const vAll = g.op('Concat', [vPast, vPresent], { axis: int(2) });
  const qg = reshape(ctx, transpose(ctx, reshape(ctx, q, [ctx.B, ctx.T, Hkv, G, d]), [0, 2, 3, 1, 4]), [ctx.B, Hkv, -1, d]);
  const scores = g.op('MatMul', [qg, transpose(ctx, kAll, [0, 1, 3, 2])]);
  let mask = g.op('Unsqueeze', [ctx.attentionMask(kind), g.i64([1])]); // [B, 1, 1, T, P+T]
  if (heads.moba) {
    const causal = mask;
    mask = mobaMask(ctx, qg, () => kAll, G, causal, 5, (b, bias) => b.op('Add', [causal, bias])); // [B, Hkv, G, T, P+T]
  }
  const masked = g.op('Add', [reshape(ctx, scores, [ctx.B, Hkv, G, ctx.T, -1]), mask]);
  const probs = g.op('Softmax', [masked], { axis: int(-1) });
  const o = g.op('MatMul', [probs, g.op('Unsqueeze', [vAll, g.i64([2])])]); // [B, Hkv, G, T, d]
  const oT = transpose(ctx, o, [0, 3, 1, 2, 4]); // [B, T, Hkv, G, d]
  return [reshape(ctx, oT, [ctx.B, ctx.T, H * d]), kPresent, vPresent];
}

/**
 * ONNX Attention (opset 23; GQA, additive mask, past keys/values) on q, k, v [B, T, ·]: no
 * transposes of queries or outputs and one pass for mask + softmax. Its present K/V are past ⧺ chunk
 * [B, Hkv, P+T, d]; the chunk's part is the last T slots. With T = 1 (the decode graph) that part is
 * k and v themselves: [B, 1, Hkv·d] and [B, Hkv, 1, d] lay out the same floats, so no Slice runs.
 */
function fusedAttention(ctx: GraphContext, qkLin: string, v: string, kPast: string, vPast: string, rope: RopeTables, kind: 'swa' | 'full', heads: Heads): AttentionParts {
  const { g } = ctx;
  const { numKvHeads: Hkv, headDim: d } = ctx.config;
  const { H } = heads;
  // RotaryEmbedding keeps the [B, T, (H+Hkv)·d] layout Attention takes: no reshapes around it. The
  // ONNX op (opset 23) takes per-row tables [B, T, r/2] without position ids, so nothing indexes them.
  const qk = g.scope('rope', () =>
    g.op('RotaryEmbedding', [qkLin, rope.cos, rope.sin], {
      interleaved: int(0),
      num_heads: int(H + Hkv),
      ...(ctx.config.attention.rotaryDim < d ? { rotary_embedding_dim: int(ctx.config.attention.rotaryDim) } : {}),
    }),
  );
  const [qRoped, kRoped] = splitLast(ctx, qk, [H * d, Hkv * d]) as [string, string];
  const q = ctx.spiking ? perHead(ctx, qRoped, H, (x4) => spikeCode(ctx, x4, 'q_spike')) : qRoped;
  const k = ctx.spiking ? perHead(ctx, kRoped, Hkv, (x4) => quantize8(ctx, x4, 'k_quant8')) : kRoped;
  if (kind === 'full') return splitPastAttention(ctx, q, k, v, kPast, vPast, heads);
  let mask = ctx.attentionMask(kind); // [B, 1, T, P+T]
  if (heads.moba) {
    // MoBA: the selection needs q per kv group and every key: [B, Hkv, G·T, d] and [B, Hkv, P+T, d].
    const G = H / Hkv;
    const qg = reshape(ctx, transpose(ctx, reshape(ctx, q, [ctx.B, ctx.T, Hkv, G, d]), [0, 2, 3, 1, 4]), [ctx.B, Hkv, -1, d]);
    const [B, T] = [ctx.B, ctx.T];
    const keys = (b: GraphBuilder): string =>
      b.op('Concat', [kPast, b.op('Transpose', [b.op('Reshape', [k, b.op('Concat', [B, T, b.i64([Hkv, d])], { axis: int(0) })])], { perm: { kind: 'ints', value: [0, 2, 1, 3] } })], { axis: int(2) });
    const causal = mask;
    // Query head h = kv head · G + g. With K = 1 (own chunk only) the bias is the same for every head.
    const maskHeads = (ctx.config.moba?.topk ?? 1) > 1 ? H : 1;
    mask = mobaMask(ctx, qg, keys, G, causal, 4, (b, bias) => {
      const perHead = b.op('Add', [b.op('Unsqueeze', [causal, b.i64([1])]), bias]); // [B, Hkv, G, T, P+T]
      return b.op('Reshape', [perHead, b.op('Concat', [B, b.i64([maskHeads]), T, b.i64([-1])], { axis: int(0) })]);
    });
  }
  const [o, kAll, vAll] = g.opN(
    'Attention',
    [q, k, v, mask, kPast, vPast],
    { q_num_heads: int(H), kv_num_heads: int(Hkv), scale: float(1) },
    { outputs: 3 },
  ) as [string, string, string];
  if (ctx.singleToken) return [o, k, v];
  const minusT = ctx.minusT();
  const last = (x: string): string => g.op('Slice', [x, minusT, g.i64([Number.MAX_SAFE_INTEGER]), g.i64([2])]);
  return [o, last(kAll), last(vAll)];
}

/**
 * Fused graph, growing layers (full, MoBA; P = the context): attention over the past and over the chunk
 * kept apart, so that the past keys and values are only read. onnxruntime's CPU Attention refuses a
 * past without a present output and copies past ⧺ chunk into it every run (O(P) per layer and step:
 * at 32K on the 5B most of a decode step). q [B, T, H·d] (scaled, after RoPE), k and v [B, T, Hkv·d];
 * queries grouped by kv head qg [B, Hkv, G·T, d]; scores qg·Kpastᵀ [B, Hkv, G·T, P] (onnxruntime fuses
 * the transpose into the MatMul) and qg·Knewᵀ for the chunk, one softmax over both with the mask, then
 * o = p_past·Vpast + p_new·Vnew.
 */
function splitPastAttention(ctx: GraphContext, q: string, k: string, v: string, kPast: string, vPast: string, heads: Heads): AttentionParts {
  const { g } = ctx;
  const { numKvHeads: Hkv, headDim: d } = ctx.config;
  const { H } = heads;
  const G = H / Hkv;
  const qg = reshape(ctx, transpose(ctx, reshape(ctx, q, [ctx.B, ctx.T, Hkv, G, d]), [0, 2, 3, 1, 4]), [ctx.B, Hkv, -1, d]);
  const kNew = transpose(ctx, reshape(ctx, k, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]); // [B, Hkv, T, d]
  const vNew = transpose(ctx, reshape(ctx, v, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]);
  const scores = g.op('Concat', [
    g.op('MatMul', [qg, transpose(ctx, kPast, [0, 1, 3, 2])]),
    g.op('MatMul', [qg, transpose(ctx, kNew, [0, 1, 3, 2])]),
  ], { axis: int(-1) }); // [B, Hkv, G·T, P+T]
  let mask = g.op('Unsqueeze', [ctx.attentionMask('full'), g.i64([1])]); // [B, 1, 1, T, P+T]
  if (heads.moba) {
    const causal = mask;
    mask = mobaMask(ctx, qg, (b) => b.op('Concat', [kPast, kNew], { axis: int(2) }), G, causal, 5, (b, bias) => b.op('Add', [causal, bias]));
  }
  const probs = g.op('Softmax', [g.op('Add', [reshape(ctx, scores, [ctx.B, Hkv, G, ctx.T, -1]), mask])], { axis: int(-1) }); // [B, Hkv, G, T, P+T]
  const P = g.op('Slice', [g.op('Shape', [kPast]), g.i64([2]), g.i64([3])]);
  const pPast = g.op('Slice', [probs, g.i64([0]), P, g.i64([-1])]);
  const pNew = g.op('Slice', [probs, P, g.i64([Number.MAX_SAFE_INTEGER]), g.i64([-1])]);
  const o = g.op('Add', [
    g.op('MatMul', [pPast, g.op('Unsqueeze', [vPast, g.i64([2])])]),
    g.op('MatMul', [pNew, g.op('Unsqueeze', [vNew, g.i64([2])])]),
  ]); // [B, Hkv, G, T, d]
  const out = reshape(ctx, transpose(ctx, o, [0, 3, 1, 2, 4]), [ctx.B, ctx.T, H * d]);
  // The decode graph declares present K/V as [B, 1, Hkv·d]: k and v themselves (see fusedAttention).
  return ctx.singleToken ? [out, k, v] : [out, kNew, vNew];
}
