// `spikeserve inspect` for a SpikingBrain 2.0 checkpoint (`sse_swa_moba`, recognised but not served
// yet): the layer plan, the parameter count (from config.json, or counted in the weights) and what one
// sequence costs, from the formulas of docs/models/spikingbrain2.md (fp32, as the engine keeps state):
//
//   SSE state     = #hybrid · (1 + N) · H · d · d · 4 bytes   shared + N partition states per head, constant
//   window KV     = #hybrid · W · 2 · Hkv · d · 4 bytes        the window branch's last W keys/values, constant
//   growing KV    = #(MoBA + full) · 2 · Hkv · d · 4 bytes per context token
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { formatBytes } from './inspect.ts';
import { INDEX_FILE, listSafetensors, openSafetensorsDir } from './safetensors.ts';
import {
  growingKvBytesPerToken,
  spikingBrain2Layers,
  sseStateBytesPerSequence,
  windowKvBytesPerSequence,
  type SpikingBrain2Config,
} from './spikingbrain2-config.ts';
import { countSpikingBrain2Parameters, SPB2_LM_HEAD, spikingBrain2TensorSpecs } from './spikingbrain2-tensors.ts';
import { formatCount, layerList } from './inspect-format.ts';

export interface Spb2WeightsReport {
  readonly files: number;
  readonly fileBytes: number;
  /** Stored dtype → number of tensors. */
  readonly dtypes: Readonly<Record<string, number>>;
  /** 'ok', or the first missing, misshaped or unexpected tensor. */
  readonly validation: string;
}

export interface Spb2Report {
  readonly source: string;
  readonly config: SpikingBrain2Config;
  readonly hybridLayers: readonly number[];
  readonly mobaLayers: readonly number[];
  readonly fullLayers: readonly number[];
  readonly numParameters: number;
  readonly parameterSource: 'config' | 'weights';
  readonly sseStateBytesPerSequence: number;
  readonly windowKvBytesPerSequence: number;
  /** K+V bytes per context token over the MoBA and full layers. */
  readonly kvBytesPerToken: number;
  readonly weights: Spb2WeightsReport | null;
}

function weightsReport(dir: string, config: SpikingBrain2Config): { report: Spb2WeightsReport; numParameters: number } {
  const store = openSafetensorsDir(dir);
  const dtypes: Record<string, number> = {};
  let numParameters = 0;
  for (const e of store.entries.values()) {
    dtypes[e.dtype] = (dtypes[e.dtype] ?? 0) + 1;
    // A tied checkpoint that still stores lm_head holds a copy, not parameters.
    if (!(config.tieWordEmbeddings && e.name === SPB2_LM_HEAD)) numParameters += e.shape.reduce((a, b) => a * b, 1);
  }
  const specs = spikingBrain2TensorSpecs(config);
  const expected = new Set(specs.map((s) => s.name));
  let validation = 'ok';
  for (const spec of specs) {
    const e = store.entries.get(spec.name);
    if (e === undefined) {
      validation = `missing tensor "${spec.name}" (expected shape [${spec.shape.join(', ')}])`;
      break;
    }
    if (e.shape.length !== spec.shape.length || e.shape.some((x, i) => x !== spec.shape[i])) {
      validation = `tensor "${spec.name}" has shape [${e.shape.join(', ')}], expected [${spec.shape.join(', ')}]`;
      break;
    }
  }
  if (validation === 'ok') {
    const extra = [...store.entries.keys()].find((n) => !expected.has(n) && !(n === SPB2_LM_HEAD && config.tieWordEmbeddings));
    if (extra !== undefined) validation = `unexpected tensor "${extra}"`;
  }
  return {
    report: { files: store.files.length, fileBytes: store.files.reduce((a, f) => a + f.fileBytes, 0), dtypes, validation },
    numParameters,
  };
}

/** Gathers the report from a checkpoint directory whose config.json has been parsed as sse_swa_moba. */
export function describeSpikingBrain2(dir: string, config: SpikingBrain2Config): Spb2Report {
  const hasWeights = existsSync(join(dir, INDEX_FILE)) || listSafetensors(dir).length > 0;
  const counted = hasWeights ? weightsReport(dir, config) : null;
  return {
    source: dir,
    config,
    hybridLayers: spikingBrain2Layers(config, 'hybrid'),
    mobaLayers: spikingBrain2Layers(config, 'moba'),
    fullLayers: spikingBrain2Layers(config, 'full'),
    numParameters: counted?.numParameters ?? countSpikingBrain2Parameters(config),
    parameterSource: counted === null ? 'config' : 'weights',
    sseStateBytesPerSequence: sseStateBytesPerSequence(config),
    windowKvBytesPerSequence: windowKvBytesPerSequence(config),
    kvBytesPerToken: growingKvBytesPerToken(config),
    weights: counted?.report ?? null,
  };
}

const TABLE_CONTEXTS = [4096, 32768, 131072, 524288];

export function formatSpikingBrain2Report(r: Spb2Report): string {
  const c = r.config;
  const s = c.sse;
  const a = c.attention;
  const d = c.headDim;
  const constant = r.sseStateBytesPerSequence + r.windowKvBytesPerSequence;
  const lines = [
    `model: ${r.source}`,
    `type: sse_swa_moba (SpikingBrain 2.0)  V=${c.vocabSize} D=${c.hiddenSize} L=${c.numLayers} ` +
      `d=${d} F=${c.intermediateSize} ε=${c.normEps}${c.tieWordEmbeddings ? ' tied-embeddings' : ''}`,
    `SSE: H=${s.numHeads} partitions=${s.numPartitions} top-${s.numWriters} routing, q/k ${s.qkActivation}${s.allowNegEigval ? ', β·2' : ''}`,
    `attention: H=${a.numHeads} (window branch ${s.numHeads}) Hkv=${a.numKvHeads} θ=${a.ropeTheta}${a.qkNorm ? ' qk-norm' : ''}${a.bias ? ' qkv-bias' : ''} ` +
      `W=${a.windowTokens} MoBA chunk=${a.mobaChunkTokens} top-${a.mobaTopk}`,
    `layers:`,
    `  hybrid SSE-GDN + SWA (${layerList(r.hybridLayers)})`,
    `  MoBA (${layerList(r.mobaLayers)})`,
    `  full (${layerList(r.fullLayers)})`,
    `parameters: ${formatCount(r.numParameters)} [${r.parameterSource === 'config' ? 'from config.json' : 'counted in the weights'}]`,
    `  fp32 in memory: ${formatBytes(r.numParameters * 4)}`,
  ];
  if (r.weights !== null) {
    const w = r.weights;
    const dt = Object.entries(w.dtypes).map(([k, v]) => `${k}×${v}`).join(' ');
    lines.push(`weights: ${w.files} file(s), ${formatBytes(w.fileBytes)}, dtypes ${dt || 'n/a'}`, `  validation: ${w.validation}`);
  }
  lines.push(
    `per-sequence memory (fp32):`,
    `  SSE state: ${formatBytes(r.sseStateBytesPerSequence)} (${r.hybridLayers.length} layers × (1 + ${s.numPartitions}) states × ` +
      `H·d·d ${s.numHeads}·${d}·${d} × 4), constant`,
    `  window KV: ${formatBytes(r.windowKvBytesPerSequence)} (${r.hybridLayers.length} layers × W ${a.windowTokens} × 2 × Hkv·d ${a.numKvHeads}·${d} × 4), constant`,
    `  MoBA + full KV: ${formatBytes(r.kvBytesPerToken)} per token (${r.mobaLayers.length + r.fullLayers.length} layers × 2 × Hkv·d × 4)`,
    `  context → bytes per sequence: ` +
      TABLE_CONTEXTS.map((t) => `${t / 1024}K: ${formatBytes(constant + t * r.kvBytesPerToken)}`).join(', '),
    `  if every layer were full attention: ${formatBytes(c.numLayers * 2 * a.numKvHeads * d * 4)} per token`,
  );
  return `${lines.join('\n')}\n`;
}
