// Small building blocks of the model graph shared by all layer kinds: RMSNorm, the SiLU-gated MLP,
// and Split along the last axis.
import type { LayerTensorNames } from '../tensor-names.ts';
import { linear, matmulWeight, type GraphContext } from './context.ts';
import { linearInput } from './spike-coding.ts';
import { float, int } from './graph-builder.ts';

/**
 * An RMSNorm weight [n] as the graph multiplies by it: w, or 1 + w for zero-centred norms (Qwen3.5),
 * times `scale` (a constant the norm's output is multiplied by anyway, e.g. the query's d^-½).
 */
export function normWeight(ctx: GraphContext, name: string, n: number, scale = 1, graphName = name): string {
  const offset = ctx.config.zeroCentredNorms ? 1 : 0;
  return ctx.g.weight(graphName, [n], () => ctx.ckpt.tensor(name, [n]).data.map((w) => (w + offset) * scale));
}

/** x [..., n] split along the last axis into pieces of the given sizes. */
export function splitLast(ctx: GraphContext, x: string, sizes: readonly number[]): string[] {
  return ctx.g.opN('Split', [x, ctx.g.i64(sizes)], { axis: int(-1) }, { outputs: sizes.length });
}

/**
 * RMSNorm over the last axis in float32: y = x / sqrt(mean(x²) + ε) · w.
 * Plain path: Mul, ReduceMean, Add, Sqrt, Div, Mul. Fused: SimplifiedLayerNormalization.
 */
export function rmsNorm(ctx: GraphContext, x: string, weight: string, name: string): string {
  const eps = ctx.config.normEps;
  return ctx.g.scope(name, () => {
    if (ctx.options.fusedOps) {
      return ctx.g.op('SimplifiedLayerNormalization', [x, weight], { axis: int(-1), epsilon: float(eps), stash_type: int(1) });
    }
    const g = ctx.g;
    const ms = g.op('ReduceMean', [g.op('Mul', [x, x])], { axes: { kind: 'ints', value: [-1] }, keepdims: int(1) });
    const rms = g.op('Sqrt', [g.op('Add', [ms, g.f32([eps], [])])]);
    return g.op('Mul', [g.op('Div', [x, rms]), weight]);
  });
}

/** h [N, D] → down(silu(gate(h)) ⊙ up(h)) [N, D]; gate and up fused into one MatMul [D, 2F]. */
export function mlp(ctx: GraphContext, layer: number, names: LayerTensorNames, h: string): string {
  const { hiddenSize: D, intermediateSize: F } = ctx.config;
  return ctx.g.scope('mlp', () => {
    const wGateUp = matmulWeight(ctx, `layers.${layer}.mlp.gate_up.weight`, [
      { name: names.gateWeight, rows: F },
      { name: names.upWeight, rows: F },
    ], D);
    const wDown = matmulWeight(ctx, `layers.${layer}.mlp.down.weight`, [{ name: names.downWeight, rows: D }], F);
    const gu = linear(ctx, linearInput(ctx, h), wGateUp, null, 'gate_up_proj');
    const [gate, up] = splitLast(ctx, gu, [F, F]) as [string, string];
    const silu = ctx.options.fusedOps
      ? ctx.g.op('QuickGelu', [gate], { alpha: float(1) }, { domain: 'com.microsoft' })
      : ctx.g.op('Mul', [gate, ctx.g.op('Sigmoid', [gate])]);
    // W8ASpike's down_proj input is not spike-coded (../w8aspike.ts).
    return linear(ctx, ctx.g.op('Mul', [silu, up]), wDown, null, 'down_proj');
  });
}
