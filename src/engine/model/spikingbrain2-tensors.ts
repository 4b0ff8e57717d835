// SpikingBrain 2.0 tensor names and shapes, as the official HF modules name their parameters
// (spb2/modeling_sse_swa_moba.py SSESWAMoBABlock, spb2/sse_swa.py SSEGDNH, spb2/moba_attn.py
// MoBAAttention, spb2/attn.py Attention, fla GatedMLP / RMSNorm). Used to count parameters from
// config.json alone and to check a checkpoint's stored tensors; shapes are torch's [out, in].
import type { SpikingBrain2Config } from './spikingbrain2-config.ts';

export interface Spb2TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

/** Names of one layer's tensors (the keys a reference or loader reads). */
export function spb2LayerNames(i: number) {
  const p = `model.layers.${i}`;
  const a = `${p}.attn`;
  return {
    attnNorm: `${p}.attn_norm.weight`,
    mlpNorm: `${p}.mlp_norm.weight`,
    gate: `${p}.mlp.gate_proj.weight`,
    up: `${p}.mlp.up_proj.weight`,
    down: `${p}.mlp.down_proj.weight`,
    // hybrid: SSE branch
    sseQ: `${a}.sse_q_proj.weight`,
    sseK: `${a}.sse_k_proj.weight`,
    sseV: `${a}.sse_v_proj.weight`,
    loraQ0: `${a}.lora_q_proj.0.weight`,
    loraQ1: `${a}.lora_q_proj.1.weight`,
    loraK0: `${a}.lora_k_proj.0.weight`,
    loraK1: `${a}.lora_k_proj.1.weight`,
    sseA: `${a}.sse_a_proj.weight`,
    sseB: `${a}.sse_b_proj.weight`,
    aLog: `${a}.A_log`,
    dtBias: `${a}.dt_bias`,
    router: `${a}.sse_e_proj.weight`,
    sseONorm: `${a}.sse_o_norm.weight`,
    sseO: `${a}.sse_o_proj.weight`,
    sseMergeNorm: `${a}.sse_merge_norm.weight`,
    // hybrid: window branch
    swaQ: `${a}.swa_q_proj`,
    swaK: `${a}.swa_k_proj`,
    swaV: `${a}.swa_v_proj`,
    swaO: `${a}.swa_o_proj.weight`,
    swaQNorm: `${a}.swa_q_norm.weight`,
    swaKNorm: `${a}.swa_k_norm.weight`,
    swaMergeNorm: `${a}.swa_merge_norm.weight`,
    // MoBA and full attention
    q: `${a}.q_proj`,
    k: `${a}.k_proj`,
    v: `${a}.v_proj`,
    o: `${a}.o_proj.weight`,
    qNorm: `${a}.q_norm.weight`,
    kNorm: `${a}.k_norm.weight`,
  };
}

export const SPB2_EMBEDDINGS = 'model.embeddings.weight';
export const SPB2_FINAL_NORM = 'model.norm.weight';
export const SPB2_LM_HEAD = 'lm_head.weight';

/** What a hybrid layer's tensor shapes depend on. */
export interface SseSwaShape {
  readonly hiddenSize: number; // D
  readonly headDim: number; // d
  readonly numHeads: number; // H: SSE heads and the window branch's query heads
  readonly numPartitions: number; // N
  readonly numKvHeads: number; // Hkv of the window branch
  readonly bias: boolean; // attn.qkv_bias: the window branch's q/k/v biases
  readonly qkNorm: boolean; // attn.qk_norm: the window branch's q/k norms
}

/** A hybrid layer's mixer tensors (SSE branch, window branch, merge norms), without the block's norms and MLP. */
export function sseSwaTensorSpecs(i: number, s: SseSwaShape): Spb2TensorSpec[] {
  const { hiddenSize: D, headDim: d, numHeads: H, numKvHeads: Hkv } = s;
  const n = spb2LayerNames(i);
  const proj = (prefix: string, rows: number): Spb2TensorSpec[] => [
    { name: `${prefix}.weight`, shape: [rows, D] },
    ...(s.bias ? [{ name: `${prefix}.bias`, shape: [rows] }] : []),
  ];
  return [
    { name: n.sseQ, shape: [H * d, D] },
    { name: n.sseK, shape: [H * d, D] },
    { name: n.sseV, shape: [H * d, D] },
    // The LoRA branch's rank is head_v_dim (= d): q2 = q1 + B(A x), A [d, D], B [H·d, d].
    { name: n.loraQ0, shape: [d, D] },
    { name: n.loraQ1, shape: [H * d, d] },
    { name: n.loraK0, shape: [d, D] },
    { name: n.loraK1, shape: [H * d, d] },
    // 2H rows: the first H gate the shared state, the last H the partitions.
    { name: n.sseA, shape: [2 * H, D] },
    { name: n.sseB, shape: [2 * H, D] },
    { name: n.aLog, shape: [2 * H] },
    { name: n.dtBias, shape: [2 * H] },
    { name: n.router, shape: [s.numPartitions, D] },
    { name: n.sseONorm, shape: [d] },
    { name: n.sseO, shape: [D, H * d] },
    { name: n.sseMergeNorm, shape: [D] },
    ...proj(n.swaQ, H * d),
    ...proj(n.swaK, Hkv * d),
    ...proj(n.swaV, Hkv * d),
    { name: n.swaO, shape: [D, H * d] },
    { name: n.swaMergeNorm, shape: [D] },
    ...(s.qkNorm ? [{ name: n.swaQNorm, shape: [d] }, { name: n.swaKNorm, shape: [d] }] : []),
  ];
}

/** Every tensor the model has (lm_head only when untied), with its shape. */
export function spikingBrain2TensorSpecs(c: SpikingBrain2Config): Spb2TensorSpec[] {
  const D = c.hiddenSize;
  const d = c.headDim;
  const F = c.intermediateSize;
  const H = c.sse.numHeads;
  const { numHeads: Ha, numKvHeads: Hkv, qkNorm, bias } = c.attention;
  const specs: Spb2TensorSpec[] = [{ name: SPB2_EMBEDDINGS, shape: [c.vocabSize, D] }];
  /** A q/k/v projection [rows, D], with its bias [rows] when attn.qkv_bias. */
  const proj = (prefix: string, rows: number): Spb2TensorSpec[] => [
    { name: `${prefix}.weight`, shape: [rows, D] },
    ...(bias ? [{ name: `${prefix}.bias`, shape: [rows] }] : []),
  ];
  c.layerKinds.forEach((kind, i) => {
    const n = spb2LayerNames(i);
    specs.push({ name: n.attnNorm, shape: [D] });
    if (kind === 'hybrid') {
      specs.push(...sseSwaTensorSpecs(i, { hiddenSize: D, headDim: d, numHeads: H, numPartitions: c.sse.numPartitions, numKvHeads: Hkv, bias, qkNorm }));
    } else {
      specs.push(
        ...proj(n.q, Ha * d),
        ...proj(n.k, Hkv * d),
        ...proj(n.v, Hkv * d),
        { name: n.o, shape: [D, Ha * d] },
        ...(qkNorm ? [{ name: n.qNorm, shape: [d] }, { name: n.kNorm, shape: [d] }] : []),
      );
    }
    specs.push(
      { name: n.mlpNorm, shape: [D] },
      { name: n.gate, shape: [F, D] },
      { name: n.up, shape: [F, D] },
      { name: n.down, shape: [D, F] },
    );
  });
  specs.push({ name: SPB2_FINAL_NORM, shape: [D] });
  if (!c.tieWordEmbeddings) specs.push({ name: SPB2_LM_HEAD, shape: [c.vocabSize, D] });
  return specs;
}

/** Parameters of the model (tied embeddings counted once, as HF's num_parameters does). */
export function countSpikingBrain2Parameters(c: SpikingBrain2Config): number {
  return spikingBrain2TensorSpecs(c).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}
