// Canonical tensor names and shapes (DESIGN.md §2's gla_swa names, which qwen2 and Qwen3.5 checkpoints
// are mapped onto; Qwen3.5's GDN layers keep their `linear_attn.*` names), derived from a ModelConfig.
// The single place names come from: checkpoint readers, the random checkpoint, validation, inspect
// and the graph builder all ask here. Weight matrices are [out, in].
import type { LayerKind, ModelConfig } from './config.ts';
import { sseSwaTensorSpecs } from './spikingbrain2-tensors.ts';

/** How a GLA layer stores its forget-gate projection. */
export type GkLayout = 'lowrank' | 'full';

/** Rank of the low-rank gate projection (Wg1: D→16, Wg2: 16→Hkv·d). */
export const GK_RANK = 16;

export const EMBEDDINGS = 'model.embeddings.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';

/**
 * A tensor only W8ASpike checkpoints (the official quantized, spiking release) store: the per-group
 * weight scales of a QuantLinear, here layer 0's MLP gate projection (every W8ASpike layer has one).
 */
export const W8ASPIKE_MARKER = 'model.layers.0.mlp.gate_proj.weight_quantizer.scales';

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

/** Names of every tensor a layer may have; which ones a layer needs depends on its kind (see layerTensorSpecs). */
export interface LayerTensorNames {
  readonly attnNorm: string; // [D]
  readonly qWeight: string; // [H·d, D]
  readonly qBias: string; // [H·d]
  readonly kWeight: string; // [Hkv·d, D]
  readonly kBias: string; // [Hkv·d]
  readonly vWeight: string; // [Hkv·d, D]
  readonly vBias: string; // [Hkv·d]
  readonly oWeight: string; // [D, H·d]
  /** Qwen3.5 attention: per-head RMSNorm weights [d] of q and k (zero-centred). */
  readonly qNorm: string;
  readonly kNorm: string;
  /** GLA, low-rank gate: [16, D] (no bias) then [Hkv·d, 16] + bias [Hkv·d]. */
  readonly gk0Weight: string;
  readonly gk1Weight: string;
  readonly gk1Bias: string;
  /** GLA, full-rank gate: [Hkv·d, D] + bias [Hkv·d]. */
  readonly gkWeight: string;
  readonly gkBias: string;
  readonly gNorm: string; // GLA only: [d], shared by heads
  /** Gated DeltaNet (see gdnTensorSpecs for shapes). */
  readonly gdnQkv: string;
  readonly gdnZ: string;
  readonly gdnB: string;
  readonly gdnA: string;
  readonly gdnConv: string;
  readonly gdnDtBias: string;
  readonly gdnALog: string;
  readonly gdnNorm: string;
  readonly gdnOut: string;
  readonly mlpNorm: string; // [D]
  readonly gateWeight: string; // [F, D]
  readonly upWeight: string; // [F, D]
  readonly downWeight: string; // [D, F]
}

export function layerTensorNames(layer: number): LayerTensorNames {
  const p = `model.layers.${layer}.`;
  return {
    attnNorm: `${p}attn_norm.weight`,
    qWeight: `${p}attn.q_proj.weight`,
    qBias: `${p}attn.q_proj.bias`,
    kWeight: `${p}attn.k_proj.weight`,
    kBias: `${p}attn.k_proj.bias`,
    vWeight: `${p}attn.v_proj.weight`,
    vBias: `${p}attn.v_proj.bias`,
    oWeight: `${p}attn.o_proj.weight`,
    qNorm: `${p}attn.q_norm.weight`,
    kNorm: `${p}attn.k_norm.weight`,
    gk0Weight: `${p}attn.gk_proj.0.weight`,
    gk1Weight: `${p}attn.gk_proj.1.weight`,
    gk1Bias: `${p}attn.gk_proj.1.bias`,
    gkWeight: `${p}attn.gk_proj.weight`,
    gkBias: `${p}attn.gk_proj.bias`,
    gNorm: `${p}attn.g_norm.weight`,
    gdnQkv: `${p}linear_attn.in_proj_qkv.weight`,
    gdnZ: `${p}linear_attn.in_proj_z.weight`,
    gdnB: `${p}linear_attn.in_proj_b.weight`,
    gdnA: `${p}linear_attn.in_proj_a.weight`,
    gdnConv: `${p}linear_attn.conv1d.weight`,
    gdnDtBias: `${p}linear_attn.dt_bias`,
    gdnALog: `${p}linear_attn.A_log`,
    gdnNorm: `${p}linear_attn.norm.weight`,
    gdnOut: `${p}linear_attn.out_proj.weight`,
    mlpNorm: `${p}mlp_norm.weight`,
    gateWeight: `${p}mlp.gate_proj.weight`,
    upWeight: `${p}mlp.up_proj.weight`,
    downWeight: `${p}mlp.down_proj.weight`,
  };
}

/** Width of the GDN's causal conv1d: it runs over q, k (Hk·dk each) and v (Hv·dv), in that order. */
export function gdnConvDim(config: ModelConfig): number {
  const g = config.gdn;
  return g === null ? 0 : 2 * g.numKeyHeads * g.keyHeadDim + g.numValueHeads * g.valueHeadDim;
}

/**
 * A Gated DeltaNet layer (Qwen3_5GatedDeltaNet): in_proj_qkv [2·Hk·dk + Hv·dv, D], in_proj_z [Hv·dv, D],
 * in_proj_b and in_proj_a [Hv, D], conv1d [convDim, 1, K] (no bias), dt_bias and A_log [Hv], the gated
 * norm's weight [dv], out_proj [D, Hv·dv].
 */
function gdnTensorSpecs(config: ModelConfig, n: LayerTensorNames): TensorSpec[] {
  const g = config.gdn;
  if (g === null) throw new RangeError('gdnTensorSpecs: the config has no GDN dimensions');
  const D = config.hiddenSize;
  const valueDim = g.numValueHeads * g.valueHeadDim;
  const convDim = gdnConvDim(config);
  return [
    { name: n.gdnQkv, shape: [convDim, D] },
    { name: n.gdnZ, shape: [valueDim, D] },
    { name: n.gdnB, shape: [g.numValueHeads, D] },
    { name: n.gdnA, shape: [g.numValueHeads, D] },
    { name: n.gdnConv, shape: [convDim, 1, g.convKernel] },
    { name: n.gdnDtBias, shape: [g.numValueHeads] },
    { name: n.gdnALog, shape: [g.numValueHeads] },
    { name: n.gdnNorm, shape: [g.valueHeadDim] },
    { name: n.gdnOut, shape: [D, valueDim] },
  ];
}

/** An attention layer's tensors: q/k/v/o (+ biases, the output gate's rows in q_proj, q/k norms per the config's form). */
function attentionTensorSpecs(config: ModelConfig, n: LayerTensorNames): TensorSpec[] {
  const D = config.hiddenSize;
  const d = config.headDim;
  const qDim = config.numHeads * d;
  const kvDim = config.numKvHeads * d;
  const form = config.attention;
  // With an output gate, q_proj holds per head [query (d), gate (d)] rows: [2·H·d, D].
  const qRows = form.outputGate ? 2 * qDim : qDim;
  const specs: TensorSpec[] = [
    { name: n.qWeight, shape: [qRows, D] },
    ...(form.bias ? [{ name: n.qBias, shape: [qRows] }] : []),
    { name: n.kWeight, shape: [kvDim, D] },
    ...(form.bias ? [{ name: n.kBias, shape: [kvDim] }] : []),
    { name: n.vWeight, shape: [kvDim, D] },
    ...(form.bias ? [{ name: n.vBias, shape: [kvDim] }] : []),
    { name: n.oWeight, shape: [D, qDim] },
  ];
  if (form.qkNorm) specs.push({ name: n.qNorm, shape: [d] }, { name: n.kNorm, shape: [d] });
  return specs;
}

/** Tensors one layer needs, in a stable order. */
export function layerTensorSpecs(config: ModelConfig, layer: number, gkLayout: GkLayout): TensorSpec[] {
  const kind: LayerKind | undefined = config.layerKinds[layer];
  if (kind === undefined) throw new RangeError(`layer ${layer} out of range [0, ${config.numLayers})`);
  const D = config.hiddenSize;
  const d = config.headDim;
  const kvDim = config.numKvHeads * d;
  const F = config.intermediateSize;
  const n = layerTensorNames(layer);
  const specs: TensorSpec[] = [{ name: n.attnNorm, shape: [D] }];
  if (kind === 'gdn') specs.push(...gdnTensorSpecs(config, n));
  else if (kind === 'sse_swa') {
    const sse = config.sse;
    if (sse === null) throw new RangeError('layerTensorSpecs: a hybrid SSE layer but the config has no SSE dimensions');
    specs.push(...sseSwaTensorSpecs(layer, { ...config.attention, hiddenSize: D, headDim: d, numHeads: sse.numHeads, numPartitions: sse.numPartitions, numKvHeads: config.numKvHeads }));
  } else specs.push(...attentionTensorSpecs(config, n)); // swa, full, moba (SpikingBrain 2.0's names are q_proj … here too)
  if (kind === 'gla') {
    if (gkLayout === 'lowrank') {
      specs.push(
        { name: n.gk0Weight, shape: [GK_RANK, D] },
        { name: n.gk1Weight, shape: [kvDim, GK_RANK] },
        { name: n.gk1Bias, shape: [kvDim] },
      );
    } else {
      specs.push({ name: n.gkWeight, shape: [kvDim, D] }, { name: n.gkBias, shape: [kvDim] });
    }
    specs.push({ name: n.gNorm, shape: [d] });
  }
  specs.push(
    { name: n.mlpNorm, shape: [D] },
    { name: n.gateWeight, shape: [F, D] },
    { name: n.upWeight, shape: [F, D] },
    { name: n.downWeight, shape: [D, F] },
  );
  return specs;
}

/**
 * Every tensor the model needs. `lm_head.weight` is listed even when tied: checkpoints then
 * answer it with the embeddings.
 */
export function modelTensorSpecs(config: ModelConfig, gkLayout: GkLayout): TensorSpec[] {
  const D = config.hiddenSize;
  const specs: TensorSpec[] = [{ name: EMBEDDINGS, shape: [config.vocabSize, D] }];
  for (let i = 0; i < config.numLayers; i++) specs.push(...layerTensorSpecs(config, i, gkLayout));
  specs.push({ name: FINAL_NORM, shape: [D] }, { name: LM_HEAD, shape: [config.vocabSize, D] });
  return specs;
}

/** The gate layout a checkpoint uses, judged from its first GLA layer ('lowrank' when there is none). */
export function detectGkLayout(config: ModelConfig, has: (name: string) => boolean): GkLayout {
  const first = config.layerKinds.indexOf('gla');
  if (first < 0) return 'lowrank';
  const n = layerTensorNames(first);
  return has(n.gkWeight) && !has(n.gk0Weight) ? 'full' : 'lowrank';
}

/** Number of elements of a shape. */
export function numElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parameters from config arithmetic alone (no weights read); a tied lm_head is counted once. */
export function countParameters(config: ModelConfig, gkLayout: GkLayout = 'lowrank'): number {
  let total = 0;
  for (const s of modelTensorSpecs(config, gkLayout)) {
    if (s.name === LM_HEAD && config.tieWordEmbeddings) continue;
    total += numElements(s.shape);
  }
  return total;
}
