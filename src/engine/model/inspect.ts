// `spikeserve inspect`: what a checkpoint is and what one sequence costs to serve. Works from
// config.json alone (parameter count from the config arithmetic; e.g. the official spec directory
// has no weights) and, when weights are present, also reports files, dtypes and validation.
//
// Per-sequence memory (fp32):
//   GLA state     = #GLA · Hkv · d · d · 4 bytes, constant in context length
//                   (per KV head: k, v and g are per KV head, so H/Hkv query heads share one state)
//   GDN state     = #GDN · (convDim · (K−1) + Hv · dk · dv) · 4 bytes (conv inputs + delta-rule state), constant
//   SWA window    ≤ (W + chunk) positions · #SWA · 2 (K, V) · Hkv · d · 4 bytes, constant too
//   full attention  #full · 2 · Hkv · d · 4 bytes per token, grows with the context
import type { Checkpoint } from './checkpoint.ts';
import { glaStateBytesPerSequence, layersOfKind, loadModelConfig, type ModelConfig } from './config.ts';
import { stateBytesPerSequence } from './layer-plan.ts';
import { openCheckpoint, validateCheckpoint, type HfCheckpoint } from './hf-checkpoint.ts';
import { isW8ASpike } from './w8aspike.ts';
import { INDEX_FILE, listSafetensors } from './safetensors.ts';
import { countParameters, gdnConvDim } from './tensor-names.ts';
import { describeSpikingBrain2, formatSpikingBrain2Report } from './spikingbrain2-inspect.ts';
import { parseSpikingBrain2Config } from './spikingbrain2-config.ts';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatCount, layerList } from './inspect-format.ts';

export interface WeightsReport {
  readonly files: number;
  readonly fileBytes: number;
  /** Stored dtype → number of tensors. */
  readonly dtypes: Readonly<Record<string, number>>;
  readonly hash: string;
  /** 'ok', or the first problem validateCheckpoint found. */
  readonly validation: string;
  /** W8ASpike: QuantLinear scales stored; spike-coded activations (../w8aspike.ts). */
  readonly w8aspike: boolean;
}

export interface ModelReport {
  readonly source: string;
  readonly config: ModelConfig;
  readonly glaLayers: readonly number[];
  readonly swaLayers: readonly number[];
  readonly fullLayers: readonly number[];
  /** Gated DeltaNet layers (Qwen3.5's linear_attention). */
  readonly gdnLayers: readonly number[];
  readonly numParameters: number;
  /** 'config': computed from config.json; 'weights': counted over the stored tensors. */
  readonly parameterSource: 'config' | 'weights';
  readonly glaStateBytesPerSequence: number;
  /** Conv inputs + delta-rule states of the GDN layers (0 without them). */
  readonly gdnStateBytesPerSequence: number;
  /** Every recurrent state tensor of one sequence (GLA + GDN), constant in its length. */
  readonly stateBytesPerSequence: number;
  /** K+V bytes one sequence's SWA layers hold at most while computing a chunk of 1 token: (W+1) positions. */
  readonly swaKvBytesPerSequence: number;
  /** K+V bytes per token of context over the full-attention layers (0 when there are none). */
  readonly fullKvBytesPerToken: number;
  readonly weights: WeightsReport | null;
}

/** Bytes of K+V that SWA layers hold for one sequence computing a chunk of `chunkTokens`: (W + chunk) positions. */
export function swaKvBytesPerSequence(config: ModelConfig, chunkTokens = 1): number {
  const swa = layersOfKind(config, 'swa').length;
  if (swa === 0 || config.slidingWindow === null) return 0;
  return (config.slidingWindow + chunkTokens) * swa * 2 * config.numKvHeads * config.headDim * 4;
}

/** Bytes of K+V per context token over the full-attention layers. */
export function fullKvBytesPerToken(config: ModelConfig): number {
  return layersOfKind(config, 'full').length * 2 * config.numKvHeads * config.headDim * 4;
}

/** Bytes one sequence of `contextTokens` needs in state and KV (fp32), for a chunk of 1. */
export function sequenceBytes(config: ModelConfig, contextTokens: number): number {
  const swa = layersOfKind(config, 'swa').length;
  const window = config.slidingWindow === null ? 0 : Math.min(contextTokens, config.slidingWindow + 1);
  return (
    stateBytesPerSequence(config) +
    window * swa * 2 * config.numKvHeads * config.headDim * 4 +
    contextTokens * fullKvBytesPerToken(config)
  );
}

function hasWeights(dir: string): boolean {
  return existsSync(join(dir, INDEX_FILE)) || listSafetensors(dir).length > 0;
}

/** Gathers the report from a checkpoint directory (config.json alone suffices) or an open Checkpoint. */
export function describeModel(source: string | Checkpoint): ModelReport {
  let config: ModelConfig;
  let ckpt: Checkpoint | null = null;
  let weights: WeightsReport | null = null;
  if (typeof source === 'string') {
    config = loadModelConfig(source);
    if (hasWeights(source)) ckpt = openCheckpoint(source);
  } else {
    config = source.config;
    ckpt = source;
  }
  if (ckpt !== null) {
    let validation = 'ok';
    try {
      validateCheckpoint(ckpt);
    } catch (err) {
      validation = (err as Error).message;
    }
    if ('dtypeOf' in ckpt) {
      const hf = ckpt as HfCheckpoint;
      const dtypes: Record<string, number> = {};
      for (const name of hf.names) {
        const dt = hf.dtypeOf(name) ?? '?';
        dtypes[dt] = (dtypes[dt] ?? 0) + 1;
      }
      weights = { files: hf.files.length, fileBytes: hf.fileBytes, dtypes, hash: hf.hash, validation, w8aspike: isW8ASpike(ckpt) };
    } else {
      weights = { files: 0, fileBytes: 0, dtypes: {}, hash: ckpt.hash, validation, w8aspike: isW8ASpike(ckpt) };
    }
  }
  return {
    source: typeof source === 'string' ? source : `checkpoint ${source.hash.slice(0, 12)}`,
    config,
    glaLayers: layersOfKind(config, 'gla'),
    swaLayers: layersOfKind(config, 'swa'),
    fullLayers: layersOfKind(config, 'full'),
    gdnLayers: layersOfKind(config, 'gdn'),
    numParameters: ckpt?.numParameters ?? countParameters(config),
    parameterSource: ckpt === null ? 'config' : 'weights',
    glaStateBytesPerSequence: glaStateBytesPerSequence(config),
    gdnStateBytesPerSequence: stateBytesPerSequence(config) - glaStateBytesPerSequence(config),
    stateBytesPerSequence: stateBytesPerSequence(config),
    swaKvBytesPerSequence: swaKvBytesPerSequence(config, 1),
    fullKvBytesPerToken: fullKvBytesPerToken(config),
    weights,
  };
}

/** 1536 → "1.50 KiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} B` : `${v.toFixed(2)} ${units[u]}`;
}

/** Context lengths of the per-sequence memory table. */
const TABLE_CONTEXTS = [4096, 131072, 1048576, 4194304];

export function formatModelReport(r: ModelReport): string {
  const c = r.config;
  const g = c.gdn;
  const lines = [
    `model: ${r.source}`,
    `type: ${c.modelType}  V=${c.vocabSize} D=${c.hiddenSize} L=${c.numLayers} H=${c.numHeads} Hkv=${c.numKvHeads} ` +
      `d=${c.headDim} F=${c.intermediateSize} W=${c.slidingWindow ?? 'none'} θ=${c.ropeTheta} ε=${c.normEps}` +
      `${c.attention.rotaryDim < c.headDim ? ` rotary=${c.attention.rotaryDim}` : ''}` +
      `${c.attention.outputGate ? ' gated-attention' : ''}${c.tieWordEmbeddings ? ' tied-embeddings' : ''}`,
    ...(g === null ? [] : [`GDN: Hk=${g.numKeyHeads} Hv=${g.numValueHeads} dk=${g.keyHeadDim} dv=${g.valueHeadDim} conv=${g.convKernel}`]),
    `layers:`,
    `  GLA  (${layerList(r.glaLayers)})`,
    ...(r.gdnLayers.length > 0 ? [`  GDN  (${layerList(r.gdnLayers)})`] : []),
    `  SWA  (${layerList(r.swaLayers)})`,
    `  full (${layerList(r.fullLayers)})`,
    `parameters: ${formatCount(r.numParameters)} [${r.parameterSource === 'config' ? 'from config.json' : 'counted in the weights'}]`,
    `  fp32 in memory: ${formatBytes(r.numParameters * 4)}`,
  ];
  if (r.weights !== null) {
    const w = r.weights;
    const dt = Object.entries(w.dtypes).map(([k, v]) => `${k}×${v}`).join(' ');
    lines.push(
      `weights: ${w.files} file(s), ${formatBytes(w.fileBytes)}, dtypes ${dt || 'n/a'}${w.w8aspike ? ', W8ASpike (group-128 weight scales, spike-coded activations)' : ''}`,
      `  hash: ${w.hash}`,
      `  validation: ${w.validation}`,
    );
  }
  lines.push(
    `per-sequence memory (fp32):`,
    r.glaLayers.length === 0
      ? '  GLA state: none'
      : `  GLA state: ${formatBytes(r.glaStateBytesPerSequence)} (${r.glaLayers.length} layers × Hkv·d·d·4 = ` +
        `${formatBytes(c.numKvHeads * c.headDim * c.headDim * 4)}), constant`,
    ...(g === null
      ? []
      : [
          `  GDN state: ${formatBytes(r.gdnStateBytesPerSequence)} (${r.gdnLayers.length} layers × (conv ${gdnConvDim(c)}·${g.convKernel - 1} + ` +
            `Hv·dk·dv ${g.numValueHeads}·${g.keyHeadDim}·${g.valueHeadDim})·4), constant`,
        ]),
    r.swaLayers.length === 0
      ? '  SWA KV: none'
      : `  SWA KV bound: ${formatBytes(r.swaKvBytesPerSequence)} ((W+1) positions × ${r.swaLayers.length} layers × 2 × Hkv·d·4, chunk of 1), constant`,
    `  full-attention KV: ${r.fullKvBytesPerToken === 0 ? 'none' : `${formatBytes(r.fullKvBytesPerToken)} per token`}`,
    `  context → bytes per sequence: ` + TABLE_CONTEXTS.map((t) => `${t >= 1048576 ? `${t / 1048576}M` : `${t / 1024}K`}: ${formatBytes(sequenceBytes(c, t))}`).join(', '),
  );
  if (r.fullLayers.length < c.numLayers) {
    // The same shape with every layer full attention, the baseline the hybrid is measured against.
    const perToken = c.numLayers * 2 * c.numKvHeads * c.headDim * 4;
    lines.push(`  if every layer were full attention: ${formatBytes(perToken)} per token (1M: ${formatBytes(perToken * 1048576)})`);
  }
  return `${lines.join('\n')}\n`;
}

/** model_type of a checkpoint directory's config.json, or null when it cannot be read (loadModelConfig then says why). */
function modelTypeOf(dir: string): unknown {
  try {
    return (JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>)['model_type'] ?? null;
  } catch {
    return null;
  }
}

/**
 * The human-readable report for `spikeserve inspect --model DIR`. A SpikingBrain 2.0 checkpoint
 * gets its own report (./spikingbrain2-inspect.ts).
 */
export function inspectModel(source: string | Checkpoint): string {
  if (typeof source === 'string' && modelTypeOf(source) === 'sse_swa_moba') {
    const raw = JSON.parse(readFileSync(join(source, 'config.json'), 'utf8')) as Record<string, unknown>;
    return formatSpikingBrain2Report(describeSpikingBrain2(source, parseSpikingBrain2Config(raw)));
  }
  return formatModelReport(describeModel(source));
}
