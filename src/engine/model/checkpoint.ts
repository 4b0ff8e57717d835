// The contract between checkpoint readers (safetensors files, random weights) and their users
// (the ONNX graph builder, `inspect`, the float64 reference in the tests).
import type { ModelConfig } from './config.ts';

/** A float32 tensor materialised from a checkpoint; `data.length` is the product of `shape`. */
export interface Tensor32 {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface CheckpointFiles {
  readonly configPath: string;
  /** Weight files in shard order. */
  readonly weightFiles: readonly string[];
}

/**
 * A loaded checkpoint. Tensors are read one at a time on demand (never the whole model twice in memory).
 * Names are the canonical SpikingBrain (gla_swa) names, `model.layers.{i}.attn.q_proj.weight` …;
 * readers of other layouts (qwen2's `self_attn`, `input_layernorm`, …) map theirs onto these.
 */
export interface Checkpoint {
  readonly config: ModelConfig;
  /**
   * Fingerprint of the weights. Content-derived for checkpoints that are not files (random weights);
   * for a checkpoint on disk it covers config, file names, sizes and headers only, and `sourceFiles` is
   * what names the model (weights-identity.ts hashes their whole content).
   */
  readonly hash: string;
  /** The files a checkpoint on disk is read from; the built-model cache and prefix snapshots are named by their content. */
  readonly sourceFiles?: CheckpointFiles;
  has(name: string): boolean;
  /** Throws ModelLoadError naming the tensor when it is missing or its shape differs from `expectShape`. */
  tensor(name: string, expectShape?: readonly number[]): Tensor32;
  /** Number of parameters (elements) over all tensors. */
  readonly numParameters: number;
}
