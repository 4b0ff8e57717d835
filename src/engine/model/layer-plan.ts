// The layer-kind table on the model side: what per-sequence memory each kind of token mixer keeps
// between steps, so the step runner, the cache and the graph agree on one list instead of branching
// on kinds in each place.
//
//   kind   recurrent state tensors (per sequence, fp32)          keys/values
//   gla    state.{i}        [Hkv, d, d]                           —
//   gdn    conv_state.{i}   [convDim, K−1]  (the last K−1 inputs   —
//                           of the causal conv1d, oldest first,
//                           channel-major as onnxruntime's
//                           CausalConvWithState and HF keep it)
//          state.{i}        [Hv, dk, dv]   (the delta-rule state
//                           S, read as o = Sᵀq)
//   swa    —                                                      the last W positions (windowed pages)
//   full   —                                                      every position (growing pages)
//   sse_swa state.{i}      [(1+N)·H, d, d]  (SpikingBrain 2.0:     the window branch's last W positions
//                          the shared delta-rule state's H heads,  (windowed pages; W = window_size − 1,
//                          then partition n's H heads at (1+n)·H;  see spikingbrain2-config.ts)
//                          each [d (keys), d (values)], o = Sᵀq)
//   moba   —                                                      every position (growing pages)
//
// A layer's state tensors are graph inputs (before the chunk) and outputs (after it), batched as
// [B, ...dims]. The cache stores each one in fixed slots (src/cache/state-slots.ts) without knowing
// which kind it belongs to; prefix snapshots copy them as they are.
import type { KvGroupSpec } from '../../cache/kv-group.ts';
import { isAttentionKind, isGrowingKind, isWindowKind, type ModelConfig } from './config.ts';
import { convStateIn, convStateOut, stateIn, stateOut } from './io-names.ts';
import { gdnConvDim } from './tensor-names.ts';

/** One recurrent state tensor of one layer. */
export interface StateTensorSpec {
  /** Model layer index. */
  readonly layer: number;
  /** Graph input (state before the chunk) and output (after it). */
  readonly inputName: string;
  readonly outputName: string;
  /** Shape of one sequence's state; the graph's is [B, ...dims]. */
  readonly dims: readonly number[];
  /** Π dims. */
  readonly floats: number;
}

function spec(layer: number, inputName: string, outputName: string, dims: readonly number[]): StateTensorSpec {
  return Object.freeze({ layer, inputName, outputName, dims: Object.freeze([...dims]), floats: dims.reduce((a, b) => a * b, 1) });
}

/** Every recurrent state tensor of the model, in layer order (and, within a layer, in a fixed order). */
export function stateTensorSpecs(config: ModelConfig): StateTensorSpec[] {
  const { numKvHeads: Hkv, headDim: d, gdn, sse } = config;
  return config.layerKinds.flatMap((kind, layer) => {
    switch (kind) {
      case 'gla':
        return [spec(layer, stateIn(layer), stateOut(layer), [Hkv, d, d])];
      case 'gdn': {
        if (gdn === null) throw new RangeError(`layer ${layer} is a GDN layer but the config has no GDN dimensions`);
        return [
          spec(layer, convStateIn(layer), convStateOut(layer), [gdnConvDim(config), gdn.convKernel - 1]),
          spec(layer, stateIn(layer), stateOut(layer), [gdn.numValueHeads, gdn.keyHeadDim, gdn.valueHeadDim]),
        ];
      }
      case 'sse_swa': {
        if (sse === null) throw new RangeError(`layer ${layer} is a hybrid SSE layer but the config has no SSE dimensions`);
        return [spec(layer, stateIn(layer), stateOut(layer), [(1 + sse.numPartitions) * sse.numHeads, d, d])];
      }
      case 'swa':
      case 'full':
      case 'moba':
        return [];
    }
  });
}

/** Layers that read and write keys/values (SWA, full, the hybrid's window branch, MoBA), in order. */
export function attentionLayerIndices(config: ModelConfig): number[] {
  return config.layerKinds.flatMap((kind, layer) => (isAttentionKind(kind) ? [layer] : []));
}

/** Bytes of recurrent state one sequence holds (all state tensors, fp32): independent of its length. */
export function stateBytesPerSequence(config: ModelConfig): number {
  return stateTensorSpecs(config).reduce((n, s) => n + s.floats * 4, 0);
}

/**
 * The attention layers grouped by kind, as the cache allots their pages: sliding-window layers (and the
 * hybrid layers' window branches) form a 'window' group, full-attention and MoBA layers a 'full' group (in
 * that order when a model has both). Layers of a group share one page pool, so they share Hkv and d.
 */
export function kvGroupSpecs(config: ModelConfig): KvGroupSpec[] {
  const windowLayers = config.layerKinds.filter(isWindowKind).length;
  const growingLayers = config.layerKinds.filter(isGrowingKind).length;
  const groups: KvGroupSpec[] = [];
  const { numKvHeads, headDim } = config;
  if (windowLayers > 0) groups.push({ kind: 'window', numLayers: windowLayers, numKvHeads, headDim, windowTokens: config.slidingWindow });
  if (growingLayers > 0) groups.push({ kind: 'full', numLayers: growingLayers, numKvHeads, headDim, windowTokens: null });
  return groups;
}
