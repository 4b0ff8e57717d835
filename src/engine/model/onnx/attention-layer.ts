// The softmax-attention mixer (DESIGN.md §2, "SWA mixer" and full attention) as ONNX: fused q/k/v
// projection with bias, rotate-half RoPE at absolute positions, GQA over past slots + the chunk, the
// mask from positions (sliding window W+1 keys inclusive, or causal only), o_proj.
import { pastKey, pastValue, presentKey, presentValue } from '../io-names.ts';
import type { LayerTensorNames } from '../tensor-names.ts';
import { splitLast } from './blocks.ts';
import { linear, matmulWeight, reshape, transpose, vectorWeight, type GraphContext } from './context.ts';
import { int } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** cos and sin [N, 1, d/2] of the rotary angles p·θ^(−2i/d), computed in float64, per graph. */
export function ropeTables(ctx: GraphContext): { cos: string; sin: string } {
  const { g, config } = ctx;
  const d = config.headDim;
  return g.scope('rope', () => {
    const invFreq = Array.from({ length: d / 2 }, (_, i) => Math.pow(config.ropeTheta, (-2 * i) / d));
    const pos = g.op('Cast', [reshape(ctx, ctx.positions, [ctx.N, 1])], { to: int(DataType.DOUBLE) }); // [N, 1]
    const angles = g.op('Mul', [pos, g.f64(invFreq, [1, d / 2])]); // [N, d/2]
    const toF32 = (x: string): string => reshape(ctx, g.op('Cast', [x], { to: int(DataType.FLOAT) }), [ctx.N, 1, d / 2]);
    return { cos: toF32(g.op('Cos', [angles])), sin: toF32(g.op('Sin', [angles])) };
  });
}

/** x [N, heads·d] → rotate-half RoPE: [x₁ cos − x₂ sin, x₂ cos + x₁ sin] with x = [x₁, x₂] halves. */
function applyRope(ctx: GraphContext, x: string, heads: number, rope: { cos: string; sin: string }): string {
  const { g } = ctx;
  const d = ctx.config.headDim;
  return g.scope('rope', () => {
    const [x1, x2] = splitLast(ctx, reshape(ctx, x, [ctx.N, heads, d]), [d / 2, d / 2]) as [string, string];
    const r1 = g.op('Sub', [g.op('Mul', [x1, rope.cos]), g.op('Mul', [x2, rope.sin])]);
    const r2 = g.op('Add', [g.op('Mul', [x2, rope.cos]), g.op('Mul', [x1, rope.sin])]);
    return g.op('Concat', [r1, r2], { axis: int(-1) }); // [N, heads, d]
  });
}

/**
 * x [N, D] (normalised) → mixer output [N, D]. Declares past_key/past_value.{layer} [B, Hkv, P, d] in
 * and present_key/present_value.{layer} [B, Hkv, T, d] out (keys after RoPE).
 */
export function attentionMixer(
  ctx: GraphContext,
  layer: number,
  names: LayerTensorNames,
  x: string,
  rope: { cos: string; sin: string },
  kind: 'swa' | 'full',
): string {
  const { g, config } = ctx;
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d } = config;
  const G = H / Hkv;
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
    const [qLin, kLin, vLin] = splitLast(ctx, linear(ctx, x, w, b, 'qkv_proj'), [H * d, Hkv * d, Hkv * d]) as [string, string, string];
    const q = applyRope(ctx, qLin, H, rope); // [N, H, d]
    const k = applyRope(ctx, kLin, Hkv, rope); // [N, Hkv, d]

    // Present keys/values [B, Hkv, T, d]; all keys = past slots then the chunk.
    const kPresent = transpose(ctx, reshape(ctx, k, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]);
    const vPresent = transpose(ctx, reshape(ctx, vLin, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]);
    g.output(presentKey(layer), kPresent, DataType.FLOAT, ['batch', Hkv, 'tokens', d]);
    g.output(presentValue(layer), vPresent, DataType.FLOAT, ['batch', Hkv, 'tokens', d]);
    const kPast = g.input(pastKey(layer), DataType.FLOAT, ['batch', Hkv, 'past', d]);
    const vPast = g.input(pastValue(layer), DataType.FLOAT, ['batch', Hkv, 'past', d]);
    const kAll = g.op('Concat', [kPast, kPresent], { axis: int(2) }); // [B, Hkv, P+T, d]
    const vAll = g.op('Concat', [vPast, vPresent], { axis: int(2) });

    // Queries grouped by kv head: [B, Hkv, G·T, d]; scores [B, Hkv, G, T, P+T].
    const qg = reshape(ctx, transpose(ctx, reshape(ctx, q, [ctx.B, ctx.T, Hkv, G, d]), [0, 2, 3, 1, 4]), [ctx.B, Hkv, -1, d]);
    const scores = g.op('MatMul', [qg, transpose(ctx, kAll, [0, 1, 3, 2])]);
    const masked = g.op('Add', [reshape(ctx, scores, [ctx.B, Hkv, G, ctx.T, -1]), ctx.attentionMask(kind)]);
    const probs = g.op('Softmax', [masked], { axis: int(-1) });
    const o = g.op('MatMul', [probs, g.op('Unsqueeze', [vAll, g.i64([2])])]); // [B, Hkv, G, T, d]
    const oT = transpose(ctx, o, [0, 3, 1, 2, 4]); // [B, T, Hkv, G, d]
    const wO = matmulWeight(ctx, `layers.${layer}.attn.o_proj.weight`, [{ name: names.oWeight, rows: D }], H * d);
    return linear(ctx, reshape(ctx, oT, [ctx.N, H * d]), wO, null, 'o_proj');
  });
}
