// The contract between checkpoint readers (safetensors files, random weights) and their users
// (the ONNX graph builder, `inspect`, the float64 reference in the tests).
import type { ModelConfig } from './config.ts';

/** A float32 tensor materialised from a checkpoint; `data.length` is the product of `shape`. */
export interface Tensor32 {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * A loaded checkpoint. Tensors are read one at a time on demand (never the whole model twice in memory).
 * Names are the canonical SpikingBrain (gla_swa) names, `model.layers.{i}.attn.q_proj.weight` …;
 * readers of other layouts (qwen2's `self_attn`, `input_layernorm`, …) map theirs onto these.
 */
export interface Checkpoint {
  readonly config: ModelConfig;
  /** Stable identity of the weights, for the built-model cache (content-derived, not a path). */
  readonly hash: string;
  has(name: string): boolean;
  /** Throws ModelLoadError naming the tensor when it is missing or its shape differs from `expectShape`. */
  tensor(name: string, expectShape?: readonly number[]): Tensor32;
  /** Number of parameters (elements) over all tensors. */
  readonly numParameters: number;
}
