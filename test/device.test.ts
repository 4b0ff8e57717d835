// Devices without a GPU (CI): --device webgpu / cuda fail fast with one clear line, cpu works;
// fp32 → fp16 conversion against a hand table and a brute-force nearest-even search; a tiny model
// built with fp16 weights (from a bf16 file) matches the fp32 engine within 1e-2 on its logits.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CUDA_INSTALL_COMMAND,
  DeviceUnavailableError,
  ortBindingDir,
  probeDevice,
  resolveExecutionProviders,
  shortReason,
} from '../src/engine/model/device.ts';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { Model } from '../src/engine/model/model.ts';
import { EXTERNAL_DATA_FILE } from '../src/engine/model/onnx/model-graph.ts';
import {
  float16ArrayToFloat32,
  float16BitsToNumber,
  float32ArrayToFloat16,
  float32ToFloat16Bits,
  weightToFloat16,
} from '../src/engine/model/onnx/precision.ts';
import { decodeBatch, newSequence, prefill } from '../src/engine/model/sequence.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';
import { IDENTITY_CACHE_FILE } from '../src/engine/model/weights-identity.ts';

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-device-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** A machine with a GPU device node may really have an adapter: the "no GPU" cases are then skipped. */
const gpuPresent = existsSync('/dev/nvidia0') || existsSync('/dev/dri') || existsSync('/dev/kfd');
const cudaInstalled = existsSync(join(ortBindingDir(), 'libonnxruntime_providers_cuda.so'));

describe('device selection', () => {
  it('maps each device to its execution providers', () => {
    expect(resolveExecutionProviders('cpu')).toEqual(['cpu']);
    expect(resolveExecutionProviders('webgpu')).toEqual(['webgpu', 'cpu']);
    expect(resolveExecutionProviders('cuda')).toEqual(['cuda', 'cpu']);
  });

  it('cpu needs no probe', async () => {
    await expect(probeDevice('cpu')).resolves.toBeUndefined();
  });

  it.skipIf(gpuPresent)('`spikeserve serve --device webgpu` exits 1 at start with that one line on stderr', async () => {
    const cli = join(import.meta.dirname, '..', 'src', 'main', 'cli.ts');
    const result = spawnSync(process.execPath, ['--import', 'tsx', cli, 'serve', '--device', 'webgpu', '--port', '0', '--log-level', 'silent'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(result.status).toBe(1);
    const lines = result.stderr.split('\n').filter((l) => l.startsWith('spikeserve: '));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^spikeserve: --device webgpu: no WebGPU adapter found.*; use --device cpu$/);
  });

  it.skipIf(gpuPresent)('webgpu without an adapter fails with one line naming what is missing', async () => {
    const err = await probeDevice('webgpu').then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceUnavailableError);
    const message = (err as Error).message;
    expect(message).toMatch(/^--device webgpu: no WebGPU adapter found.*; use --device cpu$/);
    expect(message).not.toContain('\n');
    expect(message).not.toContain('/onnxruntime_src/'); // no native source paths
    expect(message).toMatch(/libvulkan|Vulkan driver/);
  });

  it.skipIf(cudaInstalled)('cuda without the provider libraries fails with the install command', async () => {
    const err = await probeDevice('cuda').then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceUnavailableError);
    const message = (err as Error).message;
    expect(message).toMatch(/^--device cuda: onnxruntime-node's CUDA provider is not installed/);
    expect(message).toContain(CUDA_INSTALL_COMMAND);
    expect(message).toMatch(/; use --device cpu$/);
    expect(message).not.toContain('\n');
  });

  it.skipIf(gpuPresent)('Model.load refuses webgpu before building anything', async () => {
    const dir = join(root, 'ckpt-probe');
    makeRandomTinyCheckpoint(dir, { seed: 2 });
    const cacheDir = join(root, 'models-probe');
    await expect(Model.load(openCheckpoint(dir), { device: 'webgpu', cacheDir })).rejects.toThrow(DeviceUnavailableError);
    expect(existsSync(cacheDir) ? readdirSync(cacheDir) : []).toEqual([]);
  });

  it('shortens onnxruntime messages to their readable reason', () => {
    const adapter =
      '/onnxruntime_src/onnxruntime/core/providers/webgpu/webgpu_context.cc:136 onnxruntime::webgpu::WebGpuContext::Initialize(const onnxruntime::webgpu::WebGpuContextConfig&)::<lambda()> adapter_result.status == wgpu::RequestAdapterStatus::Success was false. Failed to get a WebGPU adapter: No supported adapters\n';
    expect(shortReason(adapter)).toBe('Failed to get a WebGPU adapter: No supported adapters');
    expect(shortReason('OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library')).toBe(
      'OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library',
    );
  });
});

describe('fp32 → fp16 (round to nearest, ties to even)', () => {
  // [input, fp16 bits]; each tie case says which neighbour is even.
  const TABLE: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [0.1, 0x2e66], // 0.0999755859375
    [1 / 3, 0x3555],
    [65504, 0x7bff], // largest finite
    [65519, 0x7bff], // below the midpoint to 2^16
    [65520, 0x7c00], // midpoint: ties to even = inf
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [1 + 2 ** -11, 0x3c00], // tie between 1 (even) and 1 + 2^-10
    [1 + 3 * 2 ** -11, 0x3c02], // tie between mantissa 1 (odd) and 2 (even)
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
    [2049, 0x6800], // ulp 2 at 2048: tie → 2048
    [2051, 0x6802], // tie → 2052
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -25, 0x0400], // 1023.5 subnormal units: tie → 1024 = smallest normal
    [2 ** -14 - 2 ** -24, 0x03ff], // largest subnormal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // half of it: tie → 0
    [-(2 ** -25), 0x8000],
    [2 ** -25 * 1.0000001, 0x0001], // just above half
    [3 * 2 ** -25, 0x0002], // 1.5 units: tie → 2
    [5 * 2 ** -25, 0x0002], // 2.5 units: tie → 2
    [7 * 2 ** -25, 0x0004], // 3.5 units: tie → 4
    [1e-10, 0x0000],
    [-5.5e-5, 0x839b], // negative subnormal: 922.6 units → 923
  ];
  it.each(TABLE)('%d → %s', (x, bits) => {
    expect(float32ToFloat16Bits(x).toString(16)).toBe(bits.toString(16));
  });

  it('NaN stays NaN', () => {
    const h = float32ToFloat16Bits(NaN);
    expect(h & 0x7c00).toBe(0x7c00);
    expect(h & 0x3ff).not.toBe(0);
    expect(float16BitsToNumber(h)).toBeNaN();
  });

  it('decodes fp16 bits exactly', () => {
    expect(float16BitsToNumber(0x3c00)).toBe(1);
    expect(float16BitsToNumber(0x7bff)).toBe(65504);
    expect(float16BitsToNumber(0x0001)).toBe(2 ** -24);
    expect(float16BitsToNumber(0x8400)).toBe(-(2 ** -14));
    expect(float16BitsToNumber(0xfc00)).toBe(-Infinity);
    // every finite half survives fp16 → fp32 → fp16
    const all = Uint16Array.from({ length: 0x10000 }, (_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00);
    expect(float32ArrayToFloat16(float16ArrayToFloat32(all))).toEqual(all);
  });

  it('agrees with a brute-force nearest-even search on random fp32 values', () => {
    // All non-negative finite halves in increasing order (bits 0…0x7bff are monotone).
    const halves = Float64Array.from({ length: 0x7c00 }, (_, h) => float16BitsToNumber(h));
    const nearest = (x: number): number => {
      const a = Math.abs(x);
      const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
      if (a >= 65520) return sign | 0x7c00;
      let lo = 0;
      let hi = halves.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if ((halves[mid] as number) <= a) lo = mid;
        else hi = mid;
      }
      const dLo = a - (halves[lo] as number);
      const dHi = (halves[hi] as number) - a;
      const h = dLo < dHi ? lo : dHi < dLo ? hi : lo % 2 === 0 ? lo : hi;
      return sign | h;
    };
    const bits = new Uint32Array(20000);
    let s = 0x9e3779b9;
    for (let i = 0; i < bits.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      // exponents 0x66…0x8f (2^-25 … 2^16) cover subnormals, normals and overflow
      bits[i] = ((s >>> 0) & 0x807fffff) | ((0x66 + ((s >>> 23) % 0x2a)) << 23);
    }
    const xs = new Float32Array(bits.buffer);
    const got = float32ArrayToFloat16(xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i] as number;
      if (got[i] !== nearest(x)) throw new Error(`${x}: got 0x${(got[i] ?? 0).toString(16)}, want 0x${nearest(x).toString(16)}`);
    }
  });

  it('refuses a finite weight beyond the fp16 range, naming the tensor', () => {
    expect(() => weightToFloat16('model.layers.3.mlp.down_proj.weight', Float32Array.of(1, 70000))).toThrow(
      /weight "model\.layers\.3\.mlp\.down_proj\.weight" holds 70000, beyond the fp16 range/,
    );
    expect(Array.from(weightToFloat16('w', Float32Array.of(1, Infinity)))).toEqual([0x3c00, 0x7c00]);
  });
});

describe('fp16 weights, end to end on the CPU', () => {
  it('a tiny model built with fp16 weights matches the fp32 engine within 1e-2', async () => {
    const dir = join(root, 'ckpt-fp16');
    makeRandomTinyCheckpoint(dir, { seed: 5, dtype: 'BF16', slidingWindow: 8 });
    const ckpt = openCheckpoint(dir);
    const cacheDir = join(root, 'models-fp16');
    const m32 = await Model.load(ckpt, { cacheDir, intraOpThreads: 1, weightDtype: 'float32' });
    const m16 = await Model.load(ckpt, { cacheDir, intraOpThreads: 1, weightDtype: 'float16' });
    try {
      // Two cache entries; the fp16 weight file is about half the size (vectors stay fp32).
      const built = readdirSync(cacheDir).filter((d) => d !== IDENTITY_CACHE_FILE).sort();
      expect(built).toHaveLength(2);
      const fp16Dir = built.find((d) => d.endsWith('-fp16'));
      const fp32Dir = built.find((d) => !d.endsWith('-fp16'));
      expect(fp16Dir).toBeDefined();
      const bytes = (d: string | undefined): number => statSync(join(cacheDir, d ?? '', EXTERNAL_DATA_FILE)).size;
      expect(bytes(fp16Dir) / bytes(fp32Dir)).toBeLessThan(0.6);

      const V = ckpt.config.vocabSize;
      const tokens = Array.from({ length: 29 }, (_, i) => (i * 37 + 11) % V);
      const s32 = newSequence(m32);
      const s16 = newSequence(m16);
      const a = await prefill(m32, s32, tokens, { chunkTokens: 10, allLogits: true });
      const b = await prefill(m16, s16, tokens, { chunkTokens: 10, allLogits: true });
      let maxDiff = 0;
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs((a[i] as number) - (b[i] as number)));
      for (let step = 0; step < 6; step++) {
        const t = (step * 13 + 5) % V;
        const [da] = await decodeBatch(m32, [s32], [t]);
        const [db] = await decodeBatch(m16, [s16], [t]);
        for (let i = 0; i < V; i++) maxDiff = Math.max(maxDiff, Math.abs((da?.[i] as number) - (db?.[i] as number)));
      }
      expect(maxDiff).toBeLessThanOrEqual(1e-2);
      expect(maxDiff).toBeGreaterThan(0); // the fp16 rounding really happened
    } finally {
      await m32.close();
      await m16.close();
    }
  });
});
