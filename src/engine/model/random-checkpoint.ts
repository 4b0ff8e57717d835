// A Checkpoint with deterministic random weights, generated tensor by tensor on demand (no files):
// for tests and for benchmarks at any size, 7B shape included. Each tensor's values depend only on
// (seed, tensor name), so reading tensors in any order, any number of times, gives the same numbers.
//
// Init (keeps activations O(1) through the pre-norm residual stream):
//   weight [out, in]      ~ N(0, (scale/√in)²)        e.g. 0.0167 at in=3584, 0.125 at in=64
//   embeddings [V, D]     ~ N(0, (0.1·scale)²)
//   bias                  ~ N(0, (0.05·scale)²)
//   norm weights          ~ 1 + N(0, 0.1²)   (zero-centred norms of Qwen3.5, which scale by 1 + w: N(0, 0.1²))
//   GDN conv1d [C, 1, K]  ~ N(0, (scale/√K)²);  A_log, dt_bias ~ N(0, (scale/√Hv)²)
// (N is a bell-shaped Irwin–Hall approximation; see fillNormal.)
import { createHash } from 'node:crypto';
import { ModelLoadError } from '../errors.ts';
import type { Tensor32 } from './checkpoint.ts';
import type { ModelConfig } from './config.ts';
import { checkShape, type ShapedCheckpoint } from './hf-checkpoint.ts';
import { countParameters, EMBEDDINGS, LM_HEAD, modelTensorSpecs, numElements, type GkLayout } from './tensor-names.ts';

export interface RandomCheckpointOptions {
  readonly seed: number;
  readonly gkLayout: GkLayout;
  /** Multiplies the spread of weights, embeddings and biases (not norms). Default 1. */
  readonly scale?: number;
}

/** FNV-1a over the UTF-16 code units of a string. */
function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** murmur3's 32-bit finaliser: spreads every input bit over the output. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Fills `out` with a bell-shaped N(mean, std²) approximation: Irwin–Hall of 4 uniforms (the four
 * 16-bit halves of two xorshift32 draws), centred and scaled to unit variance (range ±2√3·std).
 * Seeded by (seed, name). ~5 ns per element, so a whole 7B-shaped model takes well under a minute.
 */
function fillNormal(out: Float32Array, seed: number, name: string, mean: number, std: number): void {
  let x = mix32(hashName(name) ^ mix32(seed >>> 0)) | 0;
  if (x === 0) x = 0x2545f491;
  for (let i = 0; i < 8; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
  }
  // Σ of 4 uniforms u = (r + 0.5)/65536 has mean 2 and variance 4/12 (up to 2^-32): (Σ − 2)·√3 ~ N(0, 1)
  const k = (std * Math.sqrt(3)) / 65536;
  const c = mean - 2 * std * Math.sqrt(3) + 2 * k;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const r1 = x >>> 0;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const r2 = x >>> 0;
    out[i] = c + k * ((r1 & 0xffff) + (r1 >>> 16) + (r2 & 0xffff) + (r2 >>> 16));
  }
}

/** Mean and standard deviation of a tensor's init, from its name and shape. */
function initOf(name: string, shape: readonly number[], scale: number, zeroCentredNorms: boolean): { mean: number; std: number } {
  // The GDN's gated norm (linear_attn.norm) multiplies by w itself, even in zero-centred models.
  if (name.endsWith('norm.weight')) return { mean: zeroCentredNorms && !name.endsWith('linear_attn.norm.weight') ? 0 : 1, std: 0.1 };
  if (name.endsWith('.bias')) return { mean: 0, std: 0.05 * scale };
  if (name === EMBEDDINGS) return { mean: 0, std: 0.1 * scale };
  const fanIn = shape[shape.length - 1] ?? 1;
  return { mean: 0, std: scale / Math.sqrt(fanIn) };
}

/** Random weights for `config`; lm_head is the embeddings when `config.tieWordEmbeddings`. */
export function randomCheckpoint(config: ModelConfig, options: RandomCheckpointOptions): ShapedCheckpoint {
  const { seed, gkLayout } = options;
  const scale = options.scale ?? 1;
  const shapes = new Map<string, readonly number[]>();
  for (const s of modelTensorSpecs(config, gkLayout)) shapes.set(s.name, s.shape);
  const source = (name: string): string => (name === LM_HEAD && config.tieWordEmbeddings ? EMBEDDINGS : name);
  const hash = createHash('sha256')
    .update(JSON.stringify({ kind: 'random-checkpoint-v1', config, seed, gkLayout, scale }))
    .digest('hex');
  return {
    config,
    hash,
    gkLayout,
    numParameters: countParameters(config, gkLayout),
    has: (name) => shapes.has(name),
    shapeOf: (name) => shapes.get(name),
    tensor(name: string, expectShape?: readonly number[]): Tensor32 {
      const shape = shapes.get(name);
      if (shape === undefined) throw new ModelLoadError(`random checkpoint: tensor "${name}" is missing`);
      if (expectShape !== undefined) checkShape(name, shape, expectShape);
      const src = source(name);
      const data = new Float32Array(numElements(shape));
      const { mean, std } = initOf(src, shape, scale, config.zeroCentredNorms);
      fillNormal(data, seed, src, mean, std);
      return { shape, data };
    },
  };
}
