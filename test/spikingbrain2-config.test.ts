// SpikingBrain 2.0 (`sse_swa_moba`): the official 5B config parses into the layer plan of
// docs/models/spikingbrain2.md, `inspect` prints its parameters, state bytes and KV bytes (checked here
// against the doc's formulas, computed independently), malformed or unsupported configs are refused
// naming their field.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../src/engine/errors.ts';
import { loadModelConfig, parseModelConfig } from '../src/engine/model/config.ts';
import { openCheckpoint, validateCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { kvGroupSpecs, stateBytesPerSequence, stateTensorSpecs } from '../src/engine/model/layer-plan.ts';
import { inspectModel } from '../src/engine/model/inspect.ts';
import { defaultIntermediateSize, parseSpikingBrain2Config } from '../src/engine/model/spikingbrain2-config.ts';
import { describeSpikingBrain2 } from '../src/engine/model/spikingbrain2-inspect.ts';
import { countSpikingBrain2Parameters } from '../src/engine/model/spikingbrain2-tensors.ts';

const FIXTURES = join(import.meta.dirname, 'fixtures');
const FIVE_B = join(FIXTURES, 'spikingbrain2-5b');
const TINY = join(FIXTURES, 'spikingbrain2-crosscheck', 'released-options');
const OTHER = join(FIXTURES, 'spikingbrain2-crosscheck', 'other-options');
const raw5b = JSON.parse(readFileSync(join(FIVE_B, 'config.json'), 'utf8')) as Record<string, unknown>;

const root = mkdtempSync(join(tmpdir(), 'spikeserve-spb2-config-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The 5B config with some fields replaced (a deep copy). */
function variant(patch: (raw: Record<string, unknown>) => void): Record<string, unknown> {
  const raw = structuredClone(raw5b);
  patch(raw);
  return raw;
}

function refusal(raw: Record<string, unknown>): string {
  try {
    parseSpikingBrain2Config(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(ModelLoadError);
    return (err as Error).message;
  }
  throw new Error('expected a ModelLoadError');
}

describe('SpikingBrain 2.0 5B config (spb2/configs/rsft_config.json)', () => {
  const c = parseSpikingBrain2Config(raw5b);
  const hybrid = [4, 5, 7, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34];

  it('parses the layer plan: attn.layers minus full_layers are MoBA, full_layers full, the rest hybrid', () => {
    expect(c.layerKinds.flatMap((k, i) => (k === 'moba' ? [i] : []))).toEqual([0, 1, 2, 3, 6, 12, 17, 21, 24]);
    expect(c.layerKinds.flatMap((k, i) => (k === 'full' ? [i] : []))).toEqual([35]);
    expect(c.layerKinds.flatMap((k, i) => (k === 'hybrid' ? [i] : []))).toEqual(hybrid);
    expect(c.sse).toEqual({ numHeads: 32, numPartitions: 4, numWriters: 2, qkActivation: 'silu', allowNegEigval: false });
    expect(c.attention).toEqual({
      numHeads: 32,
      numKvHeads: 8,
      qkNorm: true,
      bias: false,
      ropeTheta: 5000000,
      windowTokens: 128,
      mobaChunkTokens: 4096,
      mobaTopk: 12,
    });
    expect([c.vocabSize, c.hiddenSize, c.numLayers, c.headDim, c.intermediateSize, c.normEps]).toEqual([151936, 2560, 36, 128, 9728, 1e-6]);
    expect(c.tieWordEmbeddings).toBe(true);
    expect(c.eosTokenIds).toEqual([151645]);
  });

  it('inspect prints the plan, 5.17 B parameters, and the state and KV bytes of the doc formulas', () => {
    // Parameters, tensor by tensor from the official modules (tied embeddings once):
    const [V, D, d, H, Ha, Hkv, F, N] = [151936, 2560, 128, 32, 32, 8, 9728, 4];
    const perLayer = 2 * D + 3 * D * F; // attn_norm, mlp_norm; gate, up, down
    const sse = 3 * D * H * d + 2 * (D * d + d * H * d) + 2 * (2 * H * D) + 2 * 2 * H + N * D + d + H * d * D + D;
    const swa = H * d * D + 2 * Hkv * d * D + D * H * d + D + 2 * d; // q, k, v, o, merge norm, q/k norms
    const attn = Ha * d * D + 2 * Hkv * d * D + D * Ha * d + 2 * d;
    const params = V * D + 36 * perLayer + 26 * (sse + swa) + 10 * attn + D;
    expect(params).toBe(5_166_215_168);
    expect(countSpikingBrain2Parameters(c)).toBe(params);

    const sseBytes = 26 * (1 + N) * H * d * d * 4; // shared + N partition states per head
    const windowBytes = 26 * 128 * 2 * Hkv * d * 4; // W keys and values per hybrid layer
    const kvPerToken = 10 * 2 * Hkv * d * 4; // MoBA + full layers
    expect([sseBytes, windowBytes, kvPerToken]).toEqual([260 * 2 ** 20, 26 * 2 ** 20, 80 * 1024]);
    const r = describeSpikingBrain2(FIVE_B, c);
    expect(r.numParameters).toBe(params);
    expect(r.parameterSource).toBe('config');
    expect(r.sseStateBytesPerSequence).toBe(sseBytes);
    expect(r.windowKvBytesPerSequence).toBe(windowBytes);
    expect(r.kvBytesPerToken).toBe(kvPerToken);

    const text = inspectModel(FIVE_B);
    expect(text).toContain('type: sse_swa_moba (SpikingBrain 2.0)');
    expect(text).not.toContain('not served');
    expect(text).toContain(`hybrid SSE-GDN + SWA (26: ${hybrid.join(', ')})`);
    expect(text).toContain('MoBA (9: 0, 1, 2, 3, 6, 12, 17, 21, 24)');
    expect(text).toContain('full (1: 35)');
    expect(text).toContain('parameters: 5,166,215,168 (5.17 B) [from config.json]');
    expect(text).toContain('SSE state: 260.00 MiB');
    expect(text).toContain('window KV: 26.00 MiB');
    expect(text).toContain('MoBA + full KV: 80.00 KiB per token');
    // 4K context: 286 MiB constant + 4096 · 80 KiB = 606 MiB; Qwen3-4B-like all-full: 36 · 2 · 8 · 128 · 4.
    expect(text).toContain('4K: 606.00 MiB');
    expect(text).toContain('if every layer were full attention: 288.00 KiB per token');
  });

  it('maps onto the engine\'s ModelConfig and layer plan (graphs; served: spikingbrain2-serving.test.ts)', () => {
    const config = parseModelConfig(raw5b);
    expect(loadModelConfig(FIVE_B)).toEqual(config);
    expect(config.modelType).toBe('sse_swa_moba');
    expect(config.layerKinds.flatMap((k, i) => (k === 'moba' ? [i] : []))).toEqual([0, 1, 2, 3, 6, 12, 17, 21, 24]);
    expect(config.layerKinds.flatMap((k, i) => (k === 'sse_swa' ? [i] : []))).toEqual(hybrid);
    expect(config.layerKinds[35]).toBe('full');
    // The window branch attends window_size = 128 keys including the query: 127 past positions.
    expect(config.slidingWindow).toBe(127);
    expect(config.moba).toEqual({ chunkTokens: 4096, topk: 12 });
    expect(config.sse).toEqual(c.sse);
    expect([config.numHeads, config.numKvHeads, config.headDim]).toEqual([32, 8, 128]);
    expect(config.attention).toEqual({ bias: false, outputGate: false, qkNorm: true, rotaryDim: 128 });
    // The layer plan's state tensors: one [(1 + N)·H, d, d] per hybrid layer, 260 MiB as inspect says.
    const states = stateTensorSpecs(config);
    expect(states).toHaveLength(26);
    expect(states[0]?.dims).toEqual([5 * 32, 128, 128]);
    expect(stateBytesPerSequence(config)).toBe(260 * 2 ** 20);
    expect(kvGroupSpecs(config)).toEqual([
      { kind: 'window', numLayers: 26, numKvHeads: 8, headDim: 128, windowTokens: 127 },
      { kind: 'full', numLayers: 10, numKvHeads: 8, headDim: 128, windowTokens: null },
    ]);
    const opened = openCheckpoint(TINY);
    expect(opened.config.layerKinds).toEqual(['sse_swa', 'moba', 'sse_swa', 'moba', 'sse_swa', 'full']);
    expect(() => validateCheckpoint(opened)).not.toThrow();
    expect(() => validateCheckpoint(openCheckpoint(OTHER))).not.toThrow();

  });
});

describe('SpikingBrain 2.0 config validation', () => {
  it('refuses what no released config uses, naming the field', () => {
    expect(refusal(variant((r) => (r['linear_attn_type'] = 'gla')))).toMatch(/"linear_attn_type" is "gla"/);
    expect(refusal(variant((r) => (r['use_short_conv'] = true)))).toMatch(/"use_short_conv"/);
    expect(refusal(variant((r) => delete r['use_output_gate']))).toMatch(/"use_output_gate" is "absent \(default true\)"/);
    expect(refusal(variant((r) => (r['num_reader'] = 1)))).toMatch(/"num_reader" 1 differs from "num_writer" 2/);
    expect(refusal(variant((r) => (r['num_v_heads'] = 16)))).toMatch(/"num_v_heads" 16 differs/);
    expect(refusal(variant((r) => (r['sse_implementation'] = 'mask')))).toMatch(/"sse_implementation" is "mask"/);
    expect(refusal(variant((r) => (r['rope_scaling'] = { type: 'yarn', factor: 4 })))).toMatch(/"rope_scaling"/);
    expect(refusal(variant((r) => (r['expand_v'] = 2)))).toMatch(/"expand_v" is 2/);
    expect(refusal(variant((r) => ((r['attn'] as Record<string, unknown>)['window_size'] = null)))).toMatch(/"attn\.window_size" is absent/);
  });

  it('refuses malformed fields with their names', () => {
    expect(refusal(variant((r) => delete r['attn']))).toMatch(/needs an object "attn"/);
    expect(refusal(variant((r) => ((r['attn'] as Record<string, unknown>)['full_layers'] = [34])))).toMatch(/"attn.full_layers" lists layer 34/);
    expect(refusal(variant((r) => ((r['attn'] as Record<string, unknown>)['layers'] = [0, 36])))).toMatch(/"attn.layers" must list layer indices in \[0, 36\)/);
    expect(refusal(variant((r) => ((r['attn'] as Record<string, unknown>)['num_kv_heads'] = 5)))).toMatch(/not divisible by "attn.num_kv_heads" 5/);
    expect(refusal(variant((r) => ((r['attn'] as Record<string, unknown>)['moba_chunk_size'] = 0)))).toMatch(/"attn.moba_chunk_size"/);
    expect(refusal(variant((r) => (r['num_writer'] = r['num_reader'] = 4)))).toMatch(/"num_writer" 4 must be less than "num_sparse_partition" 4/);
    // Through parseModelConfig, the malformed field is named before the not-served line.
    expect(() => parseModelConfig(variant((r) => (r['use_short_conv'] = true)))).toThrow(/use_short_conv/);
  });

  it('applies the official defaults: MLP width from hidden_ratio, attn dict defaults', () => {
    const c = parseSpikingBrain2Config(
      variant((r) => {
        delete r['intermediate_size'];
        const a = r['attn'] as Record<string, unknown>;
        delete a['moba_chunk_size'];
        delete a['moba_topk'];
        delete a['num_kv_heads'];
      }),
    );
    // fla GatedMLP: int(2560 · 4 · 2/3) = 6826 → rounded up to a multiple of 256 = 6912.
    expect(defaultIntermediateSize(2560, 4)).toBe(6912);
    expect(c.intermediateSize).toBe(6912);
    expect([c.attention.mobaChunkTokens, c.attention.mobaTopk, c.attention.numKvHeads]).toEqual([1024, 4, 32]);
  });

  it('inspect of the tiny official checkpoint: parameters counted in the weights equal the config count, validation ok', () => {
    const raw = JSON.parse(readFileSync(join(TINY, 'config.json'), 'utf8')) as Record<string, unknown>;
    const c = parseSpikingBrain2Config(raw);
    const r = describeSpikingBrain2(TINY, c);
    expect(r.parameterSource).toBe('weights');
    expect(r.numParameters).toBe(countSpikingBrain2Parameters(c));
    expect(r.weights?.validation).toBe('ok');
    expect(r.hybridLayers).toEqual([0, 2, 4]);
    expect(r.mobaLayers).toEqual([1, 3]);
    expect(r.fullLayers).toEqual([5]);
    expect(inspectModel(TINY)).toContain('validation: ok');

    // The other options, as the official code built them: untied lm_head stored and counted, relu q/k,
    // β·2, no qk-norm (no q/k norm tensors), no biases, top-1 of 3.
    const other = parseSpikingBrain2Config(JSON.parse(readFileSync(join(OTHER, 'config.json'), 'utf8')) as Record<string, unknown>);
    expect(other.sse).toEqual({ numHeads: 2, numPartitions: 3, numWriters: 1, qkActivation: 'relu', allowNegEigval: true });
    expect([other.attention.qkNorm, other.attention.bias, other.tieWordEmbeddings]).toEqual([false, false, false]);
    expect(other.layerKinds).toEqual(['full', 'hybrid', 'hybrid', 'moba', 'hybrid']);
    const ro = describeSpikingBrain2(OTHER, other);
    expect(ro.weights?.validation).toBe('ok');
    expect(ro.numParameters).toBe(countSpikingBrain2Parameters(other));

    // A checkpoint missing a tensor the official module has is reported, not served.
    const broken = join(root, 'broken');
    cpSync(TINY, broken, { recursive: true });
    writeFileSync(join(broken, 'config.json'), JSON.stringify({ ...raw, num_sparse_partition: 8 }));
    expect(describeSpikingBrain2(broken, parseSpikingBrain2Config({ ...raw, num_sparse_partition: 8 })).weights?.validation).toBe(
      'tensor "model.layers.0.attn.sse_e_proj.weight" has shape [4, 32], expected [8, 32]',
    );
  });
});
