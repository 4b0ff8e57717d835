// The whole model as one ONNX graph (I/O: ../forward.ts, names: ../io-names.ts):
//   h = embed(ids) [B, T, D]  (the residual stream stays [B, T, D]: MatMuls take it as it is)
//   per layer: h += Mixer(RMSNorm(h)) (GLA, Gated DeltaNet, attention, or SpikingBrain 2.0's hybrid
//              SSE + window and MoBA); h += MLP(RMSNorm(h))
//   logits = lm_head(RMSNorm(h)) for the last `num_logits` positions of each row → [B, num_logits, V]
// Two graphs over the same weights (same external tensors at the same offsets):
//   step    any B ≥ 1, T ≥ 1: positions, past positions and num_logits are inputs; RoPE tables and
//           attention masks are computed in the graph. A model with both window and growing attention
//           layers has two pasts: the window layers' (~W slots) and the growing layers' (the context).
//   decode  T = 1 only (a decode step): T is a constant, the caller passes the RoPE tables [B, 1, d/2]
//           and the additive masks [B, 1, 1, P+1] it computes in a few µs, and logits are [B, V]. That
//           removes the ~30 small nodes that only derive shapes, tables and masks (bench/README.md).
import type { Checkpoint } from '../checkpoint.ts';
import { hasWindowPast, isAttentionKind } from '../config.ts';
import { INPUT_IDS, LOGITS, MOBA_SELECT, NUM_LOGITS, PAST_POSITIONS, PAST_POSITIONS_WINDOW, POSITIONS, ROPE_COS, ROPE_SIN, SPIKE_VALUES, SPIKE_ZEROS, attentionBias } from '../io-names.ts';
import { detectGkLayout, EMBEDDINGS, FINAL_NORM, LM_HEAD, layerTensorNames } from '../tensor-names.ts';
import { checkW8ASpike, fakeQuantizedWeights, isW8ASpike } from '../w8aspike.ts';
import { attentionMixer, ropeAnglesFromPositions, ropeTables, type RopeTables } from './attention-layer.ts';
import { mlp, normWeight, rmsNorm } from './blocks.ts';
import { linear, reshape, type GraphContext, type GraphOptions } from './context.ts';
import { gdnMixer } from './gdn-layer.ts';
import { glaMixer } from './gla-layer.ts';
import { sseSwaMixer } from './sse-swa-layer.ts';
import { GraphBuilder, float, int, quantBits } from './graph-builder.ts';
import { DataType, type ModelProto } from './proto.ts';

export const EXTERNAL_DATA_FILE = 'model.onnx.data';

/** Which graph: `step` runs any chunk, `decode` only steps of one token per sequence (see the top). */
export type GraphKind = 'step' | 'decode';

export interface BuiltGraph {
  readonly builder: GraphBuilder;
  readonly model: ModelProto;
}

/** Builds the graph; weights stay lazy until `builder.writeExternalData` is called. */
export function buildModelGraph(source: Checkpoint, options: GraphOptions, kind: GraphKind = 'step'): BuiltGraph {
  // W8ASpike: QuantLinear weights are read fake-quantized; activations are spike-coded in the graph.
  const spiking = isW8ASpike(source);
  if (spiking) checkW8ASpike(source, detectGkLayout(source.config, (n) => source.has(n)));
  const ckpt = spiking ? fakeQuantizedWeights(source) : source;
  const config = ckpt.config;
  const { vocabSize: V, hiddenSize: D } = config;
  const g = new GraphBuilder(EXTERNAL_DATA_FILE, options.weightDtype);

  const decode = kind === 'decode';
  const ids = g.input(INPUT_IDS, DataType.INT32, ['batch', decode ? 1 : 'tokens']);
  const positions = decode ? '' : g.input(POSITIONS, DataType.INT32, ['batch', 'tokens']);
  const pastPositions = decode ? '' : g.input(PAST_POSITIONS, DataType.INT32, ['batch', 'past']);
  // Window layers of a model that also has growing ones read a past of their own (~W slots).
  const windowPast = hasWindowPast(config);
  const windowPastPositions = decode || !windowPast ? pastPositions : g.input(PAST_POSITIONS_WINDOW, DataType.INT32, ['batch', 'window_past']);
  const pastDim = (kind: 'swa' | 'full'): string => (kind === 'swa' && windowPast ? 'window_past' : 'past');
  const numLogits = decode ? '' : g.input(NUM_LOGITS, DataType.INT64, [1]);

  // B and T as [1] int64 values, built on first use (the fused decode graph never needs B: its
  // reshapes keep leading dims with 0).
  let dims: { B: string; T: string } | null = null;
  const dimsOf = (): { B: string; T: string } =>
    (dims ??= g.scope('dims', () => {
      const shape = g.op('Shape', [ids]);
      const B = g.op('Slice', [shape, g.i64([0]), g.i64([1])]);
      const T = decode ? g.i64([1]) : g.op('Slice', [shape, g.i64([1]), g.i64([2])]);
      return { B, T };
    }));

  const masks = new Map<'swa' | 'full', string>();
  let angles: { cos: string; sin: string } | null = null;
  let minusT: string | null = null;
  let mobaSelect: string | null = null;
  const ctx: GraphContext = {
    g,
    ckpt,
    config,
    options,
    spiking,
    spikeCounts: [],
    singleToken: decode,
    get B() {
      return dimsOf().B;
    },
    get T() {
      return decode ? g.i64([1]) : dimsOf().T;
    },
    shapeCache: new Map(),
    ropeAngles() {
      if (angles !== null) return angles;
      const half = config.attention.rotaryDim / 2;
      angles = decode
        ? { cos: g.input(ROPE_COS, DataType.FLOAT, ['batch', 1, half]), sin: g.input(ROPE_SIN, DataType.FLOAT, ['batch', 1, half]) }
        : ropeAnglesFromPositions(g, config, positions);
      return angles;
    },
    attentionMask(kind) {
      const cached = masks.get(kind);
      if (cached !== undefined) return cached;
      if (decode) {
        const bias = g.input(attentionBias(kind), DataType.FLOAT, ['batch', 1, 1, `${pastDim(kind)}_plus_one`]);
        masks.set(kind, bias);
        return bias;
      }
      // Key slot valid iff kp ≥ 0, kp ≤ qp and (full, or kp ≥ qp − W): [B, 1, T, P+T], 0 or −1e30.
      const mask = g.scope(`mask_${kind}`, () => {
        const past = kind === 'swa' ? windowPastPositions : pastPositions;
        const kp = g.op('Unsqueeze', [g.op('Concat', [past, positions], { axis: int(1) }), g.i64([1])]); // [B, 1, P+T]
        const qp = g.op('Unsqueeze', [positions, g.i64([2])]); // [B, T, 1]
        let valid = g.op('And', [g.op('GreaterOrEqual', [kp, g.i32([0], [])]), g.op('LessOrEqual', [kp, qp])]);
        if (kind === 'swa') {
          const W = config.slidingWindow ?? 0;
          valid = g.op('And', [valid, g.op('GreaterOrEqual', [kp, g.op('Sub', [qp, g.i32([W], [])])])]);
        }
        const add = g.op('Where', [valid, g.f32([0], []), g.f32([-1e30], [])]);
        return g.op('Unsqueeze', [add, g.i64([1])]);
      });
      masks.set(kind, mask);
      return mask;
    },
    pastDim,
    minusT() {
      minusT ??= decode ? g.i64([-1]) : g.op('Neg', [dimsOf().T], {}, { name: 'minus_T' });
      return minusT;
    },
    mobaInputs() {
      if (decode) throw new RangeError('the decode graph has no MoBA selection (its MoBA layers attend densely)');
      mobaSelect ??= g.input(MOBA_SELECT, DataType.BOOL, ['batch', 'tokens']);
      return { positions, pastPositions, select: mobaSelect };
    },
  };

  const embedding = g.weight(EMBEDDINGS, [V, D], () => ckpt.tensor(EMBEDDINGS, [V, D]).data);
  let h = g.op('Gather', [embedding, ids], { axis: int(0) }, { name: 'embed' }); // [B, T, D]
  const rope = config.layerKinds.some(isAttentionKind) ? ropeTables(ctx) : null;

  // Residual stream: h ← h + a; u ← RMSNorm(h) is one SkipSimplifiedLayerNormalization when fused.
  let pendingAdd: string | null = null; // a value still to be added to h before the next norm
  const normed = (weight: string, name: string): string => {
    if (pendingAdd === null) return rmsNorm(ctx, h, weight, name);
    const add = pendingAdd;
    pendingAdd = null;
    if (ctx.options.fusedOps) {
      const outs = g.scope(name, () =>
        g.opN('SkipSimplifiedLayerNormalization', [add, h, weight], { epsilon: float(config.normEps) }, { domain: 'com.microsoft', outputs: 4 }),
      );
      h = outs[3] ?? '';
      return outs[0] ?? '';
    }
    h = g.op('Add', [h, add], {}, { name: `${name}_residual` });
    return rmsNorm(ctx, h, weight, name);
  };

  config.layerKinds.forEach((kind, layer) => {
    const names = layerTensorNames(layer);
    g.scope(`layers.${layer}`, () => {
      const attnNorm = normWeight(ctx, names.attnNorm, D);
      const u = normed(attnNorm, 'attn_norm');
      const r = (): RopeTables => rope ?? ropeTables(ctx);
      switch (kind) {
        case 'gla':
          pendingAdd = glaMixer(ctx, layer, names, u);
          break;
        case 'gdn':
          pendingAdd = gdnMixer(ctx, layer, names, u);
          break;
        case 'sse_swa':
          pendingAdd = sseSwaMixer(ctx, layer, u, r());
          break;
        case 'moba':
          pendingAdd = attentionMixer(ctx, layer, names, u, r(), 'full', { moba: true });
          break;
        case 'swa':
        case 'full':
          pendingAdd = attentionMixer(ctx, layer, names, u, r(), kind);
      }
      const mlpNorm = normWeight(ctx, names.mlpNorm, D);
      pendingAdd = mlp(ctx, layer, names, normed(mlpNorm, 'mlp_norm'));
    });
  });

  const finalNorm = normWeight(ctx, FINAL_NORM, D);
  const hf = normed(finalNorm, 'norm');
  const logits = g.scope('lm_head', () => {
    // Decode: the one position of each row; step: the last num_logits positions [B, num_logits, D].
    const last = decode ? hf : g.op('Slice', [hf, g.op('Sub', [ctx.T, numLogits]), ctx.T, g.i64([1])]);
    const flat = reshape(ctx, last, [-1, D]);
    const source = config.tieWordEmbeddings ? EMBEDDINGS : LM_HEAD;
    let y: string; // [B·num_logits, V]
    const bits = quantBits(options.weightDtype);
    if (bits !== null) {
      // [V, D] is already MatMulNBits' [out, in]; a tied table is quantized as a second copy (the
      // embedding Gather keeps the float32 one).
      const names = g.quantizedWeight(`${LM_HEAD}.q${bits}`, V, D, bits, () => ckpt.tensor(source, [V, D]).data);
      y = linear(ctx, flat, { kind: 'quantized', names, inDim: D, outDim: V }, null, 'proj');
    } else {
      const lmHead = config.tieWordEmbeddings ? embedding : g.weight(LM_HEAD, [V, D], () => ckpt.tensor(LM_HEAD, [V, D]).data);
      y = g.op('Gemm', [flat, lmHead], { transB: int(1) });
    }
    return decode ? y : reshape(ctx, y, [ctx.B, -1, V]);
  });
  g.output(LOGITS, logits, DataType.FLOAT, decode ? ['batch', V] : ['batch', 'num_logits', V]);
  if (ctx.spikeCounts.length > 0) {
    // Sparsity of the spike-coded linear inputs of this run (int64: a long chunk of 7B counts billions).
    const total = (pick: 'zeros' | 'values'): string =>
      ctx.spikeCounts.map((c) => c[pick]).reduce((a, b) => g.op('Add', [a, b], {}, { name: `spike_${pick}_sum` }));
    g.output(SPIKE_ZEROS, total('zeros'), DataType.INT64, []);
    g.output(SPIKE_VALUES, total('values'), DataType.INT64, []);
  }

  // The fused graph uses ONNX Attention (opset 23, IR 10) and com.microsoft contrib ops.
  const opsets = new Map<string, number>([['', options.fusedOps ? 23 : 17]]);
  if (options.fusedOps || quantBits(options.weightDtype) !== null) opsets.set('com.microsoft', 1); // + MatMulNBits
  return { builder: g, model: g.toModel('spikeserve', opsets, options.fusedOps ? 10 : 8) };
}
