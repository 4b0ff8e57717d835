// Test helper: writes Hugging Face checkpoint directories (config.json, generation_config.json,
// safetensors single or sharded with an index) from float32 tensors, in F32/BF16/F16, with canonical
// gla_swa or qwen2 tensor names; and builds tiny random checkpoints in all the shapes tests need.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint, Tensor32 } from '../../src/engine/model/checkpoint.ts';
import { loadModelConfig, type ModelConfig } from '../../src/engine/model/config.ts';
import { randomCheckpoint } from '../../src/engine/model/random-checkpoint.ts';
import { checkShape } from '../../src/engine/model/hf-checkpoint.ts';
import { parseSpikingBrain2Config } from '../../src/engine/model/spikingbrain2-config.ts';
import { spikingBrain2TensorSpecs } from '../../src/engine/model/spikingbrain2-tensors.ts';
import {
  EMBEDDINGS, LM_HEAD, modelTensorSpecs, numElements, type GkLayout,
} from '../../src/engine/model/tensor-names.ts';

export type StoreDtype = 'F32' | 'BF16' | 'F16';
/** qwen3_5_text: Qwen3_5ForCausalLM names; qwen3_5: the multimodal wrapper's (`model.language_model.*`). */
export type Naming = 'gla_swa' | 'qwen2' | 'qwen3_5_text' | 'qwen3_5';

export interface WriteOptions {
  readonly dtype: StoreDtype;
  /** Number of safetensors files; > 1 writes `model-0000k-of-0000n.safetensors` + index. Default 1. */
  readonly shards?: number;
  readonly naming: Naming;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 → bf16 bits, round to nearest even (NaN stays NaN). */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0] as number;
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 → IEEE half bits, round to nearest even, with subnormals and overflow to ±Inf. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0] as number;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // half = (1.mant) · 2^(exp−127) / 2^−24 = M >> (14 − e), M the 24-bit significand
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++;
    return sign | half;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // a carry into the exponent is correct
  return sign | h;
}

/** Values as the file will store them (float32 passes through). */
function roundTo(dtype: StoreDtype, data: Float32Array): Float32Array {
  if (dtype === 'F32') return data;
  const out = new Float32Array(data.length);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < data.length; i++) {
    if (dtype === 'BF16') o32[i] = f32ToBf16Bits(data[i] as number) << 16;
    else out[i] = halfBitsToNumber(f32ToF16Bits(data[i] as number));
  }
  return out;
}

function halfBitsToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function encode(dtype: StoreDtype, data: Float32Array): Buffer {
  if (dtype === 'F32') return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const buf = Buffer.alloc(data.length * 2);
  for (let i = 0; i < data.length; i++) {
    const x = data[i] as number;
    buf.writeUInt16LE(dtype === 'BF16' ? f32ToBf16Bits(x) : f32ToF16Bits(x), i * 2);
  }
  return buf;
}

/** Canonical gla_swa name → the name a qwen2 checkpoint stores. */
function qwen2Name(name: string): string {
  if (name === EMBEDDINGS) return 'model.embed_tokens.weight';
  return name
    .replace(/^(model\.layers\.\d+\.)attn\./, '$1self_attn.')
    .replace(/^(model\.layers\.\d+\.)attn_norm\.weight$/, '$1input_layernorm.weight')
    .replace(/^(model\.layers\.\d+\.)mlp_norm\.weight$/, '$1post_attention_layernorm.weight');
}

/** Canonical name → the stored name of a checkpoint with the given naming. */
export function storedName(naming: Naming, name: string): string {
  if (naming === 'gla_swa' || name.startsWith('model.visual.') || name.startsWith('mtp.')) return name;
  const hf = qwen2Name(name);
  return naming === 'qwen3_5' && hf.startsWith('model.') ? `model.language_model.${hf.slice('model.'.length)}` : hf;
}

/** Bytes of one safetensors file: length prefix, JSON header padded with spaces to 8 bytes, data. */
export function encodeSafetensors(
  tensors: readonly { name: string; shape: readonly number[]; bytes: Buffer; dtype: StoreDtype }[],
  metadata: Record<string, string> = { format: 'pt' },
): Buffer {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([prefix, Buffer.from(json, 'utf8'), ...tensors.map((t) => t.bytes)]);
}

/** Writes config.json, generation_config.json and the weights (canonical names in `tensors`). */
export function writeCheckpoint(
  dir: string,
  rawConfig: Record<string, unknown>,
  tensors: ReadonlyMap<string, Tensor32>,
  options: WriteOptions,
): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(rawConfig, null, 2));
  const gen: Record<string, unknown> = {};
  if (rawConfig['bos_token_id'] !== undefined) gen['bos_token_id'] = rawConfig['bos_token_id'];
  if (rawConfig['eos_token_id'] !== undefined) gen['eos_token_id'] = rawConfig['eos_token_id'];
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(gen, null, 2));

  const entries = [...tensors].map(([name, t]) => {
    if (t.data.length !== numElements(t.shape)) throw new Error(`${name}: data length ${t.data.length} ≠ shape ${t.shape}`);
    return {
      name: storedName(options.naming, name),
      shape: t.shape,
      bytes: encode(options.dtype, t.data),
      dtype: options.dtype,
    };
  });
  const shards = Math.max(1, Math.min(options.shards ?? 1, entries.length));
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(entries));
    return;
  }
  // Contiguous groups of roughly equal bytes, in the given order.
  const total = entries.reduce((a, e) => a + e.bytes.length, 0);
  const groups: (typeof entries)[] = Array.from({ length: shards }, () => []);
  let acc = 0;
  for (const e of entries) {
    const g = Math.min(shards - 1, Math.floor((acc * shards) / Math.max(total, 1)));
    groups[g]?.push(e);
    acc += e.bytes.length;
  }
  const weightMap: Record<string, string> = {};
  const pad = (n: number): string => String(n).padStart(5, '0');
  groups.forEach((group, k) => {
    const file = `model-${pad(k + 1)}-of-${pad(shards)}.safetensors`;
    writeFileSync(join(dir, file), encodeSafetensors(group));
    for (const e of group) weightMap[e.name] = file;
  });
  writeFileSync(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
}

/** A Checkpoint served from tensors in memory (canonical names; tied lm_head answered by embeddings). */
export function tensorMapCheckpoint(config: ModelConfig, tensors: ReadonlyMap<string, Tensor32>): Checkpoint {
  const resolve = (name: string): Tensor32 | undefined =>
    name === LM_HEAD && (config.tieWordEmbeddings || !tensors.has(LM_HEAD)) ? tensors.get(EMBEDDINGS) : tensors.get(name);
  let numParameters = 0;
  for (const t of tensors.values()) numParameters += t.data.length;
  return {
    config,
    hash: `memory:${numParameters}`,
    numParameters,
    has: (name) => resolve(name) !== undefined,
    tensor(name, expectShape) {
      const t = resolve(name);
      if (t === undefined) throw new Error(`tensor "${name}" is missing`);
      if (expectShape !== undefined) checkShape(name, t.shape, expectShape);
      return t;
    },
  };
}

export interface TinyCheckpointOptions {
  readonly seed?: number; // default 1
  readonly numHeads?: number; // H, default 4
  /** H / Hkv: 1, 2 or 4. Default 2. */
  readonly kvRatio?: number;
  readonly headDim?: number; // d, default 16 (the tests also use 64)
  readonly numLayers?: number; // default 4
  /** Attention layers; omitted → the config has no `attn_layers` (odd layers are SWA). */
  readonly attnLayers?: readonly number[];
  /** W; null → attention layers are full attention. Default 8. */
  readonly slidingWindow?: number | null;
  readonly tied?: boolean; // default false
  readonly dtype?: StoreDtype; // default F32
  readonly gkLayout?: GkLayout; // default lowrank
  /**
   * 'qwen2' writes a qwen2 config (every layer full attention) with qwen2 tensor names; 'qwen3_5' a
   * Qwen3.5 text model (GDN + gated full attention, see the qwen3_5 options). Default gla_swa.
   */
  readonly modelType?: 'gla_swa' | 'qwen2' | 'qwen3_5';
  /** Qwen3.5: Qwen3_5ForCausalLM ('text', default) or the multimodal wrapper ('multimodal'). */
  readonly qwen3_5Layout?: 'text' | 'multimodal';
  /** Qwen3.5: GDN key heads Hk, value heads Hv, dk, dv, conv kernel. Defaults 2, 4, 8, 8, 4. */
  readonly gdn?: { readonly numKeyHeads: number; readonly numValueHeads: number; readonly keyHeadDim: number; readonly valueHeadDim: number; readonly convKernel: number };
  /** Qwen3.5: layer_types (omitted: full_attention_interval 4 decides). */
  readonly layerTypes?: readonly ('linear_attention' | 'full_attention')[];
  /** Qwen3.5: partial_rotary_factor (default 0.25). */
  readonly partialRotaryFactor?: number;
  /** Qwen3.5 multimodal: also store a few vision-tower and MTP tensors (which the loader skips). */
  readonly extraTensors?: boolean;
  readonly vocabSize?: number; // default 96
  readonly intermediateSize?: number; // default 2·D
  readonly shards?: number; // default 1
  readonly scale?: number; // random init spread, default 1
}

export interface TinyCheckpoint {
  readonly dir: string;
  readonly rawConfig: Record<string, unknown>;
  readonly config: ModelConfig;
  /** Canonical names → values exactly as stored (already rounded to the file's dtype). No lm_head when tied. */
  readonly tensors: Map<string, Tensor32>;
}

/** Builds the raw config.json object of a tiny model. */
export function tinyRawConfig(opts: TinyCheckpointOptions = {}): Record<string, unknown> {
  const H = opts.numHeads ?? 4;
  const ratio = opts.kvRatio ?? 2;
  if (H % ratio !== 0) throw new Error(`numHeads ${H} not divisible by kvRatio ${ratio}`);
  const d = opts.headDim ?? 16;
  const D = H * d;
  const common = {
    vocab_size: opts.vocabSize ?? 96,
    hidden_size: D,
    num_hidden_layers: opts.numLayers ?? 4,
    num_attention_heads: H,
    num_key_value_heads: H / ratio,
    intermediate_size: opts.intermediateSize ?? 2 * D,
    rope_theta: 10000,
    tie_word_embeddings: opts.tied ?? false,
    max_position_embeddings: 4096,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: opts.dtype === 'BF16' ? 'bfloat16' : opts.dtype === 'F16' ? 'float16' : 'float32',
  };
  if (opts.modelType === 'qwen3_5') return qwen3_5RawConfig(opts, common);
  if (opts.modelType === 'qwen2') {
    return {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      ...common,
      rms_norm_eps: 1e-6,
      sliding_window: 4096,
      use_sliding_window: false,
    };
  }
  const raw: Record<string, unknown> = {
    architectures: ['GLAswaForCausalLM'],
    model_type: 'gla_swa',
    ...common,
    norm_eps: 1e-6,
    sliding_window: opts.slidingWindow === undefined ? 8 : opts.slidingWindow,
    use_short_conv: false,
    hidden_act: 'swish',
  };
  if (opts.attnLayers !== undefined) raw['attn_layers'] = [...opts.attnLayers];
  return raw;
}

/** A tiny Qwen3.5 config: Qwen3_5ForCausalLM's own fields, or the multimodal wrapper's text_config. */
function qwen3_5RawConfig(opts: TinyCheckpointOptions, common: Record<string, unknown>): Record<string, unknown> {
  const g = opts.gdn ?? { numKeyHeads: 2, numValueHeads: 4, keyHeadDim: 8, valueHeadDim: 8, convKernel: 4 };
  const H = opts.numHeads ?? 4;
  const d = opts.headDim ?? 16;
  const text: Record<string, unknown> = {
    ...common,
    model_type: 'qwen3_5_text',
    // D is not H·d in Qwen3.5 (head_dim is explicit): make them differ here too.
    hidden_size: 48,
    head_dim: d,
    num_attention_heads: H,
    intermediate_size: opts.intermediateSize ?? 96,
    rms_norm_eps: 1e-6,
    hidden_act: 'silu',
    attention_bias: false,
    linear_num_key_heads: g.numKeyHeads,
    linear_num_value_heads: g.numValueHeads,
    linear_key_head_dim: g.keyHeadDim,
    linear_value_head_dim: g.valueHeadDim,
    linear_conv_kernel_dim: g.convKernel,
    rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: opts.partialRotaryFactor ?? 0.25, mrope_section: [1, 1, 0], mrope_interleaved: true },
  };
  delete text['rope_theta'];
  delete text['torch_dtype'];
  if (opts.layerTypes !== undefined) text['layer_types'] = [...opts.layerTypes];
  else text['full_attention_interval'] = 4;
  if (opts.qwen3_5Layout !== 'multimodal') return { architectures: ['Qwen3_5ForCausalLM'], ...text };
  return {
    architectures: ['Qwen3_5ForConditionalGeneration'],
    model_type: 'qwen3_5',
    text_config: text,
    vision_config: { model_type: 'qwen3_5', depth: 1, hidden_size: 16, num_heads: 2, out_hidden_size: 48 },
    tie_word_embeddings: opts.tied ?? false,
    image_token_id: 90,
    video_token_id: 91,
  };
}

/**
 * Writes a tiny random checkpoint into `dir` and returns its config and the tensors as stored,
 * so a reference can be run on exactly what the file holds.
 */
export function makeRandomTinyCheckpoint(dir: string, opts: TinyCheckpointOptions = {}): TinyCheckpoint {
  const rawConfig = tinyRawConfig(opts);
  const dtype = opts.dtype ?? 'F32';
  // Parse once to get the layer plan, generate, then write and re-read as the server would.
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(rawConfig));
  const parsed = loadModelConfig(dir);
  const gkLayout = opts.gkLayout ?? 'lowrank';
  const random = randomCheckpoint(parsed, { seed: opts.seed ?? 1, gkLayout, scale: opts.scale ?? 1 });
  const tensors = new Map<string, Tensor32>();
  for (const spec of modelTensorSpecs(parsed, gkLayout)) {
    if (spec.name === LM_HEAD && parsed.tieWordEmbeddings) continue;
    const t = random.tensor(spec.name);
    tensors.set(spec.name, { shape: t.shape, data: roundTo(dtype, t.data) });
  }
  const naming: Naming =
    opts.modelType === 'qwen2' ? 'qwen2' : opts.modelType === 'qwen3_5' ? (opts.qwen3_5Layout === 'multimodal' ? 'qwen3_5' : 'qwen3_5_text') : 'gla_swa';
  const stored = new Map(tensors);
  if (opts.extraTensors === true) {
    // Stored under names the loader must skip; writeCheckpoint keeps names it does not know as they are.
    stored.set('model.visual.patch_embed.proj.weight', { shape: [16, 3], data: new Float32Array(48).fill(0.5) });
    stored.set('model.visual.merger.linear_fc2.weight', { shape: [48, 16], data: new Float32Array(768).fill(0.25) });
    stored.set('mtp.fc.weight', { shape: [48, 96], data: new Float32Array(4608).fill(0.125) });
  }
  writeCheckpoint(dir, rawConfig, stored, {
    dtype,
    naming,
    ...(opts.shards !== undefined ? { shards: opts.shards } : {}),
  });
  return { dir, rawConfig, config: loadModelConfig(dir), tensors };
}

/**
 * A tiny W8ASpike checkpoint: a random full-rank-gate model whose hidden and ffn sizes are multiples
 * of 128, plus `<proj>.weight_quantizer.scales` [out, in/128, 1] for every projection, set as a
 * quantizer would: max |w| of the row's group / 127.
 */
export function makeW8ASpikeTinyCheckpoint(dir: string, opts: TinyCheckpointOptions = {}): TinyCheckpoint {
  const tiny = makeRandomTinyCheckpoint(dir, { numHeads: 4, headDim: 32, kvRatio: 2, ...opts, gkLayout: 'full' });
  const tensors = new Map<string, Tensor32>(tiny.tensors);
  for (const [name, t] of tiny.tensors) {
    if (!name.endsWith('_proj.weight')) continue;
    const [out, inDim] = t.shape as [number, number];
    const groups = inDim / 128;
    if (!Number.isInteger(groups)) throw new Error(`${name}: ${inDim} inputs is not a multiple of 128`);
    const scales = new Float32Array(out * groups);
    for (let r = 0; r < out; r++) {
      for (let g = 0; g < groups; g++) {
        let max = 0;
        for (let i = 0; i < 128; i++) max = Math.max(max, Math.abs(t.data[r * inDim + g * 128 + i] as number));
        scales[r * groups + g] = max / 127;
      }
    }
    tensors.set(name.replace(/\.weight$/, '.weight_quantizer.scales'), { shape: [out, groups, 1], data: scales });
  }
  writeCheckpoint(dir, tiny.rawConfig, tensors, { dtype: opts.dtype ?? 'F32', naming: 'gla_swa' });
  return { ...tiny, tensors };
}

/**
 * A SpikingBrain 2.0 (sse_swa_moba) checkpoint directory: `raw` as config.json and seeded random F32
 * weights under the official tensor names (spikingBrain2TensorSpecs): weights ~ N(0, 1/in), norm
 * weights 1 + N(0, 0.1²), A_log and dt_bias small. For serving tests whose vocabulary must fit a
 * tokenizer (the crosscheck fixtures have 64 ids).
 */
export function writeSpikingBrain2Checkpoint(dir: string, raw: Record<string, unknown>, seed: number): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(raw, null, 2));
  let state = seed >>> 0 || 1;
  const uniform = (): number => {
    // mulberry32
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const tensors = spikingBrain2TensorSpecs(parseSpikingBrain2Config(raw)).map(({ name, shape }) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape[shape.length - 1] ?? 1;
    const data = new Float32Array(n);
    const isNorm = name.endsWith('norm.weight');
    const small = name.endsWith('A_log') || name.endsWith('dt_bias');
    for (let i = 0; i < n; i++) data[i] = isNorm ? 1 + 0.1 * normal() : small ? 0.5 * uniform() : normal() / Math.sqrt(shape.length === 1 ? 16 : fanIn);
    return { name, shape, bytes: Buffer.from(data.buffer), dtype: 'F32' as const };
  });
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
}
