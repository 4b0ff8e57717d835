// The Gated DeltaNet mixer of Qwen3.5 (transformers models/qwen3_5, Qwen3_5GatedDeltaNet; the math in
// docs/models/qwen3_5.md) as ONNX. Per token, with Hk key heads of dk and Hv value heads of dv
// (value head h reads key head ⌊h/(Hv/Hk)⌋):
//   [qkv | z | b | a] = x Wᵀ                                        one MatMul (in_proj_qkv, _z, _b, _a)
//   qkv ← silu(causal depthwise conv1d over time, kernel K, state = the last K−1 inputs)
//   q, k ← l2norm per head (x / sqrt(Σx² + 1e−6)), q ← q · dk^−½
//   β = sigmoid(b), g = −exp(A_log) · softplus(a + dt_bias)          [Hv], g ≤ 0
//   S ← e^g S;  S ← S + k (β (v − Sᵀk))ᵀ;  o = Sᵀ q                   S [Hv, dk, dv]
//   o ← RMSNorm_dv(o) · w ⊙ silu(z);  out = o W_outᵀ
// Two implementations of the conv and the recurrence over a chunk of T tokens:
//  - fused: com.microsoft CausalConvWithState and LinearAttention (update_rule "gated_delta");
//  - plain: shifted slices for the conv and the chunked delta rule below (Scan over sub-chunks).
// The two delta-rule runs are exported with explicit head counts: SpikingBrain 2.0's hybrid layers
// (sse-swa-layer.ts) run their shared and partition states as one run of (1 + N)·H heads.
import type { ModelConfig } from '../config.ts';
import { convStateIn, convStateOut, stateIn, stateOut } from '../io-names.ts';
import { gdnConvDim, type LayerTensorNames } from '../tensor-names.ts';
import { splitLast } from './blocks.ts';
import { chunkPadding, linear, matmulWeight, reshape, shapeOf, transpose, type GraphContext } from './context.ts';
import { float, int, str, type GraphBuilder } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** Epsilon of the l2norm of q and k (transformers' l2norm, which follows the FLA library). */
export const GDN_L2NORM_EPS = 1e-6;

/** Heads and widths of one delta-rule run: value head h reads key head ⌊h/(Hv/Hk)⌋; S is [Hv, dk, dv]. */
export interface DeltaRuleDims {
  readonly numKeyHeads: number; // Hk
  readonly numValueHeads: number; // Hv
  readonly keyHeadDim: number; // dk
  readonly valueHeadDim: number; // dv
}

/** The GDN dimensions of a config that has them. */
function dims(config: ModelConfig): NonNullable<ModelConfig['gdn']> {
  if (config.gdn === null) throw new RangeError('gdnMixer: the config has no GDN dimensions');
  return config.gdn;
}

/** x [B, T, D] (normalised) → mixer output [B, T, D]. Declares conv_state/state.{layer} in and new_* out. */
export function gdnMixer(ctx: GraphContext, layer: number, names: LayerTensorNames, x: string): string {
  const { g, config } = ctx;
  const { numKeyHeads: Hk, numValueHeads: Hv, keyHeadDim: dk, valueHeadDim: dv, convKernel: K } = dims(config);
  const D = config.hiddenSize;
  const convDim = gdnConvDim(config);
  return g.scope('linear_attn', () => {
    const w = matmulWeight(ctx, `layers.${layer}.linear_attn.in_proj.weight`, [
      { name: names.gdnQkv, rows: convDim },
      { name: names.gdnZ, rows: Hv * dv },
      { name: names.gdnB, rows: Hv },
      { name: names.gdnA, rows: Hv },
    ], D);
    const proj = linear(ctx, x, w, null, 'in_proj');
    const [qkvLin, z, b, a] = splitLast(ctx, proj, [convDim, Hv * dv, Hv, Hv]) as [string, string, string, string];

    const convWeight = g.weight(names.gdnConv, [convDim, 1, K], () => ctx.ckpt.tensor(names.gdnConv, [convDim, 1, K]).data);
    const conv0 = g.input(convStateIn(layer), DataType.FLOAT, ['batch', convDim, K - 1]);
    const [qkv, conv1] = ctx.options.fusedOps ? fusedConv(ctx, qkvLin, convWeight, conv0) : plainConv(ctx, qkvLin, convWeight, conv0, convDim, K);
    g.output(convStateOut(layer), conv1, DataType.FLOAT, ['batch', convDim, K - 1]);

    const [qRaw, kRaw, v] = splitLast(ctx, qkv, [Hk * dk, Hk * dk, Hv * dv]) as [string, string, string];
    const q = l2normHeads(ctx, qRaw, Hk, dk, 'q_l2norm'); // [B, T, Hk·dk]
    const k = l2normHeads(ctx, kRaw, Hk, dk, 'k_l2norm');
    const beta = g.op('Sigmoid', [b]); // [B, T, Hv]
    // g = −exp(A_log) · softplus(a + dt_bias): −exp(A_log) is folded into one constant vector.
    const dtBias = g.weight(names.gdnDtBias, [Hv], () => ctx.ckpt.tensor(names.gdnDtBias, [Hv]).data);
    const negA = g.weight(`layers.${layer}.linear_attn.neg_A`, [Hv], () => ctx.ckpt.tensor(names.gdnALog, [Hv]).data.map((l) => -Math.exp(l)));
    const decay = g.scope('decay', () => g.op('Mul', [g.op('Softplus', [g.op('Add', [a, dtBias])]), negA])); // [B, T, Hv], ≤ 0

    const s0 = g.input(stateIn(layer), DataType.FLOAT, ['batch', Hv, dk, dv]);
    const [o, s1] = ctx.options.fusedOps
      ? fusedDeltaRule(ctx, q, k, v, decay, beta, s0, dims(config))
      : chunkedDeltaRule(ctx, q, k, v, decay, beta, s0, dims(config));
    g.output(stateOut(layer), s1, DataType.FLOAT, ['batch', Hv, dk, dv]);

    // Gated RMSNorm per value head (plain weight, not zero-centred), then out_proj.
    const normW = g.weight(names.gdnNorm, [dv], () => ctx.ckpt.tensor(names.gdnNorm, [dv]).data);
    const normed = g.scope('norm', () => {
      const o4 = reshape(ctx, o, [ctx.B, ctx.T, Hv, dv]);
      const n = ctx.options.fusedOps
        ? g.op('SimplifiedLayerNormalization', [o4, normW], { axis: int(-1), epsilon: float(config.normEps), stash_type: int(1) })
        : plainRms(g, o4, normW, config.normEps);
      const gate = g.op('Mul', [z, g.op('Sigmoid', [z])]); // silu(z) [B, T, Hv·dv]
      return g.op('Mul', [reshape(ctx, n, [ctx.B, ctx.T, Hv * dv]), gate]);
    });
    const wOut = matmulWeight(ctx, `layers.${layer}.linear_attn.out_proj.weight`, [{ name: names.gdnOut, rows: D }], Hv * dv);
    return linear(ctx, normed, wOut, null, 'out_proj');
  });
}

/** RMSNorm over the last axis in plain ops with an explicit ε: x / sqrt(mean(x²) + ε) · w. */
export function plainRms(g: GraphBuilder, x: string, weight: string, eps: number): string {
  const ms = g.op('ReduceMean', [g.op('Mul', [x, x])], { axes: { kind: 'ints', value: [-1] }, keepdims: int(1) });
  return g.op('Mul', [g.op('Div', [x, g.op('Sqrt', [g.op('Add', [ms, g.f32([eps], [])])])]), weight]);
}

/** x [B, T, heads·d] → x / sqrt(Σ_d x² + ε) per head, same shape. */
export function l2normHeads(ctx: GraphContext, x: string, heads: number, d: number, name: string): string {
  const { g } = ctx;
  return g.scope(name, () => {
    const x4 = reshape(ctx, x, [ctx.B, ctx.T, heads, d]);
    const ss = g.op('ReduceSum', [g.op('Mul', [x4, x4]), g.i64([-1])], { keepdims: int(1) });
    const normed = g.op('Div', [x4, g.op('Sqrt', [g.op('Add', [ss, g.f32([GDN_L2NORM_EPS], [])])])]);
    return reshape(ctx, normed, [ctx.B, ctx.T, heads * d]);
  });
}

/** CausalConvWithState (SiLU fused) on the channel-major layout it and the conv state share. */
function fusedConv(ctx: GraphContext, x: string, weight: string, state: string): [string, string] {
  const { g } = ctx;
  return g.scope('conv1d', () => {
    const [y, s1] = g.opN('CausalConvWithState', [transpose(ctx, x, [0, 2, 1]), weight, '', state], { activation: str('silu') }, { domain: 'com.microsoft', outputs: 2 }) as [string, string];
    return [transpose(ctx, y, [0, 2, 1]), s1];
  });
}

/**
 * The causal depthwise conv in plain ops, time-major: ext = [stateᵀ; x] [B, K−1+T, C],
 * y_t = silu(Σ_j w[:, j] ⊙ ext_{t+j}) for t < T (K shifted slices), new state = the last K−1 rows of ext.
 */
function plainConv(ctx: GraphContext, x: string, weight: string, state: string, convDim: number, K: number): [string, string] {
  const { g } = ctx;
  return g.scope('conv1d', () => {
    const ext = g.op('Concat', [transpose(ctx, state, [0, 2, 1]), x], { axis: int(1) }); // [B, K−1+T, C]
    const w = reshape(ctx, weight, [convDim, K]);
    let acc = '';
    for (let j = 0; j < K; j++) {
      const end = g.op('Add', [ctx.T, g.i64([j])]);
      const slice = g.op('Slice', [ext, g.i64([j]), end, g.i64([1])]); // [B, T, C]
      const wj = reshape(ctx, g.op('Slice', [w, g.i64([j]), g.i64([j + 1]), g.i64([1])]), [convDim]);
      const term = g.op('Mul', [slice, wj]);
      acc = acc === '' ? term : g.op('Add', [acc, term]);
    }
    const y = g.op('Mul', [acc, g.op('Sigmoid', [acc])]);
    const s1 = transpose(ctx, g.op('Slice', [ext, ctx.T, g.i64([Number.MAX_SAFE_INTEGER]), g.i64([1])]), [0, 2, 1]);
    return [y, s1];
  });
}

/**
 * com.microsoft LinearAttention, gated delta rule: q, k [B, T, Hk·dk] (l2-normed; q is scaled by dk^−½
 * here), v [B, T, Hv·dv], decay/beta [B, T, Hv], s0 [B, Hv, dk, dv] → o [B, T, Hv·dv], s1.
 */
export function fusedDeltaRule(ctx: GraphContext, q: string, k: string, v: string, decay: string, beta: string, s0: string, heads: DeltaRuleDims): [string, string] {
  const { numKeyHeads: Hk, numValueHeads: Hv, keyHeadDim: dk } = heads;
  return ctx.g.opN(
    'LinearAttention',
    [q, k, v, s0, decay, beta],
    { q_num_heads: int(Hk), kv_num_heads: int(Hv), update_rule: str('gated_delta'), scale: float(1 / Math.sqrt(dk)) },
    { domain: 'com.microsoft', outputs: 2 },
  ) as [string, string];
}

/**
 * The chunked gated delta rule in plain ops (the reference path). Per value head, T is padded to
 * Tp = Nc·C (pad rows: k = v = β = g = 0 leave the state unchanged) and cut into sub-chunks of C.
 * Within a sub-chunk, with b_i = Σ_{s≤i} g_s (inclusive, ≤ 0) and Γ_ij = e^{b_i − b_j} for j ≤ i (else 0):
 *   A = strictly-lower((β⊙K) Kᵀ ⊙ Γ),  T = (I + A)⁻¹       (unit lower triangular; the UT transform)
 *   U = T (β⊙V),  W = T (β⊙K ⊙ e^b)                         independent of the state: all sub-chunks at once
 * then a Scan over sub-chunks carries S:
 *   V' = U − W S,   O = (Q ⊙ e^b) S + (Q Kᵀ ⊙ Γ) V',   S ← e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ V'
 * Every exponent is ≤ 0. (I + A)⁻¹ = Π_m (I + N^{2^m}) with N = −A nilpotent (N^C = 0): log2 C
 * squarings, no triangular solve op needed.
 */
export function chunkedDeltaRule(ctx: GraphContext, q: string, k: string, v: string, decay: string, beta: string, s0: string, heads: DeltaRuleDims): [string, string] {
  const { g } = ctx;
  const { numKeyHeads: Hk, numValueHeads: Hv, keyHeadDim: dk, valueHeadDim: dv } = heads;
  const G = Hv / Hk;
  const C = ctx.options.glaSubChunk;
  return g.scope('chunked_delta', () => {
    const i64 = (n: number): string => g.i64([n]);
    // Tp = ⌈T/C⌉·C, Nc = Tp/C, padding = Tp − T.
    const { nc, tp, pad } = chunkPadding(ctx, C);
    // q, k [B, T, Hk·dk] → per value head [B, Hv, Nc, C, dk] (repeat_interleave: head h reads ⌊h/G⌋).
    const keyHeads = (x: string, scale: number): string => {
      let x5 = reshape(ctx, x, [ctx.B, ctx.T, Hk, 1, dk]);
      if (G > 1) x5 = g.op('Expand', [x5, shapeOf(ctx, [ctx.B, ctx.T, Hk, G, dk])]);
      if (scale !== 1) x5 = g.op('Mul', [x5, g.f32([scale], [])]);
      const t = transpose(ctx, reshape(ctx, x5, [ctx.B, ctx.T, Hv, dk]), [0, 2, 1, 3]);
      return reshape(ctx, pad(t, 4, 2), [ctx.B, Hv, nc, C, dk]);
    };
    const qc = keyHeads(q, 1 / Math.sqrt(dk));
    const kc = keyHeads(k, 1);
    const vc = reshape(ctx, pad(transpose(ctx, reshape(ctx, v, [ctx.B, ctx.T, Hv, dv]), [0, 2, 1, 3]), 4, 2), [ctx.B, Hv, nc, C, dv]);
    const perHead = (x: string): string => reshape(ctx, pad(transpose(ctx, x, [0, 2, 1]), 3, 2), [ctx.B, Hv, nc, C]);
    const gc = perHead(decay); // [B, Hv, Nc, C]
    const betac = g.op('Unsqueeze', [perHead(beta), i64(4)]); // [B, Hv, Nc, C, 1]

    const b = g.op('CumSum', [gc, i64(3)]); // inclusive, ≤ 0
    const bLast = g.op('Slice', [b, i64(C - 1), i64(C), i64(3)]); // [B, Hv, Nc, 1]
    const lowerIncl = new Float32Array(C * C);
    const strictLower = new Float32Array(C * C);
    for (let i = 0; i < C; i++) {
      for (let j = 0; j < C; j++) {
        lowerIncl[i * C + j] = j <= i ? 0 : -Infinity;
        strictLower[i * C + j] = j < i ? 1 : 0;
      }
    }
    // Γ [B, Hv, Nc, C(i), C(j)]: e^{b_i − b_j} on and below the diagonal, 0 above.
    const gamma = g.op('Exp', [g.op('Add', [g.op('Sub', [g.op('Unsqueeze', [b, i64(4)]), g.op('Unsqueeze', [b, i64(3)])]), g.f32(lowerIncl, [C, C])])]);
    const kT = transpose(ctx, kc, [0, 1, 2, 4, 3]); // [B, Hv, Nc, dk, C]
    const kBeta = g.op('Mul', [kc, betac]);
    const a = g.op('Mul', [g.op('Mul', [g.op('MatMul', [kBeta, kT]), gamma]), g.f32(strictLower, [C, C])]);
    const tInv = g.scope('ut_inverse', () => {
      // (I + A)⁻¹ = (I + N)(I + N²)(I + N⁴)… with N = −A.
      const eye = new Float32Array(C * C);
      for (let i = 0; i < C; i++) eye[i * C + i] = 1;
      let nPow = g.op('Neg', [a]);
      let p = g.op('Add', [nPow, g.f32(eye, [C, C])]);
      for (let m = 2; m < C; m *= 2) {
        nPow = g.op('MatMul', [nPow, nPow]);
        p = g.op('Add', [p, g.op('MatMul', [p, nPow])]);
      }
      return p;
    });
    const eb = g.op('Unsqueeze', [g.op('Exp', [b]), i64(4)]); // [B, Hv, Nc, C, 1]
    const u = g.op('MatMul', [tInv, g.op('Mul', [vc, betac])]); // [B, Hv, Nc, C, dv]
    const w = g.op('MatMul', [tInv, g.op('Mul', [kBeta, eb])]); // [B, Hv, Nc, C, dk]
    const intra = g.op('Mul', [g.op('MatMul', [qc, kT]), gamma]); // [B, Hv, Nc, C, C]
    const qd = g.op('Mul', [qc, eb]); // [B, Hv, Nc, C, dk]
    const kd = g.op('Mul', [kc, g.op('Unsqueeze', [g.op('Exp', [g.op('Sub', [bLast, b])]), i64(4)])]); // [B, Hv, Nc, C, dk]
    const chunkDecay = g.op('Unsqueeze', [g.op('Exp', [bLast]), i64(4)]); // [B, Hv, Nc, 1, 1]

    // Scan over sub-chunks (axis 2); the body sees one sub-chunk of each: [B, Hv, C, ·].
    const body = g.subgraph('scan_body', (sb) => {
      const f = DataType.FLOAT;
      const sIn = sb.input(sb.freshName('S_in'), f, ['batch', Hv, dk, dv]);
      const uN = sb.input(sb.freshName('U_n'), f, ['batch', Hv, C, dv]);
      const wN = sb.input(sb.freshName('W_n'), f, ['batch', Hv, C, dk]);
      const qN = sb.input(sb.freshName('Qd_n'), f, ['batch', Hv, C, dk]);
      const kN = sb.input(sb.freshName('Kd_n'), f, ['batch', Hv, C, dk]);
      const iN = sb.input(sb.freshName('intra_n'), f, ['batch', Hv, C, C]);
      const dN = sb.input(sb.freshName('decay_n'), f, ['batch', Hv, 1, 1]);
      const vNew = sb.op('Sub', [uN, sb.op('MatMul', [wN, sIn])]); // [B, Hv, C, dv]
      const o = sb.op('Add', [sb.op('MatMul', [qN, sIn]), sb.op('MatMul', [iN, vNew])]);
      const kNT = sb.op('Transpose', [kN], { perm: { kind: 'ints', value: [0, 1, 3, 2] } });
      const sOut = sb.op('Add', [sb.op('Mul', [sIn, dN]), sb.op('MatMul', [kNT, vNew])]);
      sb.output(sb.freshName('S_out'), sOut, f, ['batch', Hv, dk, dv]);
      sb.output(sb.freshName('O_n'), o, f, ['batch', Hv, C, dv]);
    });
    const [s1, oc] = g.opN('Scan', [s0, u, w, qd, kd, intra, chunkDecay], {
      body: { kind: 'graph', value: body },
      num_scan_inputs: int(6),
      scan_input_axes: { kind: 'ints', value: [2, 2, 2, 2, 2, 2] },
      scan_output_axes: { kind: 'ints', value: [2] },
    }, { outputs: 2 }) as [string, string];
    // oc [B, Hv, Nc, C, dv] → [B, Hv, Tp, dv] → drop padding → [B, T, Hv·dv].
    const oT = g.op('Slice', [reshape(ctx, oc, [ctx.B, Hv, tp, dv]), i64(0), ctx.T, i64(2)]);
    return [reshape(ctx, transpose(ctx, oT, [0, 2, 1, 3]), [ctx.B, ctx.T, Hv * dv]), s1];
  });
}
