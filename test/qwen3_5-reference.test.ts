// The Qwen3.5 float64 reference (helpers/reference-qwen3_5.ts) against the official Hugging Face code:
// logits computed by transformers' Qwen3_5ForCausalLM / Qwen3_5ForConditionalGeneration on tiny random
// checkpoints (test/fixtures/qwen3_5-crosscheck, written by tools/qwen3_5_crosscheck.py). The official
// code computes norms and the delta rule in float32, so the tolerance is 1e-4 on logits of magnitude ~1.
// The built graphs (fused and plain) are checked against the same logits, through the loader.
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { Model } from '../src/engine/model/model.ts';
import { newSequence, prefill } from '../src/engine/model/sequence.ts';
import { Qwen3_5Reference } from './helpers/reference-qwen3_5.ts';

const TOL = 1e-4;
const FIXTURES = join(import.meta.dirname, 'fixtures', 'qwen3_5-crosscheck');

interface Expected {
  readonly token_ids: number[];
  readonly decode_from: number;
  readonly logits: number[][];
  readonly logits_cached: number[][];
}

const root = mkdtempSync(join(tmpdir(), 'spikeserve-q35-cross-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function maxDiff(rows: ArrayLike<number>[], expected: number[][]): number {
  expect(rows.length).toBe(expected.length);
  let m = 0;
  rows.forEach((row, t) => {
    const e = expected[t] as number[];
    expect(row.length).toBe(e.length);
    for (let v = 0; v < e.length; v++) m = Math.max(m, Math.abs((row[v] as number) - (e[v] as number)));
  });
  return m;
}

describe.each([
  { name: 'causal-lm', modelType: 'qwen3_5_text', skipped: {} },
  { name: 'conditional-generation', modelType: 'qwen3_5', skipped: { visual: expect.any(Number), mtp: 1 } },
])('Qwen3.5 $name checkpoint written by transformers', ({ name, modelType, skipped }) => {
  const dir = join(FIXTURES, name);
  const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as Expected;
  const raw = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { model_type: string };

  it('loads: the text model is served, the vision tower and MTP head are skipped', () => {
    expect(raw.model_type).toBe(modelType);
    const ckpt = openCheckpoint(dir);
    expect(ckpt.config.layerKinds).toEqual(['gdn', 'gdn', 'gdn', 'full']);
    expect(ckpt.config.attention.rotaryDim).toBe(6); // head_dim 12 · rope_parameters.partial_rotary_factor 0.5
    expect(ckpt.skipped).toEqual(skipped);
  });

  it('the float64 reference equals the official logits at every position (one-shot and through the cache)', () => {
    const ref = new Qwen3_5Reference(openCheckpoint(dir));
    const logits = ref.forward(expected.token_ids);
    const oneShot = maxDiff(logits, expected.logits);
    const cached = maxDiff(logits, expected.logits_cached);
    expect(oneShot).toBeLessThan(TOL);
    expect(cached).toBeLessThan(TOL);
    // …and the check can fail: the logits are not trivially small.
    expect(Math.max(...expected.logits.flat().map(Math.abs))).toBeGreaterThan(0.5);
  });

  it.each([{ fusedOps: true }, { fusedOps: false }])('the built graph (fusedOps $fusedOps) equals the official logits', async ({ fusedOps }) => {
    const ckpt = openCheckpoint(dir);
    const model = await Model.load(ckpt, { cacheDir: join(root, 'models'), fusedOps, intraOpThreads: 1 });
    try {
      const V = ckpt.config.vocabSize;
      const flat = await prefill(model, newSequence(model), expected.token_ids, { allLogits: true, chunkTokens: 7 });
      const rows = expected.token_ids.map((_, t) => flat.subarray(t * V, (t + 1) * V));
      expect(maxDiff(rows, expected.logits)).toBeLessThan(TOL);
    } finally {
      await model.close();
    }
  });
});
