// What every part of the model graph shares while it is being built: the builder, the checkpoint,
// the options, the dynamic dims (B, T as [1] int64 values) and weight helpers that turn
// checkpoint tensors [out, in] into MatMul operands [in, out] (optionally several fused along out).
import type { Checkpoint } from '../checkpoint.ts';
import type { ModelConfig } from '../config.ts';
import { int, quantBits, type GraphBuilder, type QuantizedWeightNames, type WeightDtype } from './graph-builder.ts';
import { QUANT_BLOCK } from './quantize.ts';

export interface GraphOptions {
  /**
   * Use onnxruntime contrib ops (com.microsoft LinearAttention, SkipSimplifiedLayerNormalization, …)
   * where they match the plain-op reference path. false = plain ONNX ops only (the reference path).
   */
  readonly fusedOps: boolean;
  /** Sub-chunk length C of the plain-op chunked GLA (tokens). */
  readonly glaSubChunk: number;
  /** Storage of weight matrices (default float32); float16 for GPUs, cast to float32 in the graph. */
  readonly weightDtype?: WeightDtype;
  /**
   * With int8/int4 weights: MatMulNBits quantizes each row of activations to int8 per block too
   * (accuracy_level 4, the fast kernels; default true). false keeps activations float32 (accuracy_level
   * 0): exactly the dequantized weights, many times slower — the reference the fast path is checked by.
   */
  readonly int8Activations?: boolean;
}

export interface GraphContext {
  readonly g: GraphBuilder;
  readonly ckpt: Checkpoint;
  readonly config: ModelConfig;
  readonly options: GraphOptions;
  /** A W8ASpike checkpoint: spike-coded QuantLinear inputs and SWA q/k/v quantizers (./spike-coding.ts). */
  readonly spiking: boolean;
  /** [] int64 counts (zero spikes, all spikes) of each spike-coded linear input, summed into the graph's outputs. */
  readonly spikeCounts: { readonly zeros: string; readonly values: string }[];
  /** [1] int64 values (T is the constant 1 in the decode graph), built on first use. */
  readonly B: string;
  readonly T: string;
  /** The decode graph: every row brings one token (T = 1). */
  readonly singleToken: boolean;
  /** [B, T, d/2] float32 cos and sin of the chunk's RoPE angles (built, or declared as inputs, on first use). */
  ropeAngles(): { cos: string; sin: string };
  /** Reshape targets already built, keyed by their parts (so each dynamic shape is one Concat). */
  readonly shapeCache: Map<string, string>;
  /**
   * Additive attention mask [B, 1, T, P+T] (0 or −1e30) per attention kind, built (or declared as an
   * input) on first use. P is the kind's own past: the window layers' Pw when the model has a window
   * past (config.ts hasWindowPast), else the one past every attention layer reads.
   */
  attentionMask(kind: 'swa' | 'full'): string;
  /** The symbolic name of the past-slots dim an attention kind's past keys/values are declared with. */
  pastDim(kind: 'swa' | 'full'): string;
  /** [1] int64 −T, built on first use. */
  minusT(): string;
  /**
   * Step graph only (MoBA layers): the [B, T] int32 positions of the chunk's tokens, the [B, P] int32
   * positions of the past slots, and the [B, T] bool MOBA_SELECT input (declared on first use).
   */
  mobaInputs(): { readonly positions: string; readonly pastPositions: string; readonly select: string };
}

/**
 * A Reshape target from fixed dims (numbers; 0 keeps the input's dim at that index, as ONNX Reshape
 * reads it) and dynamic [1] int64 values (strings).
 */
export function shapeOf(ctx: GraphContext, parts: readonly (number | string)[]): string {
  const key = parts.join('|');
  const cached = ctx.shapeCache.get(key);
  if (cached !== undefined) return cached;
  const built = buildShape(ctx, parts);
  ctx.shapeCache.set(key, built);
  return built;
}

function buildShape(ctx: GraphContext, parts: readonly (number | string)[]): string {
  const pieces: string[] = [];
  let run: number[] = [];
  for (const p of parts) {
    if (typeof p === 'number') run.push(p);
    else {
      if (run.length > 0) pieces.push(ctx.g.i64(run));
      run = [];
      pieces.push(p);
    }
  }
  if (run.length > 0) pieces.push(ctx.g.i64(run));
  if (pieces.length === 1 && pieces[0] !== undefined) return pieces[0];
  return ctx.g.op('Concat', pieces, { axis: { kind: 'int', value: 0 } }, { name: 'Shape' });
}

export function reshape(ctx: GraphContext, x: string, parts: readonly (number | string)[]): string {
  return ctx.g.op('Reshape', [x, shapeOf(ctx, parts)]);
}

export function transpose(ctx: GraphContext, x: string, perm: readonly number[]): string {
  return ctx.g.op('Transpose', [x], { perm: { kind: 'ints', value: perm } });
}

/** Side of the square tiles matmulWeight transposes in (64 floats: a few cache lines per row). */
const TRANSPOSE_TILE = 64;

/** A row of the fused weight: checkpoint tensor `name` [rows, in], rows multiplied by `scale`. */
export interface WeightPart {
  readonly name: string;
  readonly rows: number;
  readonly scale?: number;
  /** Instead of a tensor, `rows` zero rows (a bias part with no checkpoint tensor). */
  readonly zeros?: boolean;
}

/** A linear layer's weight as the graph holds it: a float MatMul operand [in, out], or int8 blocks. */
export type LinearWeight =
  | { readonly kind: 'dense'; readonly value: string }
  | { readonly kind: 'quantized'; readonly names: QuantizedWeightNames; readonly inDim: number; readonly outDim: number };

/**
 * Adds a linear layer's weight built from checkpoint weights [rows_k, in] stacked along rows:
 * x [N, in] → [N, Σ rows] = concat_k(x Wkᵀ). Dense: the MatMul operand [in, Σ rows] (transposed).
 * int8/int4: the stacked [Σ rows, in] quantized for MatMulNBits, which reads W as [out, in].
 */
export function matmulWeight(ctx: GraphContext, graphName: string, parts: readonly WeightPart[], inDim: number): LinearWeight {
  const outDim = parts.reduce((a, p) => a + p.rows, 0);
  const stacked = (transposed: boolean): Float32Array => {
    const w = new Float32Array(inDim * outDim);
    let row0 = 0;
    for (const p of parts) {
      const s = p.scale ?? 1;
      const t = ctx.ckpt.tensor(p.name, [p.rows, inDim]).data;
      if (!transposed) {
        for (let r = 0; r < p.rows; r++) for (let i = 0; i < inDim; i++) w[(row0 + r) * inDim + i] = (t[r * inDim + i] ?? 0) * s;
      } else {
        // [rows, in] → columns row0… of [in, out], in tiles so that reads and writes both stay in cache.
        for (let r0 = 0; r0 < p.rows; r0 += TRANSPOSE_TILE) {
          const r1 = Math.min(p.rows, r0 + TRANSPOSE_TILE);
          for (let i0 = 0; i0 < inDim; i0 += TRANSPOSE_TILE) {
            const i1 = Math.min(inDim, i0 + TRANSPOSE_TILE);
            for (let i = i0; i < i1; i++) {
              const dst = i * outDim + row0;
              for (let r = r0; r < r1; r++) w[dst + r] = (t[r * inDim + i] ?? 0) * s;
            }
          }
        }
      }
      row0 += p.rows;
    }
    return w;
  };
  const bits = quantBits(ctx.options.weightDtype);
  if (bits !== null) {
    return { kind: 'quantized', names: ctx.g.quantizedWeight(graphName, outDim, inDim, bits, () => stacked(false)), inDim, outDim };
  }
  return { kind: 'dense', value: ctx.g.weight(graphName, [inDim, outDim], () => stacked(true)) };
}

/** Adds a 1-D vector made of checkpoint vectors (or zeros) concatenated, each times its scale. */
export function vectorWeight(ctx: GraphContext, graphName: string, parts: readonly WeightPart[]): string {
  const len = parts.reduce((a, p) => a + p.rows, 0);
  return ctx.g.weight(graphName, [len], () => {
    const v = new Float32Array(len);
    let off = 0;
    for (const p of parts) {
      if (p.zeros !== true) {
        const s = p.scale ?? 1;
        const t = ctx.ckpt.tensor(p.name, [p.rows]).data;
        for (let i = 0; i < p.rows; i++) v[off + i] = (t[i] ?? 0) * s;
      }
      off += p.rows;
    }
    return v;
  });
}

/**
 * x [..., in] @ W + b: a MatMul and an Add, or one MatMulNBits, whose optional bias input (after the
 * absent zero points and g_idx) adds b in the kernel: no separate Add node per biased projection.
 */
export function linear(ctx: GraphContext, x: string, weight: LinearWeight, bias: string | null, name: string): string {
  return ctx.g.scope(name, () => {
    if (weight.kind === 'dense') {
      const y = ctx.g.op('MatMul', [x, weight.value]);
      return bias === null ? y : ctx.g.op('Add', [y, bias]);
    }
    const { codes, scales, bits } = weight.names;
    return ctx.g.op('MatMulNBits', bias === null ? [x, codes, scales] : [x, codes, scales, '', '', bias], {
      K: int(weight.inDim),
      N: int(weight.outDim),
      bits: int(bits),
      block_size: int(QUANT_BLOCK),
      accuracy_level: int(ctx.options.int8Activations === false ? 0 : 4),
    }, { domain: 'com.microsoft' });
  });
}

/** The time axis padded to whole sub-chunks of C (the chunked recurrences of gla-layer.ts and gdn-layer.ts). */
export interface ChunkPadding {
  /** [1] int64 Nc = ⌈T/C⌉ and Tp = Nc·C. */
  readonly nc: string;
  readonly tp: string;
  /** x of rank `rank` with Tp − T zeros appended on `axis`. */
  pad(x: string, rank: number, axis: number): string;
}

export function chunkPadding(ctx: GraphContext, C: number): ChunkPadding {
  const { g } = ctx;
  const nc = g.op('Div', [g.op('Add', [ctx.T, g.i64([C - 1])]), g.i64([C])]);
  const tp = g.op('Mul', [nc, g.i64([C])]);
  const padT = g.op('Sub', [tp, ctx.T]);
  return {
    nc,
    tp,
    pad(x, rank, axis) {
      const parts: (number | string)[] = Array.from({ length: 2 * rank }, () => 0);
      parts[rank + axis] = padT;
      return g.op('Pad', [x, shapeOf(ctx, parts)]);
    },
  };
}
