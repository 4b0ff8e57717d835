// The contract of one forward pass of the built graph, shared by the Model (which owns the
// onnxruntime session) and the step runner (which gathers inputs from the cache pools).
//
// One graph serves any batch B ≥ 1 and chunk length T ≥ 1 (decode is T = 1). Every sequence of a
// batch brings the same T new tokens. Attention layers see P past positions (padded per batch).

export interface ForwardInput {
  readonly batchSize: number; // B
  readonly chunkTokens: number; // T
  /** [B, T] token ids. */
  readonly tokenIds: Int32Array;
  /** [B, T] absolute positions of the new tokens. */
  readonly positions: Int32Array;
  /**
   * Per recurrent state tensor (Model.stateSpecs, i.e. stateTensorSpecs(config) of ./layer-plan.ts, in
   * that order): [B, ...dims] state before this chunk (GLA: [B, Hkv, d, d]).
   */
  readonly states: readonly Float32Array[];
  /** Number of past key/value slots P given to attention layers (may be 0). */
  readonly pastTokens: number;
  /**
   * [B, P] absolute position of each past slot; a slot that holds nothing is −1 (never attended).
   * Slots need not be in order: RoPE is already applied to stored keys and the mask comes from positions.
   */
  readonly pastPositions: Int32Array;
  /**
   * Models with both window and growing attention layers (config.ts hasWindowPast), and required there:
   * the window layers' own past of Pw slots (about W), laid out like the one above ([B, Pw] positions,
   * −1 = empty). pastTokens and pastPositions are then the growing layers' past.
   */
  readonly windowPast?: { readonly pastTokens: number; readonly pastPositions: Int32Array };
  /**
   * Per attention layer (SWA or full, in layer order): [B, Hkv, P, d] keys (post-RoPE) and values; a
   * window layer's are [B, Hkv, Pw, d] when there is a windowPast.
   */
  readonly pastKeys: readonly Float32Array[];
  readonly pastValues: readonly Float32Array[];
  /** Return logits for every position ([B, T, V]) instead of only the last ([B, V]). */
  readonly allLogits: boolean;
  /**
   * Models with MoBA layers (SpikingBrain 2.0) only, and required there: [B, T] 1 where the token is a
   * prompt token (MoBA selects the chunks it attends), 0 where the model generated it (it attends every
   * position, as the official code decodes). Recomputing a generated token (preemption) passes 0 again.
   */
  readonly mobaSelect?: Uint8Array;
}

export interface ForwardOutput {
  /** [B, V] (last position) or [B, T, V] when allLogits. */
  readonly logits: Float32Array;
  /** Per recurrent state tensor, in the same order: [B, ...dims] state after the chunk. */
  readonly states: Float32Array[];
  /** Per attention layer: [B, Hkv, T, d] keys (post-RoPE) and values of the chunk's tokens. */
  readonly presentKeys: Float32Array[];
  readonly presentValues: Float32Array[];
  /** W8ASpike models: zero spikes and all spikes over this run's spike-coded linear inputs. */
  readonly spikes?: { readonly zeros: number; readonly values: number };
}
