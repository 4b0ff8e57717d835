// What every part of the model graph shares while it is being built: the builder, the checkpoint,
// the options, the dynamic dims (B, T as [1] int64 values) and weight helpers that turn
// checkpoint tensors [out, in] into MatMul operands [in, out] (optionally several fused along out).
import type { Checkpoint } from '../checkpoint.ts';
import type { ModelConfig } from '../config.ts';
import type { GraphBuilder, WeightDtype } from './graph-builder.ts';

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
}

export interface GraphContext {
  readonly g: GraphBuilder;
  readonly ckpt: Checkpoint;
  readonly config: ModelConfig;
  readonly options: GraphOptions;
  /** [1] int64 values. */
  readonly B: string;
  readonly T: string;
  /** [B, T] int32 positions (graph input). */
  readonly positions: string;
  /** Reshape targets already built, keyed by their parts (so each dynamic shape is one Concat). */
  readonly shapeCache: Map<string, string>;
  /** Additive attention mask [B, 1, T, P+T] (0 or −1e30) per attention kind, built on first use. */
  attentionMask(kind: 'swa' | 'full'): string;
  /** [1] int64 −T, built on first use. */
  minusT(): string;
}

/** A Reshape target from fixed dims (numbers) and dynamic [1] int64 values (strings). */
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

/** A row of the fused weight: checkpoint tensor `name` [rows, in], rows multiplied by `scale`. */
export interface WeightPart {
  readonly name: string;
  readonly rows: number;
  readonly scale?: number;
  /** Instead of a tensor, `rows` zero rows (a bias part with no checkpoint tensor). */
  readonly zeros?: boolean;
}

/**
 * Adds the MatMul operand [in, Σ rows] built from checkpoint weights [rows_k, in] stacked along rows
 * and transposed: x [N, in] @ W → [N, Σ rows] = concat_k(x Wkᵀ).
 */
export function matmulWeight(ctx: GraphContext, graphName: string, parts: readonly WeightPart[], inDim: number): string {
  const outDim = parts.reduce((a, p) => a + p.rows, 0);
  return ctx.g.weight(graphName, [inDim, outDim], () => {
    const w = new Float32Array(inDim * outDim);
    let col = 0;
    for (const p of parts) {
      const s = p.scale ?? 1;
      const t = ctx.ckpt.tensor(p.name, [p.rows, inDim]).data;
      for (let r = 0; r < p.rows; r++) {
        const src = r * inDim;
        for (let i = 0; i < inDim; i++) w[i * outDim + col + r] = (t[src + i] ?? 0) * s;
      }
      col += p.rows;
    }
    return w;
  });
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

/** x [..., in] @ W + b: one MatMul and an Add. */
export function linear(ctx: GraphContext, x: string, weight: string, bias: string | null, name: string): string {
  return ctx.g.scope(name, () => {
    const y = ctx.g.op('MatMul', [x, weight]);
    return bias === null ? y : ctx.g.op('Add', [y, bias]);
  });
}
