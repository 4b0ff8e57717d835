// MoBA's block selection (SpikingBrain 2.0's MoBA layers; docs/models/spikingbrain2.md, "MoBA layers")
// as an additive mask over the keys an attention layer sees in the step graph (past slots, then the
// chunk's tokens). Keys are cut in chunks of C positions from position 0. For a query at qp in chunk
// c_q = ⌊qp/C⌋ and a key at kp in chunk c_k = ⌊kp/C⌋:
//   gate(c)  = q · mean_{kp ∈ chunk c} k          for every earlier chunk c < c_q (complete by construction)
//   selected = the top (K−1) earlier chunks by gate, ties to the lower chunk index (ONNX TopK's order,
//              test/spikingbrain2-numerics.test.ts checks it in onnxruntime)
//   attended = c_k = c_q (causality comes from the layer's causal mask) or c_k selected
// Chunks are found by position, not by slot: a chunk's keys may lie partly in the past slots and partly
// in the chunk (chunked prefill), in any slot order, so a prompt selects the same keys however it is cut.
// Rows whose MOBA_SELECT is false (tokens the model generated) attend every key (no bias).
//
// q is the layer's query after norm and RoPE, scaled by d^−½ (folded into its weights): a positive
// scale does not change the ranking. Chunk count NC = the batch's last query chunk + 1.
// Extra work per layer over attention: chunk means [B, Hkv, NC, d] (one MatMul over the P+T keys),
// gates [B, Hkv, G·T, NC], and the chunk → key expansion [NC] → [P+T] per query (a MatMul of 0/1 values).
// A run none of whose prompt queries has more than K − 1 earlier chunks (every position below K·C:
// 48K tokens for the released 5B) selects every earlier chunk, which is causal attention: an If node
// skips the selection there (mobaMask).
import type { GraphContext } from './context.ts';
import { int, type GraphBuilder } from './graph-builder.ts';
import { DataType } from './proto.ts';

/** The additive value of a key a query must not attend (as the causal masks). */
const MASKED = -1e30;

/** What every MoBA layer of a graph shares: positions → chunks, built once. */
interface ChunkLayout {
  /** [B, 1, NC, P+T] float32: 1 where the key slot holds a position of chunk c, else 0 (empty slots: 0). */
  readonly keyChunks: string;
  /** [NC] int64 chunk indices 0…NC−1. */
  readonly chunkIds: string;
  /** [B, 1, 1, T, NC] bool: chunk c is earlier than the query's (a candidate). */
  readonly earlier: string;
  /** [B, 1, 1, T, NC] float32: 1 for the query's own chunk. */
  readonly own: string;
  /** [B, 1, 1, T, 1] bool: the row is a generated token (no selection). */
  readonly dense: string;
  /** [1] int64 min(K − 1, NC): how many earlier chunks TopK returns. */
  readonly topCount: string;
  /** [] bool: some prompt query of the run has more than K − 1 earlier chunks (MoBA leaves keys out). */
  readonly selects: string;
}

const layouts = new WeakMap<GraphContext, ChunkLayout>();

function chunkLayout(ctx: GraphContext, C: number, K: number): ChunkLayout {
  const cached = layouts.get(ctx);
  if (cached !== undefined) return cached;
  const { g } = ctx;
  const layout = g.scope('moba_chunks', (): ChunkLayout => {
    const { positions, pastPositions, select } = ctx.mobaInputs();
    const keyPos = g.op('Concat', [pastPositions, positions], { axis: int(1) }); // [B, P+T]
    const keyChunk = g.op('Div', [keyPos, g.i32([C], [])]); // empty slots (−1) truncate to 0: masked by `valid`
    const queryChunk = g.op('Div', [positions, g.i32([C], [])]); // [B, T]
    const nc = g.op('Add', [g.op('ReduceMax', [queryChunk], { keepdims: int(0) }), g.i32([1], [])]); // [] int32
    const ids = g.op('Range', [g.i32([0], []), nc, g.i32([1], [])]); // [NC] int32
    const valid = g.op('Unsqueeze', [g.op('GreaterOrEqual', [keyPos, g.i32([0], [])]), g.i64([-1])]); // [B, P+T, 1]
    const member = g.op('And', [g.op('Equal', [g.op('Unsqueeze', [keyChunk, g.i64([-1])]), ids]), valid]); // [B, P+T, NC]
    const keyChunks = g.op('Unsqueeze', [g.op('Transpose', [g.op('Cast', [member], { to: int(DataType.FLOAT) })], { perm: { kind: 'ints', value: [0, 2, 1] } }), g.i64([1])]);
    const qc = g.op('Unsqueeze', [queryChunk, g.i64([-1])]); // [B, T, 1]
    const toQueryRows = (x: string): string => g.op('Unsqueeze', [x, g.i64([1, 2])]); // [B, T, ·] → [B, 1, 1, T, ·]
    const ncI64 = g.op('Cast', [g.op('Unsqueeze', [nc, g.i64([0])])], { to: int(DataType.INT64) }); // [1]
    return {
      keyChunks,
      chunkIds: g.op('Cast', [ids], { to: int(DataType.INT64) }),
      earlier: toQueryRows(g.op('Less', [ids, qc])),
      own: toQueryRows(g.op('Cast', [g.op('Equal', [ids, qc])], { to: int(DataType.FLOAT) })),
      dense: g.op('Unsqueeze', [g.op('Not', [select]), g.i64([1, 2, 4])]),
      topCount: g.op('Min', [g.i64([K - 1]), ncI64]),
      selects: g.op('Cast', [
        g.op('ReduceMax', [g.op('Cast', [g.op('And', [select, g.op('GreaterOrEqual', [queryChunk, g.i32([K], [])])])], { to: int(DataType.INT32) })], { keepdims: int(0) }),
      ], { to: int(DataType.BOOL) }),
    };
  });
  layouts.set(ctx, layout);
  return layout;
}

/**
 * An attention mask with MoBA's selection: `combine(b, bias)` adds the bias of selectionBias to the
 * layer's causal mask on builder b, in the branch of an If node taken when the run's prompt queries can
 * leave chunks out; the other branch is `causal` itself (the selection would keep every earlier chunk).
 * Both branches give float32 masks of rank `rank` that Attention broadcasts. `keys(b)` builds the
 * [B, Hkv, P+T, d] keys the chunk means are taken over, inside the selecting branch only.
 */
export function mobaMask(ctx: GraphContext, qg: string, keys: (b: GraphBuilder) => string, G: number, causal: string, rank: number, combine: (b: GraphBuilder, bias: string) => string): string {
  const { g, config } = ctx;
  const moba = config.moba;
  if (moba === null) throw new RangeError('mobaMask: the config has no MoBA layers');
  const L = chunkLayout(ctx, moba.chunkTokens, moba.topk);
  const dims = Array.from({ length: rank }, (_, i) => `moba_mask_${i}`);
  return g.scope('moba', () => {
    // B and T are read here, in the outer graph, before the branches use them.
    const shape = { B: ctx.B, T: ctx.T };
    const selecting = g.subgraph('select', (sb) => {
      sb.output(sb.freshName('moba_mask'), combine(sb, selectionBias(sb, ctx, L, shape, qg, keys(sb), G)), DataType.FLOAT, dims);
    });
    const causalOnly = g.subgraph('causal', (sb) => {
      sb.output(sb.freshName('causal_mask'), causal, DataType.FLOAT, dims);
    });
    return g.op('If', [L.selects], { then_branch: { kind: 'graph', value: selecting }, else_branch: { kind: 'graph', value: causalOnly } });
  });
}

/**
 * The selection of one MoBA layer on builder b: qg [B, Hkv, G·T, d] (queries grouped by kv head,
 * h = kv·G + g), keys [B, Hkv, P+T, d] → [B, Hkv, G, T, P+T] float32, 0 where attended and −1e30 where
 * not (to add to the causal mask).
 */
function selectionBias(b: GraphBuilder, ctx: GraphContext, L: ChunkLayout, shape: { B: string; T: string }, qg: string, keys: string, G: number): string {
  const { config } = ctx;
  const { chunkTokens: C, topk: K } = config.moba!;
  const { numKvHeads: Hkv } = config;
  const means = b.op('Mul', [b.op('MatMul', [L.keyChunks, keys]), b.f32([1 / C], [])]); // [B, Hkv, NC, d]
  const gates = b.op('Reshape', [
    b.op('MatMul', [qg, b.op('Transpose', [means], { perm: { kind: 'ints', value: [0, 1, 3, 2] } })]), // [B, Hkv, G·T, NC]
    b.op('Concat', [shape.B, b.i64([Hkv, G]), shape.T, b.i64([-1])], { axis: int(0) }),
  ]); // [B, Hkv, G, T, NC]
  let chunkOk = L.own; // [·, T, NC] 1 where the query's keys may come from chunk c
  if (K > 1) {
    const candidates = b.op('Where', [L.earlier, gates, b.f32([-Infinity], [])]);
    const [, top] = b.opN('TopK', [candidates, L.topCount], { axis: int(-1), largest: int(1), sorted: int(1) }, { outputs: 2 }) as [string, string];
    // One-hot of the picked chunks (distinct indices: the sum is 0 or 1), only earlier ones (TopK fills
    // up with later chunks when fewer than K − 1 earlier ones exist).
    const hit = b.op('Equal', [b.op('Unsqueeze', [top, b.i64([-1])]), L.chunkIds]); // [B, Hkv, G, T, k, NC]
    const picked = b.op('ReduceSum', [b.op('Cast', [hit], { to: int(DataType.FLOAT) }), b.i64([-2])], { keepdims: int(0) });
    chunkOk = b.op('Add', [b.op('Mul', [picked, b.op('Cast', [L.earlier], { to: int(DataType.FLOAT) })]), chunkOk]);
  }
  const keyOk = b.op('MatMul', [chunkOk, b.op('Unsqueeze', [L.keyChunks, b.i64([1])])]); // [B, Hkv|1, G|1, T, P+T], 0 or 1
  const attended = b.op('Or', [b.op('Greater', [keyOk, b.f32([0.5], [])]), L.dense]);
  return b.op('Where', [attended, b.f32([0], []), b.f32([MASKED], [])]);
}
