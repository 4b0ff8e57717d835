// Qwen3.5 text models: `config.json` of `Qwen3_5ForCausalLM` (`model_type: qwen3_5_text`) or of the
// multimodal `Qwen3_5ForConditionalGeneration` (`model_type: qwen3_5`, the language model's fields under
// `text_config`) into a ModelConfig. Defaults are those of transformers' Qwen3_5TextConfig
// (models/qwen3_5/configuration_qwen3_5.py); docs/models/qwen3_5.md lists every point and its source.
//
//   layer i: `layer_types[i]` ('linear_attention' → gdn, 'full_attention' → full), or, without the list,
//            full attention iff (i + 1) % full_attention_interval == 0 (default interval 4)
//   attention: head_dim explicit (default 256), no biases (attention_bias), q_proj doubled for the
//            output gate, q/k RMSNorm, RoPE on the first head_dim·partial_rotary_factor dims (0.25)
//   norms: zero-centred, (1 + w); eps rms_norm_eps (1e-6)
import { ModelLoadError } from '../errors.ts';
import { idList, intField, numField, type Json, type LayerKind, type ModelConfig } from './config.ts';

/** Qwen3_5TextConfig defaults (the 9B shape). */
const DEFAULTS = {
  headDim: 256,
  fullAttentionInterval: 4,
  partialRotaryFactor: 0.25,
  ropeTheta: 10000,
  convKernel: 4,
  keyHeadDim: 128,
  valueHeadDim: 128,
  numKeyHeads: 16,
  numValueHeads: 32,
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 32768,
};

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An integer field with a default (absent or null → the default). */
function intOr(raw: Json, name: string, fallback: number): number {
  return raw[name] === undefined || raw[name] === null ? fallback : intField(raw, name);
}

/** The text model's fields: `text_config` of the multimodal wrapper, or the config itself. */
function textFields(raw: Json): { text: Json; wrapper: Json | null } {
  if (raw['model_type'] !== 'qwen3_5' && raw['model_type'] !== 'qwen3_5_moe') return { text: raw, wrapper: null };
  const text = raw['text_config'];
  if (!isObject(text)) {
    throw new ModelLoadError(`config.json: model_type "${String(raw['model_type'])}" needs an object "text_config" (the language model's fields)`);
  }
  return { text, wrapper: raw };
}

function layerKinds(text: Json, numLayers: number): LayerKind[] {
  const types = text['layer_types'];
  if (types === undefined || types === null) {
    const interval = intOr(text, 'full_attention_interval', DEFAULTS.fullAttentionInterval);
    return Array.from({ length: numLayers }, (_, i) => ((i + 1) % interval === 0 ? 'full' : 'gdn'));
  }
  if (!Array.isArray(types) || types.length !== numLayers) {
    throw new ModelLoadError(`config.json: "layer_types" must list ${numLayers} layer types, got ${JSON.stringify(types)}`);
  }
  return types.map((t, i) => {
    if (t === 'linear_attention') return 'gdn';
    if (t === 'full_attention') return 'full';
    throw new ModelLoadError(`config.json: "layer_types"[${i}] is ${JSON.stringify(t)}; supported: "linear_attention", "full_attention"`);
  });
}

/** RoPE: `rope_parameters` (transformers ≥ 5) or the older top-level `rope_theta` / `partial_rotary_factor`. */
function rope(text: Json): { theta: number; partialRotaryFactor: number } {
  const params = isObject(text['rope_parameters']) ? text['rope_parameters'] : isObject(text['rope_scaling']) ? text['rope_scaling'] : {};
  const type = params['rope_type'] ?? params['type'];
  // 'mrope' is the default rotary with per-axis position sections: for text every axis has the same position.
  if (type !== undefined && type !== 'default' && type !== 'mrope') {
    throw new ModelLoadError(`config.json: rope type ${JSON.stringify(type)} is not supported for qwen3_5 (only "default")`);
  }
  const theta = numField(params, 'rope_theta', numField(text, 'rope_theta', DEFAULTS.ropeTheta));
  const partialRotaryFactor = numField(params, 'partial_rotary_factor', numField(text, 'partial_rotary_factor', DEFAULTS.partialRotaryFactor));
  return { theta, partialRotaryFactor };
}

/** Parses a Qwen3.5 config (either layout). A MoE config is refused with one line. */
export function parseQwen3_5Config(raw: Json): ModelConfig {
  const { text, wrapper } = textFields(raw);
  const experts = text['num_experts'];
  if (raw['model_type'] === 'qwen3_5_moe' || text['model_type'] === 'qwen3_5_moe_text' || (typeof experts === 'number' && experts > 0)) {
    throw new ModelLoadError(
      `config.json: Qwen3.5 mixture-of-experts models (num_experts=${JSON.stringify(experts ?? null)}) are not supported yet; the dense Qwen3.5 models are`,
    );
  }
  const act = text['hidden_act'];
  if (act !== undefined && act !== 'silu') throw new ModelLoadError(`config.json: "hidden_act" is ${JSON.stringify(act)}; qwen3_5 supports "silu"`);

  const vocabSize = intField(text, 'vocab_size');
  const hiddenSize = intField(text, 'hidden_size');
  const numLayers = intField(text, 'num_hidden_layers');
  const numHeads = intField(text, 'num_attention_heads');
  const numKvHeads = intOr(text, 'num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelLoadError(`config.json: "num_attention_heads" ${numHeads} is not divisible by "num_key_value_heads" ${numKvHeads}`);
  }
  const headDim = intOr(text, 'head_dim', DEFAULTS.headDim);
  const { theta, partialRotaryFactor } = rope(text);
  const rotaryDim = Math.trunc(headDim * partialRotaryFactor);
  if (rotaryDim < 2 || rotaryDim % 2 !== 0 || rotaryDim > headDim) {
    throw new ModelLoadError(`config.json: rotary dims head_dim·partial_rotary_factor = ${rotaryDim} must be even and in [2, ${headDim}]`);
  }
  const gdn = Object.freeze({
    numKeyHeads: intOr(text, 'linear_num_key_heads', DEFAULTS.numKeyHeads),
    numValueHeads: intOr(text, 'linear_num_value_heads', DEFAULTS.numValueHeads),
    keyHeadDim: intOr(text, 'linear_key_head_dim', DEFAULTS.keyHeadDim),
    valueHeadDim: intOr(text, 'linear_value_head_dim', DEFAULTS.valueHeadDim),
    convKernel: intOr(text, 'linear_conv_kernel_dim', DEFAULTS.convKernel),
  });
  if (gdn.numValueHeads % gdn.numKeyHeads !== 0) {
    throw new ModelLoadError(`config.json: "linear_num_value_heads" ${gdn.numValueHeads} is not a multiple of "linear_num_key_heads" ${gdn.numKeyHeads}`);
  }
  if (gdn.convKernel < 2) throw new ModelLoadError(`config.json: "linear_conv_kernel_dim" must be ≥ 2, got ${gdn.convKernel}`);
  const kinds = layerKinds(text, numLayers);
  // The wrapper's own tie_word_embeddings decides for Qwen3_5ForConditionalGeneration (its lm_head).
  const tiedRaw = wrapper !== null && typeof wrapper['tie_word_embeddings'] === 'boolean' ? wrapper['tie_word_embeddings'] : text['tie_word_embeddings'];
  const maxPos = text['max_position_embeddings'];
  const eos = idList(text['eos_token_id']);
  const bos = text['bos_token_id'] ?? wrapper?.['bos_token_id'];
  return Object.freeze({
    modelType: 'qwen3_5',
    vocabSize,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: intField(text, 'intermediate_size'),
    slidingWindow: null,
    ropeTheta: theta,
    normEps: numField(text, 'rms_norm_eps', DEFAULTS.rmsNormEps),
    tieWordEmbeddings: tiedRaw === true,
    layerKinds: Object.freeze(kinds),
    maxPositionEmbeddings: typeof maxPos === 'number' ? maxPos : DEFAULTS.maxPositionEmbeddings,
    bosTokenId: typeof bos === 'number' ? bos : null,
    eosTokenIds: Object.freeze(eos.length > 0 ? eos : wrapper !== null ? idList(wrapper['eos_token_id']) : []),
    attention: Object.freeze({ bias: text['attention_bias'] === true, outputGate: true, qkNorm: true, rotaryDim }),
    gdn: kinds.includes('gdn') ? gdn : null,
    zeroCentredNorms: true,
    sse: null,
    moba: null,
  });
}
