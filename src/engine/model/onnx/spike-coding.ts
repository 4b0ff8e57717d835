// W8ASpike's activation quantizers as graph ops (semantics: ../w8aspike.ts), each over the last axis:
//   spikeCode   vth = clamp(mean(|x|)/3, 1e−5, 1e4), x' = Round(x/vth) · vth   (QuantLinear inputs, SWA queries)
//   quantize8   s = clamp(max(|x|)/127, 1e−5, 1e4),  x' = clamp(Round(x/s), −128, 127) · s   (SWA keys, values)
// ONNX Round is round-half-to-even, as torch.round. The divisions are written as divisions (not
// multiplications by reciprocals) so the fp32 results round as the official code's do.
import { SCALE_MAX, SCALE_MIN, SPIKE_K } from '../w8aspike.ts';
import { reshape, type GraphContext } from './context.ts';
import { ints, int } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** A reduction over the last axis, kept: `axes` is an attribute up to opset 17 (plain graph), an input from 18 (fused). */
function reduceLast(ctx: GraphContext, op: 'ReduceMean' | 'ReduceMax', x: string): string {
  return ctx.options.fusedOps ? ctx.g.op(op, [x, ctx.g.i64([-1])], { keepdims: int(1) }) : ctx.g.op(op, [x], { axes: ints([-1]), keepdims: int(1) });
}

function clip(ctx: GraphContext, x: string, lo: number, hi: number): string {
  return ctx.g.op('Clip', [x, ctx.g.f32([lo], []), ctx.g.f32([hi], [])]);
}

/**
 * Spike coding of x [..., n] per row of the last axis. With `count`, the number of zero spikes and of
 * all spikes is added to ctx.spikeCounts (the graph's sparsity outputs).
 */
export function spikeCode(ctx: GraphContext, x: string, name = 'spike', count = false): string {
  const { g } = ctx;
  return g.scope(name, () => {
    const mean = reduceLast(ctx, 'ReduceMean', g.op('Abs', [x]));
    const vth = clip(ctx, g.op('Div', [mean, g.f32([SPIKE_K], [])]), SCALE_MIN, SCALE_MAX);
    const spikes = g.op('Round', [g.op('Div', [x, vth])]);
    if (count) {
      const isZero = g.op('Cast', [g.op('Equal', [spikes, g.f32([0], [])])], { to: int(DataType.INT64) });
      ctx.spikeCounts.push({ zeros: g.op('ReduceSum', [isZero], { keepdims: int(0) }), values: g.op('Size', [spikes]) });
    }
    return g.op('Mul', [spikes, vth]);
  });
}

/** Symmetric 8-bit fake quantization of x [..., n] per row of the last axis. */
export function quantize8(ctx: GraphContext, x: string, name = 'quant8'): string {
  const { g } = ctx;
  return g.scope(name, () => {
    const max = reduceLast(ctx, 'ReduceMax', g.op('Abs', [x]));
    const s = clip(ctx, g.op('Div', [max, g.f32([127], [])]), SCALE_MIN, SCALE_MAX);
    return g.op('Mul', [clip(ctx, g.op('Round', [g.op('Div', [x, s])]), -128, 127), s]);
  });
}

/**
 * `f` applied per head of x [B, T, heads·d] (over each head's d values); returns [B, T, heads·d].
 * The reshapes copy B and T (0 = keep that dim) so the targets are constants and shape inference keeps
 * the static last dim (ONNX Attention's inference needs it).
 */
export function perHead(ctx: GraphContext, x: string, heads: number, f: (x4: string) => string): string {
  const d = ctx.config.headDim;
  return reshape(ctx, f(reshape(ctx, x, [0, 0, heads, d])), [0, 0, heads * d]);
}

/** A QuantLinear's input: spike-coded (and counted for sparsity) on a W8ASpike model, as it is otherwise. */
export function linearInput(ctx: GraphContext, x: string): string {
  return ctx.spiking ? spikeCode(ctx, x, 'spike_in', true) : x;
}
