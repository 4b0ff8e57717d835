// The gated-linear-attention mixer (DESIGN.md §2, "GLA mixer") as ONNX: fused q/k/v/gate projection,
// gates g = logsigmoid(·)/16, the recurrence S ← diag(e^g) S + kᵀv, o = (q·d^-½) S, g_norm, o_proj.
// The state is per KV head [B, Hkv, d, d]; query head h reads kv head ⌊h/G⌋, G = H/Hkv.
//
// Two implementations of the recurrence over a chunk of T tokens:
//  - fused: com.microsoft LinearAttention (update_rule "gated", decay per key dim) — the fast path;
//  - plain: the two-level chunked form below in standard ops — the reference path.
import { stateIn, stateOut } from '../io-names.ts';
import { GK_RANK, type LayerTensorNames } from '../tensor-names.ts';
import { rmsNorm, splitLast } from './blocks.ts';
import { linearInput } from './spike-coding.ts';
import { chunkPadding, linear, matmulWeight, reshape, transpose, vectorWeight, type GraphContext, type WeightPart } from './context.ts';
import { float, int, str } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** x [B, T, D] (normalised) → mixer output [B, T, D]. Declares state.{layer} in and new_state.{layer} out. */
export function glaMixer(ctx: GraphContext, layer: number, names: LayerTensorNames, x: string): string {
  const { g, config } = ctx;
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d } = config;
  const lowRank = ctx.ckpt.has(names.gk0Weight);
  const gateRows = lowRank ? GK_RANK : Hkv * d;
  return g.scope('attn', () => {
    const scale = 1 / Math.sqrt(d);
    // relu(scale·z) = scale·relu(z): the query scale is folded into Wq and bq.
    const wParts: WeightPart[] = [
      { name: names.qWeight, rows: H * d, scale },
      { name: names.kWeight, rows: Hkv * d },
      { name: names.vWeight, rows: Hkv * d },
      // Full-rank gate rows are negated (see `gate` below); the low-rank Wg1 is not (Wg2 is).
      { name: lowRank ? names.gk0Weight : names.gkWeight, rows: gateRows, scale: lowRank ? 1 : -1 },
    ];
    const bParts: WeightPart[] = [
      { name: names.qBias, rows: H * d, scale },
      { name: names.kBias, rows: Hkv * d },
      { name: names.vBias, rows: Hkv * d },
      lowRank ? { name: '', rows: gateRows, zeros: true } : { name: names.gkBias, rows: gateRows, scale: -1 },
    ];
    const w = matmulWeight(ctx, `layers.${layer}.attn.qkvg.weight`, wParts, D);
    const b = vectorWeight(ctx, `layers.${layer}.attn.qkvg.bias`, bParts);
    const proj = linear(ctx, linearInput(ctx, x), w, b, 'qkvg_proj');
    const [qLin, kLin, v, gLin] = splitLast(ctx, proj, [H * d, Hkv * d, Hkv * d, gateRows]) as [string, string, string, string];
    const q = g.op('Relu', [qLin]); // [B, T, H·d], already times d^-½
    const k = g.op('Relu', [kLin]); // [B, T, Hkv·d]
    // Gate logits are built negated, −z (the last linear map's weights and bias times −1), so that
    // logsigmoid(z)/16 = −softplus(−z)/16 needs no Neg node. [B, T, Hkv·d], every entry ≤ 0.
    let negLogits = gLin;
    if (lowRank) {
      const w2 = matmulWeight(ctx, `layers.${layer}.attn.gk_proj.1.weight`, [{ name: names.gk1Weight, rows: Hkv * d, scale: -1 }], GK_RANK);
      const b2 = vectorWeight(ctx, `layers.${layer}.attn.gk_proj.1.bias`, [{ name: names.gk1Bias, rows: Hkv * d, scale: -1 }]);
      negLogits = linear(ctx, gLin, w2, b2, 'gk_proj.1');
    }
    const gate = g.scope('gate', () => g.op('Mul', [g.op('Softplus', [negLogits]), g.f32([-1 / 16], [])]));

    const s0 = g.input(stateIn(layer), DataType.FLOAT, ['batch', Hkv, d, d]);
    const [o, s1] = ctx.options.fusedOps ? fusedRecurrence(ctx, q, k, v, gate, s0) : chunkedRecurrence(ctx, q, k, v, gate, s0);
    g.output(stateOut(layer), s1, DataType.FLOAT, ['batch', Hkv, d, d]);

    // o [B, T, H·d] → g_norm per head over d → o_proj (the reshapes keep B and T: 0 = the input's dim).
    const gNorm = g.weight(names.gNorm, [d], () => ctx.ckpt.tensor(names.gNorm, [d]).data);
    const normed = reshape(ctx, rmsNorm(ctx, reshape(ctx, o, [0, 0, H, d]), gNorm, 'g_norm'), [0, 0, H * d]);
    const wO = matmulWeight(ctx, `layers.${layer}.attn.o_proj.weight`, [{ name: names.oWeight, rows: D }], H * d);
    return linear(ctx, linearInput(ctx, normed), wO, null, 'o_proj');
  });
}

/** com.microsoft LinearAttention on q, k, v, g [B, T, ·]; returns (o [B, T, H·d], new state). */
function fusedRecurrence(ctx: GraphContext, q: string, k: string, v: string, gate: string, s0: string): [string, string] {
  const { numHeads: H, numKvHeads: Hkv } = ctx.config;
  return ctx.g.opN(
    'LinearAttention',
    [q, k, v, s0, gate],
    { q_num_heads: int(H), kv_num_heads: int(Hkv), update_rule: str('gated'), scale: float(1) },
    { domain: 'com.microsoft', outputs: 2 },
  ) as [string, string];
}

/**
 * The chunked recurrence in plain ops. T is padded to Tp = Nc·C (pad rows: k = v = g = 0, which leave
 * the state unchanged). Per sub-chunk n, with b = inclusive cumsum of g inside the sub-chunk (≤ 0):
 *   intra:  A[i,j] = Σ_c q_i[c] k_j[c] e^{b_i[c]−b_j[c]} (j ≤ i; j > i masked to −∞ before exp)
 *   U_n = Σ_j (k_j ⊙ e^{b_C−b_j})ᵀ v_j,   Λ_n = b_C (total log-decay of the sub-chunk)
 *   S_start(n) = diag(e^{c_{n−1}}) S₀ + Σ_{m<n} diag(e^{c_{n−1}−c_m}) U_m,   c_n = Σ_{r≤n} Λ_r
 *   o_i = (q_i ⊙ e^{b_i}) S_start(n) + Σ_j A[i,j] v_j
 * Every exponent is ≤ 0; nothing is factored as e^{b_i}·e^{−b_j}. S_start(Nc) is the new state.
 */
function chunkedRecurrence(ctx: GraphContext, q: string, k: string, v: string, gate: string, s0: string): [string, string] {
  const { g } = ctx;
  const { numHeads: H, numKvHeads: Hkv, headDim: d } = ctx.config;
  const G = H / Hkv;
  const C = ctx.options.glaSubChunk;
  return g.scope('chunked_gla', () => {
    const i64 = (n: number): string => g.i64([n]);
    // Tp = ⌈T/C⌉·C, Nc = Tp/C, padding = Tp − T.
    const { nc, tp, pad } = chunkPadding(ctx, C);
    // [B, T, Hkv·d] → [B, Hkv, Nc, C, d]; q [B, T, H·d] → [B, Hkv, Nc, C, G, d].
    const heads = (x: string): string =>
      reshape(ctx, pad(transpose(ctx, reshape(ctx, x, [ctx.B, ctx.T, Hkv, d]), [0, 2, 1, 3]), 4, 2), [ctx.B, Hkv, nc, C, d]);
    const kc = heads(k);
    const vc = heads(v);
    const gc = heads(gate);
    const qc = reshape(ctx, pad(transpose(ctx, reshape(ctx, q, [ctx.B, ctx.T, Hkv, G, d]), [0, 2, 1, 3, 4]), 5, 2), [ctx.B, Hkv, nc, C, G, d]);

    const b = g.op('CumSum', [gc, i64(3)]); // [B, Hkv, Nc, C, d], inclusive
    const bLast = g.op('Slice', [b, i64(C - 1), i64(C), i64(3)]); // [B, Hkv, Nc, 1, d]

    // Intra-sub-chunk scores through the [C, C, d] decay tensor.
    const causal = new Float32Array(C * C);
    for (let i = 0; i < C; i++) for (let j = i + 1; j < C; j++) causal[i * C + j] = -Infinity;
    const expo = g.op('Add', [g.op('Sub', [g.op('Unsqueeze', [b, i64(4)]), g.op('Unsqueeze', [b, i64(3)])]), g.f32(causal, [C, C, 1])]);
    const kx = g.op('Mul', [g.op('Exp', [expo]), g.op('Unsqueeze', [kc, i64(3)])]); // [B, Hkv, Nc, C(i), C(j), d]
    const scoresT = g.op('MatMul', [kx, transpose(ctx, qc, [0, 1, 2, 3, 5, 4])]); // [B, Hkv, Nc, C(i), C(j), G]
    const scores = transpose(ctx, scoresT, [0, 1, 2, 3, 5, 4]); // [B, Hkv, Nc, C(i), G, C(j)]
    const oIntra = g.op('MatMul', [scores, g.op('Unsqueeze', [vc, i64(3)])]); // [B, Hkv, Nc, C, G, d]

    // Per-sub-chunk state contributions U [B, Hkv, Nc, d, d].
    const kDecayed = g.op('Mul', [kc, g.op('Exp', [g.op('Sub', [bLast, b])])]);
    const u = g.op('MatMul', [transpose(ctx, kDecayed, [0, 1, 2, 4, 3]), vc]);

    // States at sub-chunk starts n = 0…Nc (n = Nc is the state after the chunk).
    const lambda = g.op('Squeeze', [bLast, i64(3)]); // [B, Hkv, Nc, d]
    const lambdaPad = g.op('Pad', [lambda, g.i64([0, 0, 0, 0, 0, 0, 1, 0])]); // [B, Hkv, Nc+1, d]
    const cEx = g.op('CumSum', [lambdaPad, i64(2)], { exclusive: int(1) }); // c_{n−1}
    const ncPlus1 = g.op('Add', [nc, i64(1)]);
    const cIn = g.op('Slice', [cEx, i64(1), ncPlus1, i64(2)]); // c_m, [B, Hkv, Nc, d]
    const n = g.op('Range', [g.i64([0], []), g.op('Squeeze', [ncPlus1]), g.i64([1], [])]);
    const m = g.op('Range', [g.i64([0], []), g.op('Squeeze', [nc]), g.i64([1], [])]);
    const before = g.op('Less', [g.op('Unsqueeze', [m, i64(0)]), g.op('Unsqueeze', [n, i64(1)])]); // [Nc+1, Nc]: m < n
    const maskNM = g.op('Unsqueeze', [g.op('Where', [before, g.f32([0], []), g.f32([-Infinity], [])]), i64(2)]); // [Nc+1, Nc, 1]
    const mix = g.op('Exp', [g.op('Add', [g.op('Sub', [g.op('Unsqueeze', [cEx, i64(3)]), g.op('Unsqueeze', [cIn, i64(2)])]), maskNM])]);
    // Σ_m mix[n,m,c] U_m[c,e] as a batched MatMul over c: [B,Hkv,d,Nc+1,Nc] @ [B,Hkv,d,Nc,d].
    const mixed = g.op('MatMul', [transpose(ctx, mix, [0, 1, 4, 2, 3]), transpose(ctx, u, [0, 1, 3, 2, 4])]);
    const fromU = transpose(ctx, mixed, [0, 1, 3, 2, 4]); // [B, Hkv, Nc+1, d, d]
    const fromS0 = g.op('Mul', [g.op('Unsqueeze', [g.op('Exp', [cEx]), i64(4)]), g.op('Unsqueeze', [s0, i64(2)])]);
    const starts = g.op('Add', [fromU, fromS0]); // [B, Hkv, Nc+1, d, d]
    const s1 = g.op('Gather', [starts, g.op('Squeeze', [nc])], { axis: int(2) }); // [B, Hkv, d, d]

    // Inter-sub-chunk output (q_i ⊙ e^{b_i}) S_start(n).
    const qd = g.op('Mul', [qc, g.op('Unsqueeze', [g.op('Exp', [b]), i64(4)])]); // [B, Hkv, Nc, C, G, d]
    const sStart = g.op('Slice', [starts, i64(0), nc, i64(2)]); // [B, Hkv, Nc, d, d]
    const oInter = g.op('MatMul', [reshape(ctx, qd, [ctx.B, Hkv, nc, C * G, d]), sStart]);
    const o = g.op('Add', [oIntra, reshape(ctx, oInter, [ctx.B, Hkv, nc, C, G, d])]);
    // [B, Hkv, Tp, G, d] → drop padding → [B, T, Hkv, G, d] → [B, T, H·d].
    const oT = g.op('Slice', [reshape(ctx, o, [ctx.B, Hkv, tp, G, d]), i64(0), ctx.T, i64(2)]);
    return [reshape(ctx, transpose(ctx, oT, [0, 2, 1, 3, 4]), [ctx.B, ctx.T, H * d]), s1];
  });
}
