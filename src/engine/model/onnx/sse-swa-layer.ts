// SpikingBrain 2.0's hybrid layer (official SSEGDNH: sparse state expansion over Gated DeltaNet plus a
// sliding-window softmax branch; every point in docs/models/spikingbrain2.md) as ONNX. x is the normed
// input [B, T, D]; H heads of d, N partitions, top-k routing.
//
// SSE branch:
//   [q1 | k1 | v | a | b | e | Aq x | Ak x] = x Wᵀ                           one MatMul
//   q2 = q1 + Bq(Aq x), k2 = k1 + Bk(Ak x)                                   (LoRA, rank d)
//   q1, q2, k1, k2 ← silu (relu: sse_qk_relu);  v ← silu(v)
//   β = σ(b) (·2: allow_neg_eigval), g = −exp(A_log) · softplus(a + dt_bias)   [2H]: shared | partitions
//   p = softmax(e) [N];  chosen_n = [n ∈ top-k(p)] (ties → lower index: ONNX TopK's order)
// The shared state and the N partition states are one gated-delta-rule run of (1 + N)·H heads
// (gdn-layer.ts), head j·H + h being state j (0 = shared) of head h:
//   shared       q1, k1, v, g1, β1
//   partition n  q2·p_nχ_n, k2·p_nχ_n, v, g2·χ_n, β2·χ_n       (χ_n = chosen_n ∈ {0, 1})
// On a token that did not choose n the partition gets g = 0 and β = 0, so S_n ← e⁰ S_n + 0: it neither
// decays nor updates, exactly as the official varlen kernel, which runs partition n over the tokens
// that chose it only; its query is 0, so its output Sᵀq = 0 is not added. q and k are then l2-normed
// per head (l2norm(p·x) = p·x / sqrt(p²Σx² + 1e−6), as the official code scales before the kernel's norm).
//   o_h = Σ_j o_{j·H+h};  sse = W_o [RMSNorm_d(o_h) · w_o_norm]_h
// Window branch: attention-layer.ts with H query heads, the swa_* weights and the 'swa' mask (W keys
// including the query: ModelConfig's slidingWindow is window_size − 1).
// Merge: (RMSNorm_D(sse)·w_sse_merge + RMSNorm_D(swa)·w_swa_merge) / 2, the ½ folded into both weights.
// The state tensor is [B, (1+N)·H, d, d] (state.{layer} / new_state.{layer}); the window's keys and
// values are the layer's past/present keys (as a sliding-window layer's).
import { stateIn, stateOut } from '../io-names.ts';
import { spb2LayerNames } from '../spikingbrain2-tensors.ts';
import { layerTensorNames, type LayerTensorNames } from '../tensor-names.ts';
import { attentionMixer, type RopeTables } from './attention-layer.ts';
import { rmsNorm, splitLast } from './blocks.ts';
import { linear, matmulWeight, reshape, shapeOf, type GraphContext } from './context.ts';
import { chunkedDeltaRule, fusedDeltaRule, l2normHeads, plainRms } from './gdn-layer.ts';
import { float, int } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** The window branch's tensors under the names attention-layer.ts reads. */
function windowNames(layer: number): LayerTensorNames {
  const n = spb2LayerNames(layer);
  return {
    ...layerTensorNames(layer),
    qWeight: `${n.swaQ}.weight`,
    qBias: `${n.swaQ}.bias`,
    kWeight: `${n.swaK}.weight`,
    kBias: `${n.swaK}.bias`,
    vWeight: `${n.swaV}.weight`,
    vBias: `${n.swaV}.bias`,
    oWeight: n.swaO,
    qNorm: n.swaQNorm,
    kNorm: n.swaKNorm,
  };
}

/** x [B, T, D] (normalised) → mixer output [B, T, D]. Declares state.{layer} [B, (1+N)·H, d, d] in and new_state out, and the window's keys/values. */
export function sseSwaMixer(ctx: GraphContext, layer: number, x: string, rope: RopeTables): string {
  const { g, config } = ctx;
  const sse = config.sse;
  if (sse === null) throw new RangeError('sseSwaMixer: the config has no SSE dimensions');
  const D = config.hiddenSize;
  const n = spb2LayerNames(layer);
  return g.scope('hybrid', () => {
    const sseOut = sseBranch(ctx, layer, x);
    const swaOut = attentionMixer(ctx, layer, windowNames(layer), x, rope, 'swa', { numHeads: sse.numHeads });
    const half = (name: string): string => g.weight(`${name}.half`, [D], () => ctx.ckpt.tensor(name, [D]).data.map((w) => w / 2));
    return g.op('Add', [rmsNorm(ctx, sseOut, half(n.sseMergeNorm), 'sse_merge_norm'), rmsNorm(ctx, swaOut, half(n.swaMergeNorm), 'swa_merge_norm')], {}, { name: 'merge' });
  });
}

function sseBranch(ctx: GraphContext, layer: number, x: string): string {
  const { g, config } = ctx;
  const sse = config.sse;
  if (sse === null) throw new RangeError('sseBranch: the config has no SSE dimensions');
  const { hiddenSize: D, headDim: d } = config;
  const { numHeads: H, numPartitions: N, numWriters: topK } = sse;
  const heads = (1 + N) * H; // of the delta-rule run
  const n = spb2LayerNames(layer);
  return g.scope('sse', () => {
    const w = matmulWeight(ctx, `layers.${layer}.attn.sse_in.weight`, [
      { name: n.sseQ, rows: H * d },
      { name: n.sseK, rows: H * d },
      { name: n.sseV, rows: H * d },
      { name: n.sseA, rows: 2 * H },
      { name: n.sseB, rows: 2 * H },
      { name: n.router, rows: N },
      { name: n.loraQ0, rows: d },
      { name: n.loraK0, rows: d },
    ], D);
    const proj = linear(ctx, x, w, null, 'in_proj');
    const [q1Lin, k1Lin, vLin, a, b, e, loraQ, loraK] = splitLast(ctx, proj, [H * d, H * d, H * d, 2 * H, 2 * H, N, d, d]) as [string, string, string, string, string, string, string, string];
    const lora = (name: string, input: string, base: string, what: string): string =>
      g.op('Add', [base, linear(ctx, input, matmulWeight(ctx, `layers.${layer}.attn.${what}.weight`, [{ name, rows: H * d }], d), null, what)]);
    const q2Lin = lora(n.loraQ1, loraQ, q1Lin, 'lora_q');
    const k2Lin = lora(n.loraK1, loraK, k1Lin, 'lora_k');
    const silu = (t: string): string => g.op('Mul', [t, g.op('Sigmoid', [t])]);
    const act = sse.qkActivation === 'relu' ? (t: string): string => g.op('Relu', [t]) : silu;
    const [q1, k1, q2, k2] = [q1Lin, k1Lin, q2Lin, k2Lin].map(act) as [string, string, string, string];
    const v = silu(vLin);

    // Gates in float32, [B, T, 2H]: the first H drive the shared state, the last H every partition.
    let beta = g.op('Sigmoid', [b]);
    if (sse.allowNegEigval) beta = g.op('Mul', [beta, g.f32([2], [])]);
    const dtBias = g.weight(n.dtBias, [2 * H], () => ctx.ckpt.tensor(n.dtBias, [2 * H]).data);
    const negA = g.weight(`layers.${layer}.attn.neg_A`, [2 * H], () => ctx.ckpt.tensor(n.aLog, [2 * H]).data.map((l) => -Math.exp(l)));
    const decay = g.scope('decay', () => g.op('Mul', [g.op('Softplus', [g.op('Add', [a, dtBias])]), negA]));

    // Router: p = softmax(e) [B, T, N]; χ [B, T, N] = 1 on the top-k (distinct indices: the sum is 0/1).
    const { probs, chosen } = g.scope('router', () => {
      const probs = g.op('Softmax', [e], { axis: int(-1) });
      const [, top] = g.opN('TopK', [probs, g.i64([topK])], { axis: int(-1), largest: int(1), sorted: int(1) }, { outputs: 2 }) as [string, string];
      const ids = g.i64(Array.from({ length: N }, (_, i) => i));
      const hit = g.op('Cast', [g.op('Equal', [g.op('Unsqueeze', [top, g.i64([-1])]), ids])], { to: int(DataType.FLOAT) }); // [B, T, k, N]
      return { probs, chosen: g.op('ReduceSum', [hit, g.i64([-2])], { keepdims: int(0) }) };
    });
    const weightOfPartition = g.op('Mul', [probs, chosen]); // p_n χ_n

    // Per (state, head): [B, T, 1+N, H, ·] then flattened to the run's (1+N)·H heads.
    const stateHeads = (shared: string, partitions: string, scale: string): string => {
      const s5 = reshape(ctx, shared, [ctx.B, ctx.T, 1, H, d]);
      const p5 = g.op('Mul', [reshape(ctx, partitions, [ctx.B, ctx.T, 1, H, d]), reshape(ctx, scale, [ctx.B, ctx.T, N, 1, 1])]);
      return reshape(ctx, g.op('Concat', [s5, p5], { axis: int(2) }), [ctx.B, ctx.T, heads * d]);
    };
    const q = l2normHeads(ctx, stateHeads(q1, q2, weightOfPartition), heads, d, 'q_l2norm');
    const k = l2normHeads(ctx, stateHeads(k1, k2, weightOfPartition), heads, d, 'k_l2norm');
    const vAll = reshape(ctx, g.op('Expand', [reshape(ctx, v, [ctx.B, ctx.T, 1, H, d]), shapeOf(ctx, [ctx.B, ctx.T, 1 + N, H, d])]), [ctx.B, ctx.T, heads * d]);
    const perState = (gate: string): string => {
      const [shared, partitions] = splitLast(ctx, gate, [H, H]) as [string, string];
      const p4 = g.op('Mul', [reshape(ctx, partitions, [ctx.B, ctx.T, 1, H]), g.op('Unsqueeze', [chosen, g.i64([-1])])]);
      return reshape(ctx, g.op('Concat', [reshape(ctx, shared, [ctx.B, ctx.T, 1, H]), p4], { axis: int(2) }), [ctx.B, ctx.T, heads]);
    };
    const decayAll = perState(decay);
    const betaAll = perState(beta);

    const s0 = g.input(stateIn(layer), DataType.FLOAT, ['batch', heads, d, d]);
    const runDims = { numKeyHeads: heads, numValueHeads: heads, keyHeadDim: d, valueHeadDim: d };
    const [o, s1] = ctx.options.fusedOps
      ? fusedDeltaRule(ctx, q, k, vAll, decayAll, betaAll, s0, runDims)
      : chunkedDeltaRule(ctx, q, k, vAll, decayAll, betaAll, s0, runDims);
    g.output(stateOut(layer), s1, DataType.FLOAT, ['batch', heads, d, d]);

    // Σ over the shared and partition states per head, RMSNorm_d per head (one weight [d]), o_proj.
    const summed = g.op('ReduceSum', [reshape(ctx, o, [ctx.B, ctx.T, 1 + N, H, d]), g.i64([2])], { keepdims: int(0) }); // [B, T, H, d]
    const normW = g.weight(n.sseONorm, [d], () => ctx.ckpt.tensor(n.sseONorm, [d]).data);
    const normed = g.scope('o_norm', () =>
      ctx.options.fusedOps
        ? g.op('SimplifiedLayerNormalization', [summed, normW], { axis: int(-1), epsilon: float(config.normEps), stash_type: int(1) })
        : plainRms(g, summed, normW, config.normEps),
    );
    const wOut = matmulWeight(ctx, `layers.${layer}.attn.sse_o_proj.weight`, [{ name: n.sseO, rows: D }], H * d);
    return linear(ctx, reshape(ctx, normed, [ctx.B, ctx.T, H * d]), wOut, null, 'o_proj');
  });
}
