// Model configuration: reads a Hugging Face `config.json` of the SpikingBrain family (`gla_swa`),
// a Qwen2 checkpoint (`qwen2`, every layer full attention), a Qwen3.5 text model (`qwen3_5_text`,
// or the multimodal `qwen3_5` wrapper's `text_config`; Gated DeltaNet + gated full attention, parsed
// in ./qwen3_5-config.ts) or SpikingBrain 2.0 (`sse_swa_moba`: hybrid SSE-GDN + window, MoBA and full
// layers, parsed in ./spikingbrain2-config.ts) into one frozen, validated shape.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModelLoadError } from '../errors.ts';
import { parseQwen3_5Config } from './qwen3_5-config.ts';
import { parseSpikingBrain2Config, spikingBrain2ModelConfig, type SseConfig } from './spikingbrain2-config.ts';

/**
 * What a layer's token mixer is: gated linear attention, sliding-window or full softmax attention, Gated
 * DeltaNet; SpikingBrain 2.0's hybrid (sparse state expansion over Gated DeltaNet plus a sliding-window
 * softmax branch, `sse_swa`) and MoBA layers (full attention over the chunks a query selects, `moba`).
 */
export type LayerKind = 'gla' | 'swa' | 'full' | 'gdn' | 'sse_swa' | 'moba';

/** MoBA's block selection (SpikingBrain 2.0's MoBA layers; docs/models/spikingbrain2.md). */
export interface MobaConfig {
  /** C: keys are cut in chunks of C positions from position 0. */
  readonly chunkTokens: number;
  /** K: a prompt token attends its own chunk plus the top K − 1 earlier chunks by q · mean(k). */
  readonly topk: number;
}

/** Gated DeltaNet dimensions (Qwen3.5's `linear_*` fields); one set for every GDN layer. */
export interface GdnConfig {
  readonly numKeyHeads: number; // Hk (query and key heads)
  readonly numValueHeads: number; // Hv, a multiple of Hk: value head h reads key head ⌊h/(Hv/Hk)⌋
  readonly keyHeadDim: number; // dk
  readonly valueHeadDim: number; // dv
  readonly convKernel: number; // K of the causal depthwise conv1d over q, k, v
}

/** How the softmax-attention layers (SWA or full) are built; the gla_swa/qwen2 form is all false. */
export interface AttentionForm {
  /** q/k/v projections carry biases. */
  readonly bias: boolean;
  /** q_proj also produces a per-head output gate: o ← o ⊙ sigmoid(gate) before o_proj (Qwen3.5). */
  readonly outputGate: boolean;
  /** Per-head RMSNorm of q and k over d before RoPE (q_norm, k_norm). */
  readonly qkNorm: boolean;
  /** Leading dims of each head that RoPE rotates (rotate-half within them); d for full rotary. */
  readonly rotaryDim: number;
}

export interface ModelConfig {
  readonly modelType: 'gla_swa' | 'qwen2' | 'qwen3_5' | 'sse_swa_moba';
  readonly vocabSize: number;
  readonly hiddenSize: number; // D
  readonly numLayers: number; // L
  readonly numHeads: number; // H (query heads of the attention layers; SpikingBrain 2.0's hybrid window branch has sse.numHeads)
  readonly numKvHeads: number; // Hkv
  /** d of the attention layers: D / H, or an explicit `head_dim` (Qwen3.5: 256). */
  readonly headDim: number;
  readonly intermediateSize: number; // F
  /**
   * W: a query at p attends keys p−W…p inclusive; null for full attention. SpikingBrain 2.0's window
   * branch attends attn.window_size keys including the query, so its W here is window_size − 1.
   */
  readonly slidingWindow: number | null;
  readonly ropeTheta: number;
  readonly normEps: number;
  readonly tieWordEmbeddings: boolean;
  /** Kind of each layer, index = layer number. */
  readonly layerKinds: readonly LayerKind[];
  readonly maxPositionEmbeddings: number | null;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly attention: AttentionForm;
  /** Gated DeltaNet dimensions; null when the model has no GDN layer. */
  readonly gdn: GdnConfig | null;
  /**
   * RMSNorms scale by (1 + w) instead of w (Qwen3.5's zero-centred Qwen3_5RMSNorm: input, post-attention,
   * q/k and final norms; not the GDN's gated norm).
   */
  readonly zeroCentredNorms: boolean;
  /** SpikingBrain 2.0's hybrid layers (SSE over Gated DeltaNet); null when the model has none. */
  readonly sse: SseConfig | null;
  /** SpikingBrain 2.0's MoBA layers; null when the model has none. */
  readonly moba: MobaConfig | null;
}

/** The attention form of gla_swa and qwen2: biases, no gate, no q/k norms, full rotary. */
export function plainAttentionForm(headDim: number): AttentionForm {
  return Object.freeze({ bias: true, outputGate: false, qkNorm: false, rotaryDim: headDim });
}

export type Json = Record<string, unknown>;

export function intField(raw: Json, name: string, min = 1): number {
  const v = raw[name];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new ModelLoadError(`config.json: field "${name}" must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function numField(raw: Json, name: string, fallback: number): number {
  const v = raw[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ModelLoadError(`config.json: field "${name}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/** Validates a parsed config.json object. Throws ModelLoadError naming the offending field. */
export function parseModelConfig(raw: Json): ModelConfig {
  const modelType = raw['model_type'];
  if (modelType === 'qwen3_5' || modelType === 'qwen3_5_text' || modelType === 'qwen3_5_moe' || modelType === 'qwen3_5_moe_text') {
    return parseQwen3_5Config(raw);
  }
  if (modelType === 'sse_swa_moba') return spikingBrain2ModelConfig(parseSpikingBrain2Config(raw));
  if (modelType !== 'gla_swa' && modelType !== 'qwen2') {
    throw new ModelLoadError(
      `config.json: field "model_type" is ${JSON.stringify(modelType)}; supported: "gla_swa", "qwen2", "qwen3_5_text", "qwen3_5"`,
    );
  }
  if (raw['use_short_conv'] === true) {
    throw new ModelLoadError('config.json: field "use_short_conv" is true; short convolutions are not supported');
  }
  const vocabSize = intField(raw, 'vocab_size');
  const hiddenSize = intField(raw, 'hidden_size');
  const numLayers = intField(raw, 'num_hidden_layers');
  const numHeads = intField(raw, 'num_attention_heads');
  const numKvHeads = raw['num_key_value_heads'] === undefined ? numHeads : intField(raw, 'num_key_value_heads');
  const intermediateSize = intField(raw, 'intermediate_size');
  if (hiddenSize % numHeads !== 0) {
    throw new ModelLoadError(`config.json: "hidden_size" ${hiddenSize} is not divisible by "num_attention_heads" ${numHeads}`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ModelLoadError(`config.json: "num_attention_heads" ${numHeads} is not divisible by "num_key_value_heads" ${numKvHeads}`);
  }
  const headDim = hiddenSize / numHeads;
  if (headDim % 2 !== 0) throw new ModelLoadError(`config.json: head dimension ${headDim} must be even for RoPE`);

  let layerKinds: LayerKind[];
  let slidingWindow: number | null = null;
  const windowRaw = raw['sliding_window'];
  if (modelType === 'qwen2') {
    // Qwen2 may declare a window but only uses it with use_sliding_window: true, which we do not serve.
    if (raw['use_sliding_window'] === true) {
      throw new ModelLoadError('config.json: field "use_sliding_window" is true for qwen2; not supported');
    }
    layerKinds = Array.from({ length: numLayers }, () => 'full' as const);
  } else {
    const attnRaw = raw['attn_layers'];
    let attnLayers: number[];
    if (attnRaw === undefined || attnRaw === null) {
      attnLayers = Array.from({ length: numLayers }, (_, i) => i).filter((i) => i % 2 === 1);
    } else if (Array.isArray(attnRaw) && attnRaw.every((x) => Number.isInteger(x) && x >= 0 && x < numLayers)) {
      attnLayers = attnRaw as number[];
    } else {
      throw new ModelLoadError(`config.json: field "attn_layers" must list layer indices in [0, ${numLayers}), got ${JSON.stringify(attnRaw)}`);
    }
    if (windowRaw === null || windowRaw === undefined) {
      slidingWindow = null;
    } else {
      slidingWindow = intField(raw, 'sliding_window');
    }
    const attnKind: LayerKind = slidingWindow === null ? 'full' : 'swa';
    const attnSet = new Set(attnLayers);
    layerKinds = Array.from({ length: numLayers }, (_, i) => (attnSet.has(i) ? attnKind : 'gla'));
  }
  const maxPos = raw['max_position_embeddings'];
  return Object.freeze({
    modelType,
    vocabSize,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize,
    slidingWindow,
    ropeTheta: numField(raw, 'rope_theta', 10000),
    normEps: numField(raw, modelType === 'qwen2' ? 'rms_norm_eps' : 'norm_eps', 1e-6),
    tieWordEmbeddings: raw['tie_word_embeddings'] === true,
    layerKinds: Object.freeze(layerKinds),
    maxPositionEmbeddings: typeof maxPos === 'number' ? maxPos : null,
    bosTokenId: typeof raw['bos_token_id'] === 'number' ? raw['bos_token_id'] : null,
    eosTokenIds: Object.freeze(idList(raw['eos_token_id'])),
    attention: plainAttentionForm(headDim),
    gdn: null,
    zeroCentredNorms: false,
    sse: null,
    moba: null,
  });
}

/** Reads `config.json` (and `generation_config.json`'s eos ids, if present) from a checkpoint directory. */
export function loadModelConfig(dir: string): ModelConfig {
  let raw: Json;
  try {
    raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Json;
  } catch (err) {
    throw new ModelLoadError(`cannot read ${join(dir, 'config.json')}: ${(err as Error).message}`);
  }
  const config = parseModelConfig(raw);
  try {
    const gen = JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8')) as Json;
    const ids = idList(gen['eos_token_id']);
    if (ids.length > 0) {
      return Object.freeze({ ...config, eosTokenIds: Object.freeze([...new Set([...config.eosTokenIds, ...ids])]) });
    }
  } catch {
    // generation_config.json is optional.
  }
  return config;
}

/** Indices of layers of one kind, in order. */
export function layersOfKind(config: ModelConfig, kind: LayerKind): number[] {
  return config.layerKinds.flatMap((k, i) => (k === kind ? [i] : []));
}

/** Bytes of recurrent GLA state one sequence holds (fp32): Hkv·d·d per GLA layer. */
export function glaStateBytesPerSequence(config: ModelConfig): number {
  return layersOfKind(config, 'gla').length * config.numKvHeads * config.headDim * config.headDim * 4;
}

/** Layers that keep keys/values: sliding-window or full softmax attention, SpikingBrain 2.0's hybrid (its window branch) and MoBA. */
export function isAttentionKind(kind: LayerKind): kind is 'swa' | 'full' | 'sse_swa' | 'moba' {
  return kind === 'swa' || kind === 'full' || kind === 'sse_swa' || kind === 'moba';
}

/** Layers whose keys/values live for the last W positions only (window pages): sliding-window attention and the hybrid's window branch. */
export function isWindowKind(kind: LayerKind): kind is 'swa' | 'sse_swa' {
  return kind === 'swa' || kind === 'sse_swa';
}

/** Layers that keep every position's keys/values (growing pages): full attention and MoBA. */
export function isGrowingKind(kind: LayerKind): kind is 'full' | 'moba' {
  return kind === 'full' || kind === 'moba';
}

/**
 * The model has both window and growing attention layers (SpikingBrain 2.0):
 * its window layers get a past of their own in the graph I/O (io-names.ts PAST_POSITIONS_WINDOW), of
 * about W slots, instead of the growing layers' context-sized one.
 */
export function hasWindowPast(config: ModelConfig): boolean {
  return config.layerKinds.some(isWindowKind) && config.layerKinds.some(isGrowingKind);
}

/** Bytes of keys+values one token occupies across all attention layers (fp32). */
export function kvBytesPerToken(config: ModelConfig): number {
  const attn = config.layerKinds.filter(isAttentionKind).length;
  return attn * 2 * config.numKvHeads * config.headDim * 4;
}
