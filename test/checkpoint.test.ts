// Checkpoint loading: the safetensors reader (dtypes, shards, header checks), the HF checkpoint
// (qwen2 names, tied embeddings, gate layouts, hash, validation errors) and the random checkpoint.
import { mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../src/engine/errors.ts';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { openCheckpoint, validateCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { checkpointIdentity } from '../src/engine/model/onnx/build-cache.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { bf16ToF32, f16ToF32, openSafetensorsFile, readSafetensorsEntry } from '../src/engine/model/safetensors.ts';
import { countParameters, LM_HEAD, layerTensorNames, modelTensorSpecs } from '../src/engine/model/tensor-names.ts';
import {
  encodeSafetensors, f32ToBf16Bits, f32ToF16Bits, makeRandomTinyCheckpoint, tinyRawConfig, writeCheckpoint,
} from './helpers/checkpoint-writer.ts';

const root = mkdtempSync(join(tmpdir(), 'spikeserve-ckpt-'));
let n = 0;
const freshDir = (): string => join(root, `c${n++}`);
afterAll(() => rmSync(root, { recursive: true, force: true }));

function expectLoadError(fn: () => unknown, ...fragments: string[]): void {
  let caught: unknown = null;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ModelLoadError);
  for (const f of fragments) expect((caught as Error).message).toContain(f);
}

// Hand-made tables: bits → value (exact), and value → bits under round-to-nearest-even.
const BF16_BITS: [number, number][] = [
  [0x0000, 0], [0x8000, -0], [0x3f80, 1], [0xbf80, -1], [0x4000, 2], [0xc040, -3],
  [0x3f81, 1.0078125], [0x4049, 3.140625], [0x3e80, 0.25], [0x7f7f, 3.3895313892515355e38],
  [0x7f80, Infinity], [0xff80, -Infinity], [0x0001, 2 ** -133], [0x0080, 2 ** -126],
];
const BF16_ROUNDING: [number, number][] = [
  [1.00390625, 0x3f80], // exactly halfway between 1 and 1.0078125 → even (1)
  [1.01171875, 0x3f82], // halfway between 1.0078125 and 1.015625 → even (1.015625)
  [1.005, 0x3f81], // above halfway → up
  [Math.PI, 0x4049],
  [-0.1, 0xbdcd],
];
const F16_BITS: [number, number][] = [
  [0x0000, 0], [0x3c00, 1], [0xc000, -2], [0x3800, 0.5], [0x7bff, 65504], [0x0001, 2 ** -24],
  [0x0400, 2 ** -14], [0x03ff, 1023 * 2 ** -24], [0x7c00, Infinity], [0xfc00, -Infinity], [0x3555, 0.333251953125],
];
const F16_ROUNDING: [number, number][] = [
  [1 + 2 ** -11, 0x3c00], // halfway between 1 and 1+2^-10 → even
  [1 + 3 * 2 ** -11, 0x3c02], // halfway between 1+2^-10 and 1+2^-9 → even
  [1 / 3, 0x3555],
  [70000, 0x7c00], // overflow → Inf
  [3 * 2 ** -26, 0x0001], // subnormal: 0.75 ulp → 1 ulp
  [2 ** -26, 0x0000], // 0.25 ulp → 0
];

describe('float conversions', () => {
  it('bf16 bits → float32 follow the table', () => {
    for (const [bits, value] of BF16_BITS) expect(Object.is(bf16ToF32(bits), value) || bf16ToF32(bits) === value).toBe(true);
    expect(Number.isNaN(bf16ToF32(0x7fc0))).toBe(true);
  });
  it('float32 → bf16 rounds to nearest even', () => {
    for (const [value, bits] of BF16_ROUNDING) expect(f32ToBf16Bits(value).toString(16)).toBe(bits.toString(16));
  });
  it('f16 bits → float32 follow the table', () => {
    for (const [bits, value] of F16_BITS) expect(f16ToF32(bits)).toBe(value);
    expect(Number.isNaN(f16ToF32(0x7e00))).toBe(true);
  });
  it('float32 → f16 rounds to nearest even, with subnormals and overflow', () => {
    for (const [value, bits] of F16_ROUNDING) expect(f32ToF16Bits(value).toString(16)).toBe(bits.toString(16));
  });
});

describe('safetensors reader', () => {
  const values = [0, 1, -2, 0.5, 3.140625, 1.00390625, 1.01171875, 1 / 3, 65504, -0.1, 1e-30, 7];
  const expected: Record<'F32' | 'BF16' | 'F16', number[]> = {
    F32: values.map((v) => Math.fround(v)),
    // 1.00390625 → 1 and 1.01171875 → 1.015625 (ties to even); 1/3 → 0x3eab; 65504 → 0x4780; -0.1 → 0xbdcd; 1e-30 → 0x0da2
    BF16: [0, 1, -2, 0.5, 3.140625, 1, 1.015625, bf16ToF32(0x3eab), 65536, bf16ToF32(0xbdcd), bf16ToF32(0x0da2), 7],
    // 1.00390625 = 1 + 2^-8 and 1.01171875 = 1 + 3·2^-8 are exact in f16; 1e-30 underflows to 0
    F16: [0, 1, -2, 0.5, 3.140625, 1.00390625, 1.01171875, 0.333251953125, 65504, f16ToF32(0xae66), 0, 7],
  };
  it.each(['F32', 'BF16', 'F16'] as const)('round trip %s matches the hand table', (dtype) => {
    const dir = freshDir();
    const data = Float32Array.from(values);
    writeCheckpoint(dir, tinyRawConfig(), new Map([['t', { shape: [3, 4], data }]]), { dtype, naming: 'gla_swa' });
    const file = openSafetensorsFile(join(dir, 'model.safetensors'));
    const entry = file.entries.get('t');
    expect(entry?.dtype).toBe(dtype);
    expect(entry?.shape).toEqual([3, 4]);
    expect(file.metadata['format']).toBe('pt');
    const t = readSafetensorsEntry(entry!);
    expect(t.shape).toEqual([3, 4]);
    expect(Array.from(t.data)).toEqual(expected[dtype].map((v) => Math.fround(v)));
  });

  it('reads tensors larger than one 16 MiB read chunk', () => {
    // 9·2^20 bf16 elements (18 MiB) and 5·2^20 f32 elements (20 MiB): both cross the chunk boundary.
    const dir = freshDir();
    const big = (n: number, f: (i: number) => number): Float32Array => Float32Array.from({ length: n }, (_, i) => f(i));
    const bf = big(9 * 2 ** 20, (i) => (i % 251) - 125); // small integers: exact in bf16
    const fl = big(5 * 2 ** 20, (i) => i * 0.5);
    writeCheckpoint(dir, tinyRawConfig(), new Map([['b', { shape: [9, 2 ** 20], data: bf }]]), { dtype: 'BF16', naming: 'gla_swa' });
    // index of the first differing element, −1 if none (toEqual is too slow on millions of elements)
    const firstDiff = (a: Float32Array, b: Float32Array): number => {
      if (a.length !== b.length) return -2;
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
      return -1;
    };
    expect(firstDiff(readSafetensorsEntry(openSafetensorsFile(join(dir, 'model.safetensors')).entries.get('b')!).data, bf)).toBe(-1);
    writeCheckpoint(dir, tinyRawConfig(), new Map([['f', { shape: [5 * 2 ** 20], data: fl }]]), { dtype: 'F32', naming: 'gla_swa' });
    expect(firstDiff(readSafetensorsEntry(openSafetensorsFile(join(dir, 'model.safetensors')).entries.get('f')!).data, fl)).toBe(-1);
  });

  it('reads F32 data at an unaligned offset', () => {
    const json = JSON.stringify({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, b: { dtype: 'F32', shape: [2], data_offsets: [1, 9] } });
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    const b = Buffer.from(new Float32Array([1.5, -2.25]).buffer);
    const path = join(root, 'unaligned.safetensors');
    writeFileSync(path, Buffer.concat([prefix, Buffer.from(json), Buffer.from([7]), b]));
    const f = openSafetensorsFile(path);
    expect(Array.from(readSafetensorsEntry(f.entries.get('b')!).data)).toEqual([1.5, -2.25]);
    expectLoadError(() => readSafetensorsEntry(f.entries.get('a')!), '"a"', 'U8');
  });

  it('rejects a bad header, a size mismatch and a truncated file', () => {
    const bad = join(root, 'bad.safetensors');
    writeFileSync(bad, Buffer.from([1, 2, 3]));
    expectLoadError(() => openSafetensorsFile(bad), 'truncated');
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(5n);
    writeFileSync(bad, Buffer.concat([prefix, Buffer.from('{nope')]));
    expectLoadError(() => openSafetensorsFile(bad), 'not valid JSON');
    prefix.writeBigUInt64LE(1n << 40n);
    writeFileSync(bad, Buffer.concat([prefix, Buffer.from('{}')]));
    expectLoadError(() => openSafetensorsFile(bad), 'header length');
    const wrong = encodeSafetensors([{ name: 'w', shape: [3], bytes: Buffer.alloc(8), dtype: 'F32' }]);
    writeFileSync(bad, wrong);
    expectLoadError(() => openSafetensorsFile(bad), '"w"', 'needs 12 bytes');
    const good = encodeSafetensors([{ name: 'w', shape: [4], bytes: Buffer.alloc(16), dtype: 'F32' }]);
    writeFileSync(bad, good.subarray(0, good.length - 3));
    expectLoadError(() => openSafetensorsFile(bad), 'truncated', '"w"');
  });
});

describe('HF checkpoint', () => {
  it('reads a sharded checkpoint identically to a single file', () => {
    const one = makeRandomTinyCheckpoint(freshDir(), { seed: 3, dtype: 'BF16' });
    const three = makeRandomTinyCheckpoint(freshDir(), { seed: 3, dtype: 'BF16', shards: 3 });
    expect(readdirSync(three.dir).filter((f) => f.endsWith('.safetensors'))).toHaveLength(3);
    expect(readdirSync(three.dir)).toContain('model.safetensors.index.json');
    const a = openCheckpoint(one.dir);
    const b = openCheckpoint(three.dir);
    validateCheckpoint(b);
    expect(b.numParameters).toBe(a.numParameters);
    for (const spec of modelTensorSpecs(b.config, 'lowrank')) {
      const ta = a.tensor(spec.name, spec.shape);
      const tb = b.tensor(spec.name, spec.shape);
      expect(tb.data).toEqual(ta.data);
      expect(tb.data).toEqual(three.tensors.get(spec.name)?.data);
      expect(b.dtypeOf(spec.name)).toBe('BF16');
    }
  });

  it('maps qwen2 names onto canonical names and reads qwen2 configs', () => {
    const q = makeRandomTinyCheckpoint(freshDir(), { modelType: 'qwen2', numLayers: 2, seed: 5 });
    const header = readFileSync(join(q.dir, 'model.safetensors')).subarray(8, 8 + 4000).toString('utf8');
    expect(header).toContain('model.layers.0.self_attn.q_proj.weight');
    expect(header).toContain('model.layers.1.post_attention_layernorm.weight');
    expect(header).toContain('model.embed_tokens.weight');
    const ck = openCheckpoint(q.dir);
    expect(ck.config.modelType).toBe('qwen2');
    expect(ck.config.layerKinds).toEqual(['full', 'full']);
    validateCheckpoint(ck);
    const names = layerTensorNames(1);
    for (const name of [names.qWeight, names.kBias, names.oWeight, names.attnNorm, names.mlpNorm, 'model.embeddings.weight', 'model.norm.weight', LM_HEAD]) {
      expect(ck.has(name)).toBe(true);
      expect(ck.tensor(name).data).toEqual(q.tensors.get(name)?.data);
    }
    expect(ck.has('model.layers.0.self_attn.q_proj.weight')).toBe(false);
  });

  it('ties lm_head to the embeddings when configured or when lm_head is absent', () => {
    const tied = makeRandomTinyCheckpoint(freshDir(), { tied: true });
    const ck = openCheckpoint(tied.dir);
    validateCheckpoint(ck);
    expect(ck.names).not.toContain(LM_HEAD);
    expect(ck.tensor(LM_HEAD).data).toEqual(tied.tensors.get('model.embeddings.weight')?.data);
    // tie_word_embeddings false but no lm_head stored → still tied
    const dir = freshDir();
    const untied = makeRandomTinyCheckpoint(dir, { tied: false });
    const tensors = new Map(untied.tensors);
    tensors.delete(LM_HEAD);
    writeCheckpoint(dir, untied.rawConfig, tensors, { dtype: 'F32', naming: 'gla_swa' });
    expect(openCheckpoint(dir).tensor(LM_HEAD).data).toEqual(untied.tensors.get('model.embeddings.weight')?.data);
    expect(openCheckpoint(untied.dir).numParameters).toBe(countParameters(untied.config) - untied.config.vocabSize * untied.config.hiddenSize);
  });

  it('detects the gate layout', () => {
    const full = openCheckpoint(makeRandomTinyCheckpoint(freshDir(), { gkLayout: 'full' }).dir);
    expect(full.gkLayout).toBe('full');
    expect(full.has(layerTensorNames(0).gkWeight)).toBe(true);
    expect(full.has(layerTensorNames(0).gk0Weight)).toBe(false);
    validateCheckpoint(full);
    const low = openCheckpoint(makeRandomTinyCheckpoint(freshDir(), { gkLayout: 'lowrank' }).dir);
    expect(low.gkLayout).toBe('lowrank');
    expect(low.shapeOf(layerTensorNames(2).gk0Weight)).toEqual([16, low.config.hiddenSize]);
    expect(low.numParameters).toBe(countParameters(low.config, 'lowrank'));
  });

  it('is identified by content, not by path (test/weights-identity.test.ts: a change anywhere in the weights)', () => {
    const a = makeRandomTinyCheckpoint(freshDir(), { seed: 9 });
    const b = makeRandomTinyCheckpoint(freshDir(), { seed: 9 });
    const c = makeRandomTinyCheckpoint(freshDir(), { seed: 10 });
    const cacheDir = freshDir();
    const identity = (dir: string): string => checkpointIdentity(openCheckpoint(dir), cacheDir);
    const ha = identity(a.dir);
    expect(ha).toMatch(/^[0-9a-f]{64}$/);
    expect(identity(b.dir)).toBe(ha);
    expect(identity(c.dir)).not.toBe(ha);
    const bcfg = JSON.parse(readFileSync(join(b.dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(b.dir, 'config.json'), JSON.stringify({ ...bcfg, rope_theta: 500000 }));
    expect(identity(b.dir)).not.toBe(ha);
    expect(openCheckpoint(b.dir).hash).not.toBe(openCheckpoint(a.dir).hash); // the layout fingerprint sees the config
  });

  it('refuses bad configs naming the field', () => {
    expectLoadError(() => parseModelConfig({ ...tinyRawConfig(), use_short_conv: true }), 'use_short_conv');
    expectLoadError(() => parseModelConfig({ ...tinyRawConfig(), model_type: 'llama' }), 'model_type', 'llama');
    const dir = freshDir();
    const t = makeRandomTinyCheckpoint(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...t.rawConfig, use_short_conv: true }));
    expectLoadError(() => openCheckpoint(dir), 'use_short_conv');
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...t.rawConfig, model_type: 'mamba' }));
    expectLoadError(() => openCheckpoint(dir), 'model_type');
  });

  it('names a missing tensor and a shape mismatch', () => {
    const dir = freshDir();
    const t = makeRandomTinyCheckpoint(dir);
    const names = layerTensorNames(2);
    const missing = new Map(t.tensors);
    missing.delete(names.gNorm);
    writeCheckpoint(dir, t.rawConfig, missing, { dtype: 'F32', naming: 'gla_swa' });
    const ck = openCheckpoint(dir);
    expectLoadError(() => validateCheckpoint(ck), names.gNorm, 'missing');
    expectLoadError(() => ck.tensor(names.gNorm), names.gNorm, 'missing');

    const D = t.config.hiddenSize;
    const misshaped = new Map(t.tensors);
    misshaped.set(names.vWeight, { shape: [D, D], data: new Float32Array(D * D) });
    writeCheckpoint(dir, t.rawConfig, misshaped, { dtype: 'F32', naming: 'gla_swa' });
    const ck2 = openCheckpoint(dir);
    const kvDim = t.config.numKvHeads * t.config.headDim;
    expectLoadError(() => validateCheckpoint(ck2), names.vWeight, `[${D}, ${D}]`, `[${kvDim}, ${D}]`);
    expectLoadError(() => ck2.tensor(names.vWeight, [kvDim, D]), names.vWeight);
  });

  it('refuses a truncated weight file naming the tensor', () => {
    const t = makeRandomTinyCheckpoint(freshDir(), { dtype: 'BF16' });
    const path = join(t.dir, 'model.safetensors');
    truncateSync(path, readFileSync(path).length - 10);
    expectLoadError(() => openCheckpoint(t.dir), 'truncated', 'lm_head.weight');
  });

  it('refuses an unsupported dtype of a needed tensor', () => {
    const dir = freshDir();
    const t = makeRandomTinyCheckpoint(dir);
    const norm = 'model.norm.weight';
    const entries = [...t.tensors].map(([name, x]) =>
      name === norm
        ? { name, shape: x.shape, bytes: Buffer.alloc(x.data.length * 8), dtype: 'F64' as 'F32' }
        : { name, shape: x.shape, bytes: Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength), dtype: 'F32' as const },
    );
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(entries));
    const ck = openCheckpoint(dir);
    expectLoadError(() => validateCheckpoint(ck), norm, 'F64');
    expectLoadError(() => ck.tensor(norm), norm, 'F64');
  });
});

describe('random checkpoint', () => {
  const config = parseModelConfig(tinyRawConfig({ numLayers: 4, headDim: 16 }));
  it('is deterministic per (seed, name), independent of read order', () => {
    const a = randomCheckpoint(config, { seed: 1, gkLayout: 'lowrank' });
    const b = randomCheckpoint(config, { seed: 1, gkLayout: 'lowrank' });
    const c = randomCheckpoint(config, { seed: 2, gkLayout: 'lowrank' });
    const names = modelTensorSpecs(config, 'lowrank').map((s) => s.name);
    const first = names.map((x) => a.tensor(x).data);
    const reversed = [...names].reverse().map((x) => b.tensor(x).data).reverse();
    first.forEach((d, i) => expect(reversed[i]).toEqual(d));
    expect(c.tensor(names[1]!).data).not.toEqual(first[1]);
    expect(a.hash).toBe(b.hash);
    expect(a.hash).not.toBe(c.hash);
    validateCheckpoint(a);
    expect(a.numParameters).toBe(countParameters(config, 'lowrank'));
  });

  it('draws weights with std scale/√in and norms near 1', () => {
    const ck = randomCheckpoint(config, { seed: 4, gkLayout: 'full', scale: 2 });
    const stats = (d: Float32Array): { mean: number; std: number } => {
      const mean = d.reduce((s, x) => s + x, 0) / d.length;
      return { mean, std: Math.sqrt(d.reduce((s, x) => s + (x - mean) ** 2, 0) / d.length) };
    };
    const names = layerTensorNames(0);
    const up = stats(ck.tensor(names.upWeight).data); // [F, D], in = D = 64 → 2/8
    expect(up.std).toBeCloseTo(0.25, 1);
    expect(Math.abs(up.mean)).toBeLessThan(0.02);
    const down = stats(ck.tensor(names.downWeight).data); // in = F = 128
    expect(down.std).toBeCloseTo(2 / Math.sqrt(128), 1);
    const norm = stats(ck.tensor(names.attnNorm).data);
    expect(norm.mean).toBeGreaterThan(0.9);
    expect(norm.mean).toBeLessThan(1.1);
    expect(ck.has(names.gkWeight)).toBe(true);
    expect(ck.has(names.gk0Weight)).toBe(false);
    expectLoadError(() => ck.tensor('nope.weight'), 'nope.weight');
    expectLoadError(() => ck.tensor(names.upWeight, [1, 2]), names.upWeight);
  });

  it('answers lm_head with the embeddings when tied', () => {
    const tiedConfig = parseModelConfig(tinyRawConfig({ tied: true }));
    const ck = randomCheckpoint(tiedConfig, { seed: 1, gkLayout: 'lowrank' });
    expect(ck.tensor(LM_HEAD).data).toEqual(ck.tensor('model.embeddings.weight').data);
  });
});
