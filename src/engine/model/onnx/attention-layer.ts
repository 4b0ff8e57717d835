// The softmax-attention mixer (DESIGN.md §2, "SWA mixer" and full attention) as ONNX: fused q/k/v
// projection with bias, rotate-half RoPE at absolute positions, GQA over past slots + the chunk, the
// mask from positions (sliding window W+1 keys inclusive, or causal only), o_proj.
import { pastKey, pastValue, presentKey, presentValue } from '../io-names.ts';
import type { LayerTensorNames } from '../tensor-names.ts';
import { splitLast } from './blocks.ts';
import { linear, matmulWeight, reshape, transpose, vectorWeight, type GraphContext } from './context.ts';
import type { ModelConfig } from '../config.ts';
import { ropeInverseFrequencies } from '../rope.ts';
import { float, int, type GraphBuilder } from './graph-builder.ts';
import { linearInput, perHead, quantize8, spikeCode } from './spike-coding.ts';
import { DataType } from './proto.ts';

/** Rotary tables for the chunk, from the angles p·θ^(−2i/d) (../rope.ts). */
export interface RopeTables {
  /** Fused path (ONNX RotaryEmbedding, opset 23, without position ids): [B, T, d/2] cos and sin. */
  readonly cos: string;
  readonly sin: string;
  /** Plain path: [B, T, 1, d] cos of each half, and [B, T, 1, d] (−sin, sin). */
  readonly cosFull: string;
  readonly sinSigned: string;
}

/**
 * The step graph's RoPE angles from its positions [B, T] (int32): [B, T, d/2] float32 cos and sin,
 * computed in float64 (exact for long positions) and rounded at the end, as ../rope.ts does in JS.
 */
export function ropeAnglesFromPositions(g: GraphBuilder, config: ModelConfig, positions: string): { cos: string; sin: string } {
  const d = config.headDim;
  return g.scope('rope', () => {
    const pos = g.op('Cast', [g.op('Unsqueeze', [positions, g.i64([2])])], { to: int(DataType.DOUBLE) }); // [B, T, 1]
    const angles = g.op('Mul', [pos, g.f64(ropeInverseFrequencies(config.ropeTheta, d), [1, 1, d / 2])]); // [B, T, d/2]
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
 * x' = x·cos + rotate_half(x)·sin with rotate_half([x₁, x₂]) = [−x₂, x₁]. Plain ops.
 */
function applyRope(ctx: GraphContext, x: string, heads: number, rope: RopeTables): string {
  const { g } = ctx;
  const d = ctx.config.headDim;
  return g.scope('rope', () => {
    const x4 = reshape(ctx, x, [ctx.B, ctx.T, heads, d]);
    const [x1, x2] = splitLast(ctx, x4, [d / 2, d / 2]) as [string, string];
    const swapped = g.op('Concat', [x2, x1], { axis: int(-1) }); // with sinSigned: [−x₂ sin, x₁ sin]
    return g.op('Add', [g.op('Mul', [x4, rope.cosFull]), g.op('Mul', [swapped, rope.sinSigned])]);
  });
}

/**
 * x [B, T, D] (normalised) → mixer output [B, T, D]. Declares past_key/past_value.{layer} [B, Hkv, P, d] in
 * and present_key/present_value.{layer} [B, Hkv, T, d] out (keys after RoPE).
 */
export function attentionMixer(ctx: GraphContext, layer: number, names: LayerTensorNames, x: string, rope: RopeTables, kind: 'swa' | 'full'): string {
  const { g, config } = ctx;
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d } = config;
  return g.scope('attn', () => {
    const scale = 1 / Math.sqrt(d); // folded into Wq, bq (RoPE is linear)
    const w = matmulWeight(ctx, `layers.${layer}.attn.qkv.weight`, [
      { name: names.qWeight, rows: H * d, scale },
      { name: names.kWeight, rows: Hkv * d },
      { name: names.vWeight, rows: Hkv * d },
    ], D);
    const b = vectorWeight(ctx, `layers.${layer}.attn.qkv.bias`, [
      { name: names.qBias, rows: H * d, scale },
      { name: names.kBias, rows: Hkv * d },
      { name: names.vBias, rows: Hkv * d },
    ]);
    const [qkLin, vLin] = splitLast(ctx, linear(ctx, linearInput(ctx, x), w, b, 'qkv_proj'), [(H + Hkv) * d, Hkv * d]) as [string, string];
    // W8ASpike: values 8-bit per token and kv head (keys likewise, after RoPE, in the paths below).
    const v = ctx.spiking ? perHead(ctx, vLin, Hkv, (x4) => quantize8(ctx, x4, 'v_quant8')) : vLin;
    const kPast = g.input(pastKey(layer), DataType.FLOAT, ['batch', Hkv, 'past', d]);
    const vPast = g.input(pastValue(layer), DataType.FLOAT, ['batch', Hkv, 'past', d]);
    const [o, kPresent, vPresent] = ctx.options.fusedOps
      ? fusedAttention(ctx, qkLin, v, kPast, vPast, rope, kind)
      : plainAttention(ctx, qkLin, v, kPast, vPast, rope, kind);
    // Decode graph (fused): [B, 1, Hkv·d], the same memory as [B, Hkv, 1, d] (see fusedAttention).
    const presentDims = ctx.singleToken && ctx.options.fusedOps ? ['batch', 1, Hkv * d] : ['batch', Hkv, 'tokens', d];
    g.output(presentKey(layer), kPresent, DataType.FLOAT, presentDims);
    g.output(presentValue(layer), vPresent, DataType.FLOAT, presentDims);
    const wO = matmulWeight(ctx, `layers.${layer}.attn.o_proj.weight`, [{ name: names.oWeight, rows: D }], H * d);
    return linear(ctx, linearInput(ctx, o), wO, null, 'o_proj');
  });
}

type AttentionParts = [output: string, presentKey: string, presentValue: string];

/**
 * Plain ops. Keys = past slots then the chunk: K [B, Hkv, P+T, d]; queries grouped by kv head
 * [B, Hkv, G·T, d]; scores [B, Hkv, G, T, P+T] + mask; softmax; · V. Returns o [B, T, H·d].
 */
function plainAttention(ctx: GraphContext, qkLin: string, v: string, kPast: string, vPast: string, rope: RopeTables, kind: 'swa' | 'full'): AttentionParts {
  const { g } = ctx;
  const { numHeads: H, numKvHeads: Hkv, headDim: d } = ctx.config;
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
  const mask = g.op('Unsqueeze', [ctx.attentionMask(kind), g.i64([1])]); // [B, 1, 1, T, P+T]
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
function fusedAttention(ctx: GraphContext, qkLin: string, v: string, kPast: string, vPast: string, rope: RopeTables, kind: 'swa' | 'full'): AttentionParts {
  const { g } = ctx;
  const { numHeads: H, numKvHeads: Hkv, headDim: d } = ctx.config;
  // RotaryEmbedding keeps the [B, T, (H+Hkv)·d] layout Attention takes: no reshapes around it. The
  // ONNX op (opset 23) takes per-row tables [B, T, d/2] without position ids, so nothing indexes them.
  const qk = g.scope('rope', () => g.op('RotaryEmbedding', [qkLin, rope.cos, rope.sin], { interleaved: int(0), num_heads: int(H + Hkv) }));
  const [qRoped, kRoped] = splitLast(ctx, qk, [H * d, Hkv * d]) as [string, string];
  const q = ctx.spiking ? perHead(ctx, qRoped, H, (x4) => spikeCode(ctx, x4, 'q_spike')) : qRoped;
  const k = ctx.spiking ? perHead(ctx, kRoped, Hkv, (x4) => quantize8(ctx, x4, 'k_quant8')) : kRoped;
  const [o, kAll, vAll] = g.opN(
    'Attention',
    [q, k, v, ctx.attentionMask(kind), kPast, vPast],
    { q_num_heads: int(H), kv_num_heads: int(Hkv), scale: float(1) },
    { outputs: 3 },
  ) as [string, string, string];
  if (ctx.singleToken) return [o, k, v];
  const minusT = ctx.minusT();
  const last = (x: string): string => g.op('Slice', [x, minusT, g.i64([Number.MAX_SAFE_INTEGER]), g.i64([2])]);
  return [o, last(kAll), last(vAll)];
}
