// SpikingBrain 2.0 (sse_swa_moba) numerics: the built ONNX graph in a real onnxruntime session, on the two
// tiny crosscheck checkpoints (test/fixtures/spikingbrain2-crosscheck: the released configs' options and
// the other options the parser accepts; float32 weights, plus a bf16 copy written here), against the
// float64 reference (helpers/reference-spikingbrain2.ts, itself equal to the official HF logits at ≤ 7.1e-6
// in spikingbrain2-reference.test.ts). Tolerance: 1e-4 max abs on logits.
// Both graph variants: fused (LinearAttention, ONNX Attention, contrib norms) and plain ops (the chunked
// delta rule, plain attention), each also with the decode graph (T = 1) as a second session.
// Prompt tokens use MoBA selection however the prompt is cut; generated tokens (decodeBatch) attend
// densely in the MoBA layers, as the reference's `{ moba: false }`.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { Model } from '../src/engine/model/model.ts';
import { decodeBatch, newSequence, prefill, stepSequences, type Sequence } from '../src/engine/model/sequence.ts';
import { GraphBuilder, int } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { openSafetensorsDir, readSafetensorsEntry } from '../src/engine/model/safetensors.ts';
import { encodeSafetensors, f32ToBf16Bits } from './helpers/checkpoint-writer.ts';
import { openSpikingBrain2Dir, SpikingBrain2Reference } from './helpers/reference-spikingbrain2.ts';
import { copySequence, maxAbs32, maxAbsDiff, prompt } from './helpers/numerics.ts';

const TOL = 1e-4;
const FIXTURES = join(import.meta.dirname, 'fixtures', 'spikingbrain2-crosscheck');
/** 48 prompt tokens: past K·C (24 and 12) MoBA leaves chunks out; 6 and 8 chunks of C, several windows. */
const PROMPT = 48;

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-spb2-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** A copy of a fixture with every float32 tensor stored as bf16 (the reference reads the same rounded values). */
function bf16Copy(name: string): string {
  const dir = join(root, `${name}-bf16`);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  const store = openSafetensorsDir(join(FIXTURES, name));
  const tensors = [...store.entries.values()].map((e) => {
    const data = readSafetensorsEntry(e).data;
    const bytes = Buffer.alloc(data.length * 2);
    data.forEach((x, i) => bytes.writeUInt16LE(f32ToBf16Bits(x), i * 2));
    return { name: e.name, shape: e.shape, bytes, dtype: 'BF16' as const };
  });
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  return dir;
}

let caseNo = 0;
async function loadCase(dir: string, fusedOps: boolean, decodeGraph = false) {
  const ckpt = openCheckpoint(dir);
  const model = await Model.load(ckpt, { cacheDir: join(root, `models-${caseNo++}`), fusedOps, intraOpThreads: 1, ...(decodeGraph ? { decodeIntraOpThreads: 1 } : {}) });
  const weights = openSpikingBrain2Dir(dir);
  return { ckpt, model, weights };
}

const CHECKPOINTS = [
  { name: 'released-options', W: 6, C: 8 },
  { name: 'other-options', W: 4, C: 6 },
] as const;

describe.each([
  { variant: 'fused', fusedOps: true },
  { variant: 'plain', fusedOps: false },
])('SpikingBrain 2.0 logits vs float64 reference ($variant graph)', ({ fusedOps }) => {
  it.each([
    { name: 'released-options', bf16: false },
    { name: 'other-options', bf16: false },
    { name: 'released-options', bf16: true },
  ])('$name (bf16: $bf16): one-shot prompt, every position; the official one-shot logits too', async ({ name, bf16 }) => {
    const dir = bf16 ? bf16Copy(name) : join(FIXTURES, name);
    const { ckpt, model, weights } = await loadCase(dir, fusedOps);
    try {
      expect(ckpt.config.modelType).toBe('sse_swa_moba');
      const V = ckpt.config.vocabSize;
      const ids = prompt(PROMPT, V);
      const ref = new SpikingBrain2Reference(weights).forward(ids);
      const logits = await prefill(model, newSequence(model), ids, { allLogits: true });
      const diff = maxAbsDiff(logits, ref, V);
      console.log(`spikingbrain2 ${name}${bf16 ? ' bf16' : ''} ${fusedOps ? 'fused' : 'plain'} one-shot vs reference: max |Δlogit| = ${diff.toExponential(2)}`);
      expect(diff).toBeLessThan(TOL);
      if (!bf16) {
        // The official HF logits of the fixture's 40 tokens, one-shot.
        const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as { token_ids: number[]; logits: number[][] };
        const official = await prefill(model, newSequence(model), expected.token_ids, { allLogits: true });
        expect(maxAbsDiff(official, expected.logits.map((r) => Float64Array.from(r)), V)).toBeLessThan(TOL);
      }
    } finally {
      await model.close();
    }
  });
});

describe.each([
  { variant: 'fused', fusedOps: true, decodeGraph: false },
  { variant: 'plain', fusedOps: false, decodeGraph: false },
  { variant: 'fused, decode graph', fusedOps: true, decodeGraph: true },
  { variant: 'plain, decode graph', fusedOps: false, decodeGraph: true },
])('SpikingBrain 2.0 chunked, resumed and batched runs ($variant graph)', ({ fusedOps, decodeGraph }) => {
  describe.each(CHECKPOINTS)('$name (window W = $W, MoBA chunk C = $C)', ({ name, W, C }) => {
    let ctx: Awaited<ReturnType<typeof loadCase>>;
    let V: number;
    let ids: number[];
    let oneShot: Float32Array;
    beforeAll(async () => {
      ctx = await loadCase(join(FIXTURES, name), fusedOps, decodeGraph);
      expect(ctx.model.decodeThreads).toBe(decodeGraph ? 1 : null);
      V = ctx.ckpt.config.vocabSize;
      ids = prompt(PROMPT, V, 1);
      oneShot = await prefill(ctx.model, newSequence(ctx.model), ids, { allLogits: true });
      expect(maxAbsDiff(oneShot, new SpikingBrain2Reference(ctx.weights).forward(ids), V)).toBeLessThan(TOL);
    });
    afterAll(async () => {
      await ctx.model.close();
    });

    it.each([1, W - 1, W, W + 1, C - 1, C, C + 1])('prompt in chunks of %i tokens equals one-shot (MoBA selection across chunks)', async (chunk) => {
      const { model } = ctx;
      const seq = newSequence(model);
      const all = new Float32Array(PROMPT * V);
      for (let start = 0; start < PROMPT; start += chunk) {
        all.set(await stepSequences(model, [seq], [ids.slice(start, start + chunk)], true), start * V);
        expect(seq.stateBytes).toBe(model.stateBytesPerSequence);
        // The window layers keep their own past of the last W positions; MoBA and full layers every one.
        expect(seq.windowKeptTokens).toBe(Math.min(model.config.slidingWindow!, seq.numTokens));
        expect(seq.keptTokens).toBe(seq.numTokens);
      }
      const perToken = 2 * model.config.numKvHeads * model.config.headDim * 4;
      const windowLayers = model.windowLayers.filter((w) => w).length;
      expect(model.hasWindowPast).toBe(true);
      expect(seq.kvBytes).toBe(perToken * (windowLayers * model.config.slidingWindow! + (model.attentionLayers.length - windowLayers) * PROMPT));
      expect(maxAbs32(all, oneShot)).toBeLessThan(TOL);
    });

    it('a run resumed from a copy of the state (a snapshot) continues exactly, then decodes densely as the reference', async () => {
      const { model, weights } = ctx;
      const first = newSequence(model);
      const split = C + 3;
      const decodeFrom = PROMPT - 4;
      await prefill(model, first, ids.slice(0, split), { chunkTokens: 5 });
      const resumed = copySequence(model, first);
      const rest = await prefill(model, resumed, ids.slice(split, decodeFrom), { allLogits: true, chunkTokens: 9 });
      expect(maxAbs32(rest, oneShot.subarray(split * V, decodeFrom * V))).toBeLessThan(TOL);
      // Generated tokens: MoBA layers attend every position (the reference's { moba: false }).
      const ref = new SpikingBrain2Reference(weights);
      ref.forward(ids.slice(0, decodeFrom));
      const wanted = ref.forward(ids.slice(decodeFrom), { moba: false });
      let denseVsMoba = 0;
      for (let t = decodeFrom; t < PROMPT; t++) {
        const [logits] = await decodeBatch(model, [resumed], [ids[t] ?? 0]);
        expect(maxAbsDiff(logits ?? new Float32Array(0), [wanted[t - decodeFrom] ?? new Float64Array(0)], V)).toBeLessThan(TOL);
        denseVsMoba = Math.max(denseVsMoba, maxAbs32(logits ?? new Float32Array(0), oneShot.subarray(t * V, (t + 1) * V)));
      }
      // Past K·C positions dense and MoBA attention differ: the decode path above is not the prompt path.
      expect(denseVsMoba).toBeGreaterThan(1e-3);
      // The original was not disturbed by the copy's run.
      const again = await stepSequences(model, [first], [[ids[split] ?? 0]], false);
      expect(maxAbs32(again, oneShot.subarray(split * V, (split + 1) * V))).toBeLessThan(TOL);
    });

    it('a decode batch of 4 sequences of different lengths equals 4 single runs', async () => {
      const { model } = ctx;
      const lengths = [1, 5, C + 2, 3 * C + 1];
      const prompts = lengths.map((n, i) => prompt(n, V, i + 2));
      const batched = lengths.map(() => newSequence(model));
      const single = lengths.map(() => newSequence(model));
      for (let i = 0; i < lengths.length; i++) {
        await prefill(model, batched[i]!, prompts[i]!, { chunkTokens: 7 });
        await prefill(model, single[i]!, prompts[i]!, { chunkTokens: 7 });
      }
      for (let step = 0; step < 3; step++) {
        const next = lengths.map((_, i) => (step * 29 + i * 17 + 3) % V);
        const out = await decodeBatch(model, batched, next);
        for (let i = 0; i < lengths.length; i++) {
          const [alone] = await decodeBatch(model, [single[i]!], [next[i]!]);
          expect(maxAbs32(out[i]!, alone!)).toBeLessThan(TOL);
        }
      }
    });

    it('a batch of 2 prefill chunks (B = 2, T = 6) over different pasts equals the 2 runs alone', async () => {
      const { model } = ctx;
      const seqs = [newSequence(model), newSequence(model)];
      await prefill(model, seqs[0]!, prompt(3 * C + 1, V, 3), { chunkTokens: 6 });
      await prefill(model, seqs[1]!, prompt(3, V, 4));
      const chunks = [prompt(6, V, 5), prompt(6, V, 6)];
      const alone = [];
      for (let b = 0; b < 2; b++) alone.push(await stepSequences(model, [copySequence(model, seqs[b]!)], [chunks[b]!], true));
      const both = await stepSequences(model, seqs, chunks, true);
      expect(maxAbs32(both.subarray(0, 6 * V), alone[0]!)).toBeLessThan(TOL);
      expect(maxAbs32(both.subarray(6 * V), alone[1]!)).toBeLessThan(TOL);
    });
  });
});

/** A copy of a fixture with some tensors rewritten (`edit` returns the new data, or undefined to keep). */
function editedCopy(name: string, tag: string, edit: (tensor: string, data: Float32Array) => Float32Array | undefined): string {
  const dir = join(root, `${name}-${tag}`);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  const store = openSafetensorsDir(join(FIXTURES, name));
  const tensors = [...store.entries.values()].map((e) => {
    const data = readSafetensorsEntry(e).data;
    const out = edit(e.name, data) ?? data;
    return { name: e.name, shape: e.shape, bytes: Buffer.from(out.buffer, out.byteOffset, out.byteLength), dtype: 'F32' as const };
  });
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors));
  return dir;
}

describe('SpikingBrain 2.0 top-k ties: the graphs choose as the reference (lower index)', () => {
  it('onnxruntime TopK returns tied values lowest index first (what the router and MoBA rely on)', async () => {
    const g = new GraphBuilder('unused.data');
    const x = g.input('x', DataType.FLOAT, [2, 6]);
    const [, idx] = g.opN('TopK', [x, g.i64([3])], { axis: int(-1), largest: int(1), sorted: int(1) }, { outputs: 2 }) as [string, string];
    g.output('idx', idx, DataType.INT64, [2, 3]);
    const session = await ort.InferenceSession.create(encodeModel(g.toModel('topk', new Map([['', 17]]))));
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([0.5, 0.2, 0.5, 0.5, 0.1, 0.5, 1, 1, 1, 1, 1, 1]), [2, 6]) });
    expect(Array.from(out['idx']!.data as BigInt64Array, Number)).toEqual([0, 2, 3, 0, 1, 2]);
    await session.release();
  });

  // Router ties, observable: on the released options' first layer (hybrid, top-2 of 4), router rows 0
  // and 1 differ only in input 0, and even token ids have embedding 0 there, so p₀ = p₁ exactly on
  // even tokens and not on odd ones (partitions 0 and 1 are not interchangeable). Where the tie is for
  // the last chosen place the lower index wins; a graph choosing partition 1 would feed it other
  // tokens than the reference does, which the logits show.
  it('released-options: tied router probabilities at the last chosen place, fused and plain', async () => {
    const name = 'released-options';
    const raw = JSON.parse(readFileSync(join(FIXTURES, name, 'config.json'), 'utf8')) as { hidden_size: number; vocab_size: number };
    const D = raw.hidden_size;
    const dir = editedCopy(name, 'router-ties', (tensor, data) => {
      if (tensor === 'model.embeddings.weight') {
        const out = data.slice();
        for (let id = 0; id < raw.vocab_size; id += 2) out[id * D] = 0;
        return out;
      }
      if (tensor !== 'model.layers.0.attn.sse_e_proj.weight') return undefined;
      const out = data.slice();
      out.copyWithin(D, 0, D); // row 1 ← row 0 …
      out[D] = (out[D] as number) + 1; // … but for input 0
      return out;
    });
    const weights = openSpikingBrain2Dir(dir);
    const ids = prompt(PROMPT, raw.vocab_size, 2);
    // The fixture exercises the tie: count prompt tokens where p₀ = p₁ are 2nd and 3rd of the 4.
    const embed = weights.tensor('model.embeddings.weight', [raw.vocab_size, D]);
    const norm = weights.tensor('model.layers.0.attn_norm.weight', [D]);
    const router = weights.tensor('model.layers.0.attn.sse_e_proj.weight', [4, D]);
    const ties = ids.filter((id) => {
      const h = embed.subarray(id * D, (id + 1) * D);
      const inv = 1 / Math.sqrt(h.reduce((a, x) => a + x * x, 0) / D + weights.config.normEps);
      const logits = [0, 1, 2, 3].map((r) => h.reduce((a, x, j) => a + x * inv * (norm[j] as number) * (router[r * D + j] as number), 0));
      const sorted = [...logits].sort((x, y) => y - x);
      return logits[0] === logits[1] && sorted[1] === logits[0] && sorted[2] === logits[0];
    }).length;
    expect(ties).toBeGreaterThan(2);
    for (const fusedOps of [true, false]) {
      const { ckpt, model } = await loadCase(dir, fusedOps);
      try {
        const V = ckpt.config.vocabSize;
        const ref = new SpikingBrain2Reference(weights).forward(ids);
        const logits = await prefill(model, newSequence(model), ids, { allLogits: true, chunkTokens: 11 });
        expect(maxAbsDiff(logits, ref, V)).toBeLessThan(TOL);
      } finally {
        await model.close();
      }
    }
  });

  // MoBA ties: keys of the MoBA layers are all zero, so every earlier chunk's gate is 0 and the lowest
  // K−1 chunks are selected; attention is then uniform over the selected keys, so another choice
  // changes the output.
  it.each(CHECKPOINTS)('$name: tied MoBA gates, fused and plain', async ({ name }) => {
    const raw = JSON.parse(readFileSync(join(FIXTURES, name, 'config.json'), 'utf8')) as { attn: { layers: number[]; full_layers: number[] } };
    const mobaLayers = raw.attn.layers.filter((l) => !raw.attn.full_layers.includes(l));
    const dir = editedCopy(name, 'moba-ties', (tensor, data) => {
      const m = /^model\.layers\.(\d+)\.attn\.k_proj\.(weight|bias)$/.exec(tensor);
      return m !== null && mobaLayers.includes(Number(m[1])) ? new Float32Array(data.length) : undefined;
    });
    for (const fusedOps of [true, false]) {
      const { ckpt, model, weights } = await loadCase(dir, fusedOps);
      try {
        const V = ckpt.config.vocabSize;
        const ids = prompt(PROMPT, V, 3);
        const ref = new SpikingBrain2Reference(weights).forward(ids);
        const logits = await prefill(model, newSequence(model), ids, { allLogits: true, chunkTokens: 11 });
        expect(maxAbsDiff(logits, ref, V)).toBeLessThan(TOL);
      } finally {
        await model.close();
      }
    }
  });
});
