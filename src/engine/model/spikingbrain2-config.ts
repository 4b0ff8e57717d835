// SpikingBrain 2.0: `config.json` of `SSESWAMoBAForCausalLM` (`model_type: sse_swa_moba`) into a typed,
// validated SpikingBrain2Config. Defaults are those of the official SSESWAMoBAConfig
// (BICLab/SpikingBrain2.0 spb2/configuration_sse_swa_moba.py); docs/models/spikingbrain2.md pins every
// point and its source. spikingBrain2ModelConfig maps it onto the engine's ModelConfig (layer kinds
// sse_swa / moba / full) for the graphs; serving is still refused (the inference worker says so in one
// line) until the cache serves these layers.
//
//   layer i: `attn.full_layers` ∋ i → full attention; else `attn.layers` ∋ i → MoBA; else hybrid
//            (SSE over Gated DeltaNet + a sliding-window softmax branch in the same layer)
//   SSE (hybrid): num_heads heads of head_dim for q, k and v (no GQA: num_v_heads must equal num_heads),
//            num_sparse_partition partitions, top-num_writer routing (num_reader must be equal)
//   attention (MoBA, full, and the hybrid window branch's kv heads, norms, biases, RoPE): `attn.*`
//
// Refused with one line each, because no released config uses them and the official code either
// asserts them away or computes them with a kernel this project has no reference for:
// linear_attn_type "gla", use_short_conv, use_output_gate, expand_v ≠ 1, num_reader ≠ num_writer,
// sse_implementation "mask", rope_scaling, a hybrid layer without attn.window_size.
import { ModelLoadError } from '../errors.ts';
import { idList, intField, numField, type Json, type LayerKind, type ModelConfig } from './config.ts';

/** What a layer's token mixer is. */
export type SpikingBrain2LayerKind = 'hybrid' | 'moba' | 'full';

/** Sparse state expansion over Gated DeltaNet (the hybrid layers' linear branch, `SSEGDNH`). */
export interface SseConfig {
  /** H: heads of q, k and v (each head_dim wide); also the query heads of the window branch. */
  readonly numHeads: number;
  /** N: partition states per head, besides the shared one. */
  readonly numPartitions: number;
  /** k: partitions each token writes and reads (top-k of the router's softmax). */
  readonly numWriters: number;
  /** Activation of q and k before the delta rule (`sse_qk_relu`: relu, else silu). */
  readonly qkActivation: 'silu' | 'relu';
  /** `allow_neg_eigval`: β = 2·sigmoid(b) instead of sigmoid(b). */
  readonly allowNegEigval: boolean;
}

/** The softmax-attention parts (`attn.*`): MoBA and full layers, and the hybrid layers' window branch. */
export interface Spb2AttentionConfig {
  /** Query heads of the MoBA and full layers (the window branch has SseConfig.numHeads). */
  readonly numHeads: number;
  /** Key/value heads of every softmax attention (MoBA, full, window branch). */
  readonly numKvHeads: number;
  /** Per-head RMSNorm of q and k over head_dim, before RoPE. */
  readonly qkNorm: boolean;
  /** q/k/v projections of the softmax attentions carry biases (never the SSE projections). */
  readonly bias: boolean;
  readonly ropeTheta: number;
  /** W: a window-branch query attends the W keys ending at its own position (flash-attn window (W−1, 0)). */
  readonly windowTokens: number;
  /** C: MoBA key chunk length. */
  readonly mobaChunkTokens: number;
  /** MoBA: a query attends its own chunk plus the top (topk − 1) earlier chunks. */
  readonly mobaTopk: number;
}

export interface SpikingBrain2Config {
  readonly modelType: 'sse_swa_moba';
  readonly vocabSize: number;
  readonly hiddenSize: number; // D
  readonly numLayers: number; // L
  /** d: head width of every head (SSE q/k/v, window branch, MoBA, full). */
  readonly headDim: number;
  readonly intermediateSize: number; // F
  readonly normEps: number;
  readonly tieWordEmbeddings: boolean;
  readonly maxPositionEmbeddings: number | null;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** Kind of each layer, index = layer number. */
  readonly layerKinds: readonly SpikingBrain2LayerKind[];
  readonly sse: SseConfig;
  readonly attention: Spb2AttentionConfig;
}

/** SSESWAMoBAConfig defaults (configuration_sse_swa_moba.py) and the attn dict's (its __init__). */
const DEFAULTS = {
  headDim: 256,
  numHeads: 8,
  numPartitions: 4,
  numWriters: 2,
  hiddenRatio: 4,
  normEps: 1e-6,
  mobaChunkTokens: 1024,
  mobaTopk: 4,
  ropeTheta: 10000,
};

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An integer field with a default (absent or null → the default). */
function intOr(raw: Json, name: string, fallback: number, where = ''): number {
  if (raw[name] === undefined || raw[name] === null) return fallback;
  try {
    return intField(raw, name);
  } catch (err) {
    throw where === '' ? err : new ModelLoadError((err as Error).message.replace(`field "${name}"`, `field "${where}${name}"`));
  }
}

function refuse(what: string): never {
  throw new ModelLoadError(`config.json: ${what}; not supported for sse_swa_moba (no released SpikingBrain 2.0 config uses it)`);
}

function layerList(attn: Json, name: string, numLayers: number): number[] {
  const v = attn[name];
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0 && x < numLayers)) {
    throw new ModelLoadError(`config.json: field "attn.${name}" must list layer indices in [0, ${numLayers}), got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

/**
 * fla's GatedMLP width when `intermediate_size` is null: int(D · hidden_ratio · 2/3) rounded up to a
 * multiple of 256 (fla/modules/mlp.py).
 */
export function defaultIntermediateSize(hiddenSize: number, hiddenRatio: number): number {
  const f = Math.trunc((hiddenSize * hiddenRatio * 2) / 3);
  return 256 * Math.ceil(f / 256);
}

/** Parses and validates an sse_swa_moba config. Throws ModelLoadError naming the offending field. */
export function parseSpikingBrain2Config(raw: Json): SpikingBrain2Config {
  if (raw['model_type'] !== 'sse_swa_moba') throw new ModelLoadError(`config.json: model_type ${JSON.stringify(raw['model_type'])} is not sse_swa_moba`);
  const linear = raw['linear_attn_type'] ?? 'gdn';
  if (linear !== 'gdn') refuse(`"linear_attn_type" is ${JSON.stringify(linear)} (only "gdn", the released hybrid SSE-GDN layers)`);
  if (raw['use_short_conv'] === true) refuse('"use_short_conv" is true');
  // SSESWAMoBAConfig defaults use_output_gate to true; the released configs set it false.
  if (raw['use_output_gate'] !== false) refuse(`"use_output_gate" is ${JSON.stringify(raw['use_output_gate'] ?? 'absent (default true)')}`);
  if (raw['expand_v'] !== undefined && raw['expand_v'] !== null && raw['expand_v'] !== 1) refuse(`"expand_v" is ${JSON.stringify(raw['expand_v'])} (the official layer asserts 1)`);
  const impl = raw['sse_implementation'] ?? 'varlen';
  if (impl !== 'varlen') refuse(`"sse_implementation" is ${JSON.stringify(impl)} (only "varlen")`);
  if (raw['rope_scaling'] !== undefined && raw['rope_scaling'] !== null) refuse(`"rope_scaling" is ${JSON.stringify(raw['rope_scaling'])}`);
  const act = raw['hidden_act'] ?? 'swish';
  if (act !== 'swish' && act !== 'silu') throw new ModelLoadError(`config.json: "hidden_act" is ${JSON.stringify(act)}; sse_swa_moba supports "swish"`);

  const vocabSize = intField(raw, 'vocab_size');
  const hiddenSize = intField(raw, 'hidden_size');
  const numLayers = intField(raw, 'num_hidden_layers');
  const headDim = intOr(raw, 'head_dim', DEFAULTS.headDim);
  if (headDim % 2 !== 0) throw new ModelLoadError(`config.json: "head_dim" ${headDim} must be even for RoPE`);
  const numHeads = intOr(raw, 'num_heads', DEFAULTS.numHeads);
  const numVHeads = intOr(raw, 'num_v_heads', numHeads);
  // SSEGDNH builds every SSE projection with num_heads heads and ignores num_v_heads; only equal counts
  // mean the same model in the official HF code and its vLLM plugin.
  if (numVHeads !== numHeads) refuse(`"num_v_heads" ${numVHeads} differs from "num_heads" ${numHeads}`);
  const numPartitions = intOr(raw, 'num_sparse_partition', DEFAULTS.numPartitions);
  const numWriters = intOr(raw, 'num_writer', DEFAULTS.numWriters);
  const numReaders = intOr(raw, 'num_reader', DEFAULTS.numWriters);
  if (numReaders !== numWriters) refuse(`"num_reader" ${numReaders} differs from "num_writer" ${numWriters} (the varlen SSE asserts them equal)`);
  if (numWriters >= numPartitions) {
    throw new ModelLoadError(`config.json: "num_writer" ${numWriters} must be less than "num_sparse_partition" ${numPartitions}`);
  }

  const attn = raw['attn'];
  if (!isObject(attn)) throw new ModelLoadError('config.json: sse_swa_moba needs an object "attn" (the softmax-attention layers and the window branch)');
  const attnLayers = new Set(layerList(attn, 'layers', numLayers));
  const fullLayers = new Set(layerList(attn, 'full_layers', numLayers));
  for (const i of fullLayers) {
    if (!attnLayers.has(i)) throw new ModelLoadError(`config.json: "attn.full_layers" lists layer ${i}, which is not in "attn.layers"`);
  }
  const attnHeads = intField(attn, 'num_heads');
  const kvHeads = intOr(attn, 'num_kv_heads', attnHeads, 'attn.');
  for (const [what, heads] of [['attn.num_heads', attnHeads], ['num_heads', numHeads]] as const) {
    if (heads % kvHeads !== 0) throw new ModelLoadError(`config.json: "${what}" ${heads} is not divisible by "attn.num_kv_heads" ${kvHeads}`);
  }
  const layerKinds = Array.from({ length: numLayers }, (_, i): SpikingBrain2LayerKind =>
    fullLayers.has(i) ? 'full' : attnLayers.has(i) ? 'moba' : 'hybrid',
  );
  const windowRaw = attn['window_size'];
  if (layerKinds.includes('hybrid') && (windowRaw === undefined || windowRaw === null)) {
    refuse('"attn.window_size" is absent with hybrid layers (their window branch would attend the whole context)');
  }
  const windowTokens = windowRaw === undefined || windowRaw === null ? 0 : intOr(attn, 'window_size', 0, 'attn.');

  const ratio = typeof raw['hidden_ratio'] === 'number' ? raw['hidden_ratio'] : DEFAULTS.hiddenRatio;
  const intermediateSize =
    raw['intermediate_size'] === undefined || raw['intermediate_size'] === null
      ? defaultIntermediateSize(hiddenSize, ratio)
      : intField(raw, 'intermediate_size');
  const maxPos = raw['max_position_embeddings'];
  return Object.freeze({
    modelType: 'sse_swa_moba',
    vocabSize,
    hiddenSize,
    numLayers,
    headDim,
    intermediateSize,
    normEps: numField(raw, 'norm_eps', DEFAULTS.normEps),
    tieWordEmbeddings: raw['tie_word_embeddings'] === true,
    maxPositionEmbeddings: typeof maxPos === 'number' ? maxPos : null,
    bosTokenId: typeof raw['bos_token_id'] === 'number' ? raw['bos_token_id'] : null,
    eosTokenIds: Object.freeze(idList(raw['eos_token_id'])),
    layerKinds: Object.freeze(layerKinds),
    sse: Object.freeze({
      numHeads,
      numPartitions,
      numWriters,
      qkActivation: raw['sse_qk_relu'] === true ? 'relu' : 'silu',
      allowNegEigval: raw['allow_neg_eigval'] === true,
    }),
    attention: Object.freeze({
      numHeads: attnHeads,
      numKvHeads: kvHeads,
      qkNorm: attn['qk_norm'] === true,
      bias: attn['qkv_bias'] === true,
      ropeTheta: numField(attn, 'rope_theta', DEFAULTS.ropeTheta),
      windowTokens,
      mobaChunkTokens: intOr(attn, 'moba_chunk_size', DEFAULTS.mobaChunkTokens, 'attn.'),
      mobaTopk: intOr(attn, 'moba_topk', DEFAULTS.mobaTopk, 'attn.'),
    }),
  });
}

/**
 * The engine's view of a SpikingBrain 2.0 config: hybrid layers are `sse_swa`, MoBA layers `moba`, full
 * layers `full`; numHeads is attn.num_heads (MoBA and full layers), the window branch's query heads are
 * sse.numHeads. The window branch attends attn.window_size = W keys including the query (flash-attn
 * window (W − 1, 0)), which is ModelConfig's sliding window of W − 1 (p − (W−1) … p), so the cache keeps
 * W − 1 past positions. Attention form: q/k RMSNorm per attn.qk_norm, biases per attn.qkv_bias, no output
 * gate, RoPE on all d dims at θ = attn.rope_theta; plain (not zero-centred) norms.
 */
export function spikingBrain2ModelConfig(c: SpikingBrain2Config): ModelConfig {
  const kinds = c.layerKinds.map((k): LayerKind => (k === 'hybrid' ? 'sse_swa' : k));
  const hybrid = kinds.includes('sse_swa');
  if (hybrid && c.attention.windowTokens < 2) {
    throw new ModelLoadError(`config.json: "attn.window_size" ${c.attention.windowTokens} leaves the window branch only the query itself; not supported (window_size ≥ 2)`);
  }
  const { numHeads, numKvHeads, qkNorm, bias, ropeTheta, windowTokens, mobaChunkTokens, mobaTopk } = c.attention;
  return Object.freeze({
    modelType: 'sse_swa_moba',
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    numLayers: c.numLayers,
    numHeads,
    numKvHeads,
    headDim: c.headDim,
    intermediateSize: c.intermediateSize,
    slidingWindow: hybrid ? windowTokens - 1 : null,
    ropeTheta,
    normEps: c.normEps,
    tieWordEmbeddings: c.tieWordEmbeddings,
    layerKinds: Object.freeze(kinds),
    maxPositionEmbeddings: c.maxPositionEmbeddings,
    bosTokenId: c.bosTokenId,
    eosTokenIds: c.eosTokenIds,
    attention: Object.freeze({ bias, outputGate: false, qkNorm, rotaryDim: c.headDim }),
    gdn: null,
    zeroCentredNorms: false,
    sse: hybrid ? c.sse : null,
    moba: kinds.includes('moba') ? Object.freeze({ chunkTokens: mobaChunkTokens, topk: mobaTopk }) : null,
  });
}

/** Indices of the layers of one kind, in order. */
export function spikingBrain2Layers(config: SpikingBrain2Config, kind: SpikingBrain2LayerKind): number[] {
  return config.layerKinds.flatMap((k, i) => (k === kind ? [i] : []));
}

/**
 * Recurrent-state bytes one sequence holds (fp32), constant in its length: per hybrid layer the shared
 * state and N partition states, each H heads of [d, d] (keys × values; expand_v = 1, no short conv).
 */
export function sseStateBytesPerSequence(config: SpikingBrain2Config): number {
  const { numHeads: H, numPartitions: N } = config.sse;
  return spikingBrain2Layers(config, 'hybrid').length * (1 + N) * H * config.headDim * config.headDim * 4;
}

/** K+V bytes of the hybrid layers' windows (fp32): W positions × 2 × Hkv·d per hybrid layer, constant. */
export function windowKvBytesPerSequence(config: SpikingBrain2Config): number {
  const { numKvHeads, windowTokens } = config.attention;
  return spikingBrain2Layers(config, 'hybrid').length * windowTokens * 2 * numKvHeads * config.headDim * 4;
}

/** K+V bytes per context token (fp32) over the MoBA and full layers, which keep every position. */
export function growingKvBytesPerToken(config: SpikingBrain2Config): number {
  const layers = config.layerKinds.filter((k) => k !== 'hybrid').length;
  return layers * 2 * config.attention.numKvHeads * config.headDim * 4;
}
