// Names of the built graph's inputs and outputs: the one place both the graph builder and the Model
// (which feeds onnxruntime) take them from. `layer` is the model layer index (not an ordinal).

/** [B, T] int32 token ids. */
export const INPUT_IDS = 'input_ids';
/** [B, T] int32 absolute positions of the new tokens. */
export const POSITIONS = 'positions';
/** [B, P] int32 positions of the past key/value slots; −1 = empty slot. */
export const PAST_POSITIONS = 'past_positions';
/**
 * Models with both window and growing attention layers (config.ts hasWindowPast) only: [B, Pw] int32
 * positions of the window layers' own past slots (−1 = empty); their past keys/values are
 * [B, Hkv, Pw, d] (Pw ≈ W), while PAST_POSITIONS lays out the growing layers' (the whole context).
 */
export const PAST_POSITIONS_WINDOW = 'past_positions.window';
/** [1] int64: logits are computed for the last `num_logits` positions of each row (1 or T). */
export const NUM_LOGITS = 'num_logits';
/** [B, num_logits, V] float32 ([B, V] in the decode graph). */
export const LOGITS = 'logits';
/**
 * Decode graph (T = 1) only, replacing POSITIONS: [B, 1, r/2] float32 cos and sin of the new token's
 * RoPE angles p·θ^(−2i/r) (r = rotary dims), computed by the caller in float64 (../rope.ts) and rounded to float32,
 * as the step graph computes them from POSITIONS.
 */
export const ROPE_COS = 'rope_cos';
export const ROPE_SIN = 'rope_sin';
/**
 * Step graph of a model with MoBA layers (SpikingBrain 2.0) only: [B, T] bool, true where the token is a
 * prompt token, which attends only its own chunk and the chunks MoBA selects; false where it is a token the
 * model generated, which attends every position (as the official code decodes). The decode graph has no
 * such input: its MoBA layers attend densely, so the Model runs MoBA-selected rows on the step graph.
 */
export const MOBA_SELECT = 'moba_select';
/**
 * W8ASpike graphs only: [] int64 counts over the run's spike-coded linear-layer inputs, of spikes
 * that are 0 and of all spikes (sparsity = zeros / values; DESIGN §2).
 */
export const SPIKE_ZEROS = 'spike_zeros';
export const SPIKE_VALUES = 'spike_values';

/**
 * Decode graph only, replacing PAST_POSITIONS (and PAST_POSITIONS_WINDOW): [B, 1, 1, P+1] float32
 * additive mask of one attention kind over its P past slots then the new token (0 = attended, −1e30 =
 * not), computed by the caller. With a window past, the 'swa' mask spans the window layers' Pw slots.
 */
export const attentionBias = (kind: 'swa' | 'full'): string => `attention_bias.${kind}`;
/** GLA layer: [B, Hkv, d, d] state before the chunk; GDN layer: [B, Hv, dk, dv] delta-rule state. */
export const stateIn = (layer: number): string => `state.${layer}`;
/** The same state after the chunk. */
export const stateOut = (layer: number): string => `new_state.${layer}`;
/** GDN layer: [B, convDim, K−1] the causal conv1d's last K−1 inputs (oldest first) before the chunk. */
export const convStateIn = (layer: number): string => `conv_state.${layer}`;
/** GDN layer: the same after the chunk. */
export const convStateOut = (layer: number): string => `new_conv_state.${layer}`;
/** Attention layer: [B, Hkv, P, d] post-RoPE keys / values of the past slots. */
export const pastKey = (layer: number): string => `past_key.${layer}`;
export const pastValue = (layer: number): string => `past_value.${layer}`;
/** Attention layer: [B, Hkv, T, d] post-RoPE keys / values of the chunk's tokens. */
export const presentKey = (layer: number): string => `present_key.${layer}`;
export const presentValue = (layer: number): string => `present_value.${layer}`;
