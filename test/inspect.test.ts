// `inspect`: layer plan, parameter count and per-sequence memory, for the official SpikingBrain-7B
// config (no weights) and for tiny random checkpoints (with weights).
import { mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { describeModel, inspectModel } from '../src/engine/model/inspect.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { countParameters, layerTensorNames } from '../src/engine/model/tensor-names.ts';
import { makeRandomTinyCheckpoint, tinyRawConfig, writeCheckpoint } from './helpers/checkpoint-writer.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const specDir = resolve(repoRoot, 'test/fixtures/spikingbrain-7b');

const root = mkdtempSync(join(tmpdir(), 'spikeserve-inspect-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('inspect: official SpikingBrain-7B config', () => {
  const report = describeModel(specDir);

  it('shows GLA at even and SWA at odd layers', () => {
    expect(report.glaLayers).toEqual(Array.from({ length: 14 }, (_, i) => 2 * i));
    expect(report.swaLayers).toEqual(Array.from({ length: 14 }, (_, i) => 2 * i + 1));
    expect(report.fullLayers).toEqual([]);
    const text = inspectModel(specDir);
    expect(text).toContain('GLA  (14: 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26)');
    expect(text).toContain('SWA  (14: 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27)');
  });

  it('counts 7,616,542,976 parameters from config.json alone', () => {
    // V=152064 D=3584 L=28 H=28 Hkv=4 d=128 F=18944, untied, low-rank gate:
    //   embeddings + lm_head         2·V·D                 = 1,089,994,752
    //   attention (every layer)      2·D·D + 2·512·D + D + 2·512 (q,o; k,v; biases) = 29,364,736
    //   GLA extra                    16·D + 512·16 + 512 + 128 (gk, g_norm)          =     66,176
    //   MLP + 2 norms                3·D·F + 2·D                                     = 203,692,032
    //   final norm                   D
    const attn = 2 * 3584 * 3584 + 2 * 512 * 3584 + 3584 + 2 * 512;
    const glaExtra = 16 * 3584 + 512 * 16 + 512 + 128;
    const mlp = 3 * 3584 * 18944 + 2 * 3584;
    const expected = 2 * 152064 * 3584 + 28 * (attn + mlp) + 14 * glaExtra + 3584;
    expect(expected).toBe(7_616_542_976);
    expect(report.numParameters).toBe(expected);
    expect(report.parameterSource).toBe('config');
    expect(Math.abs(report.numParameters / 7.6e9 - 1)).toBeLessThan(0.01);
    expect(inspectModel(specDir)).toContain('7,616,542,976 (7.62 B)');
  });

  it('states per-sequence memory: GLA state per KV head, SWA bound for W+1 positions', () => {
    expect(report.glaStateBytesPerSequence).toBe(14 * 4 * 128 * 128 * 4); // 3.5 MiB
    expect(report.swaKvBytesPerSequence).toBe(4097 * 14 * 2 * 4 * 128 * 4); // ≈ 224 MiB
    expect(report.fullKvBytesPerToken).toBe(0);
    expect(report.weights).toBeNull();
    const text = inspectModel(specDir);
    expect(text).toContain('GLA state: 3.50 MiB');
    expect(text).toContain('SWA KV bound: 224.05 MiB');
  });
});

describe('inspect: tiny random checkpoints', () => {
  it('reports the layer plan, the stored parameters and a passing validation', () => {
    const t = makeRandomTinyCheckpoint(join(root, 'a'), { numLayers: 6, attnLayers: [2, 5], dtype: 'BF16', shards: 2, headDim: 16, kvRatio: 4 });
    const r = describeModel(t.dir);
    expect(r.glaLayers).toEqual([0, 1, 3, 4]);
    expect(r.swaLayers).toEqual([2, 5]);
    expect(r.parameterSource).toBe('weights');
    const sum = [...t.tensors.values()].reduce((s, x) => s + x.data.length, 0);
    expect(r.numParameters).toBe(sum);
    expect(r.weights?.files).toBe(2);
    expect(r.weights?.validation).toBe('ok');
    expect(r.weights?.dtypes).toEqual({ BF16: t.tensors.size });
    // H = 4, Hkv = 1, d = 16: GLA state 4 layers × 1·16·16·4; SWA (8+1) × 2 layers × 2 × 1·16·4
    expect(r.glaStateBytesPerSequence).toBe(4 * 16 * 16 * 4);
    expect(r.swaKvBytesPerSequence).toBe(9 * 2 * 2 * 16 * 4);
    expect(inspectModel(t.dir)).toContain('validation: ok');
  });

  it('reports full-attention KV per token for qwen2', () => {
    const t = makeRandomTinyCheckpoint(join(root, 'b'), { modelType: 'qwen2', numLayers: 3 });
    const r = describeModel(t.dir);
    expect(r.fullLayers).toEqual([0, 1, 2]);
    expect(r.fullKvBytesPerToken).toBe(3 * 2 * 2 * 16 * 4);
    expect(r.glaStateBytesPerSequence).toBe(0);
    expect(r.swaKvBytesPerSequence).toBe(0);
    expect(inspectModel(t.dir)).toContain('full-attention KV: 768 B per token');
  });

  it('works from a Checkpoint object and from config.json alone', () => {
    const config = parseModelConfig(tinyRawConfig({ numLayers: 4 }));
    const random = describeModel(randomCheckpoint(config, { seed: 1, gkLayout: 'full' }));
    expect(random.numParameters).toBe(countParameters(config, 'full'));
    expect(random.numParameters).not.toBe(countParameters(config, 'lowrank'));
    expect(random.weights?.validation).toBe('ok');
    const t = makeRandomTinyCheckpoint(join(root, 'c'), { numLayers: 4 });
    const withWeights = describeModel(t.dir);
    unlinkSync(join(t.dir, 'model.safetensors'));
    const configOnly = describeModel(t.dir);
    expect(configOnly.parameterSource).toBe('config');
    expect(configOnly.numParameters).toBe(withWeights.numParameters);
    expect(configOnly.weights).toBeNull();
  });

  it('names the first missing tensor in the validation line', () => {
    const dir = join(root, 'd');
    const t = makeRandomTinyCheckpoint(dir, { numLayers: 2 });
    const tensors = new Map(t.tensors);
    tensors.delete(layerTensorNames(1).oWeight);
    writeCheckpoint(dir, t.rawConfig, tensors, { dtype: 'F32', naming: 'gla_swa' });
    expect(describeModel(dir).weights?.validation).toContain(layerTensorNames(1).oWeight);
  });
});

describe('inspect: Qwen3.5 (transformers\' default Qwen3_5TextConfig, the 9B style, and the multimodal Qwen3_5Config)', () => {
  const dirs = ['transformers-default-text', 'transformers-default-multimodal'].map((n) => resolve(repoRoot, 'test/fixtures/qwen3_5-configs', n));

  it.each(dirs)('%s: layer plan, parameters, recurrent-state bytes and KV bytes per token', (dir) => {
    const r = describeModel(dir);
    // layer_types: every 4th layer (3, 7, …, 31) full attention, the other 24 Gated DeltaNet.
    expect(r.fullLayers).toEqual([3, 7, 11, 15, 19, 23, 27, 31]);
    expect(r.gdnLayers).toHaveLength(24);
    expect(r.glaLayers).toEqual([]);
    // V=248320 D=4096 L=32 F=12288, untied; attention H=16 Hkv=4 d=256 (q_proj doubled for the gate,
    // q/k norms); GDN Hk=16 Hv=32 dk=dv=128 K=4 (convDim = 2·16·128 + 32·128 = 8192):
    //   embeddings + lm_head   2·V·D
    //   every layer            3·D·F + 2·D (MLP, two norms)
    //   full attention         2·H·d·D + 2·Hkv·d·D + D·H·d + 2·d                       = 58,720,768
    //   GDN                    8192·D + 4096·D + 2·32·D + 8192·4 + 2·32 + 128 + D·4096  = 67,403,968
    //   final norm             D
    const expected = 2 * 248320 * 4096 + 32 * (3 * 4096 * 12288 + 2 * 4096) + 8 * 58_720_768 + 24 * 67_403_968 + 4096;
    expect(expected).toBe(8_953_803_264);
    expect(r.numParameters).toBe(expected);
    // Per sequence: 24 × (conv 8192·3 + 32·128·128) floats, whatever its length; KV 8 × 2 × 4·256 floats per token.
    expect(r.gdnStateBytesPerSequence).toBe(24 * (8192 * 3 + 32 * 128 * 128) * 4);
    expect(r.stateBytesPerSequence).toBe(r.gdnStateBytesPerSequence);
    expect(r.fullKvBytesPerToken).toBe(8 * 2 * 4 * 256 * 4);
    const text = inspectModel(dir);
    expect(text).toContain('type: qwen3_5');
    expect(text).toContain('GDN: Hk=16 Hv=32 dk=128 dv=128 conv=4');
    expect(text).toContain('GDN  (24: 0, 1, 2, 4, 5, 6, 8,');
    expect(text).toContain('full (8: 3, 7, 11, 15, 19, 23, 27, 31)');
    expect(text).toContain('8,953,803,264 (8.95 B)');
    expect(text).toContain('GDN state: 50.25 MiB');
    expect(text).toContain('full-attention KV: 64.00 KiB per token');
  });

  it('a MoE config is refused with one line', () => {
    expect(() => parseModelConfig({ model_type: 'qwen3_5_moe', text_config: { num_experts: 256 } })).toThrow(/mixture-of-experts .* not supported yet/);
    expect(() => parseModelConfig({ model_type: 'qwen3_5_text', vocab_size: 8, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: 8, num_experts: 4 })).toThrow(/num_experts=4/);
  });
});
