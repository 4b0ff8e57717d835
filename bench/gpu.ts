// GPU benchmark (issue 7): the engine on onnxruntime-node's WebGPU (or CUDA) provider. One run prints
// one table, so every ratio in it is measured under the same conditions:
//   1. the provider's MatMul rate: `--mm-chain` chained fp32 MatMuls x [M, N] @ W [N, N] (M = N = --mm)
//      in one graph, host↔device copies of x and y included — the ceiling the model is held against;
//   2. parity: a tiny random model on the device (weights as the device stores them: fp16) against
//      the fp32 CPU engine, max |Δ logit| over a chunked prefill and a few decode steps (target ≤ 1e-2);
//   3. the reference size (hidden 256, 8 layers, 8 heads, 2 kv heads, ffn 1024, vocab 4096, window 1024):
//      prefill tok/s over a --ref-tokens prompt, then decode tok/s;
//   4. with --config FILE --random-weights: that shape (e.g. SpikingBrain-7B) with random weights, one
//      sequence prefilled through --lengths (milestones), then decode tok/s at the longest length.
// TFLOP/s achieved = tok/s × useful FLOPs per token (weights: 2 per weight; attention: 4·H·d per key
// actually attended; GLA: 2·(H+Hkv)·d² per token), also as a share of the MatMul rate of step 1.
//
//   node --import tsx bench/gpu.ts --device webgpu                         (steps 1–3)
//   node --import tsx bench/gpu.ts --config ../shared/spec/spikingbrain-7b/config.json --random-weights \
//        --lengths 4096,32768,131072                                       (steps 1–4)
// Flags: --device webgpu|cuda|cpu (default webgpu), --lengths a,b,c (default 4096), --chunk N (prefill
// tokens per step, default 4096), --decode-steps N (default 32), --ref-tokens N (default 8192),
// --layers N (keep the first N layers of --config: a full-width slice, to fit a short GPU lease),
// --mm N, --mm-chain N, --skip-ref, --skip-parity, --plain (plain-op graph), --weight-dtype float16|float32,
// --also-plain (parity and reference size with the plain-op graph too), --placement (log onnxruntime's node placement of the parity model at verbose level, on stderr),
// --cache-dir DIR (built models; default a temporary folder, removed at the end), --threads N.
// A 7B-shaped model in fp16 is ~15 GB of external data and takes minutes to build: build it on the
// GPU machine only. Writes gpu-bench.json to $OUT (or --json FILE) after every step.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { layersOfKind, parseModelConfig, type ModelConfig } from '../src/engine/model/config.ts';
import { probeDevice, resolveExecutionProviders, type Device } from '../src/engine/model/device.ts';
import { Model, type ModelLoadOptions } from '../src/engine/model/model.ts';
import { GraphBuilder } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { decodeBatch, newSequence, prefill, type Sequence } from '../src/engine/model/sequence.ts';
import { REFERENCE_CONFIG_JSON } from './common.ts';

// ---- flags -------------------------------------------------------------------------------------
const argv = process.argv.slice(2);
function str(name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`--${name} needs a value`);
  return v;
}
function num(name: string, fallback: number): number {
  const s = str(name);
  const v = s === undefined ? fallback : Number(s);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name} needs a positive integer, got ${s}`);
  return v;
}
const has = (name: string): boolean => argv.includes(`--${name}`);

const DEVICE = (str('device') ?? 'webgpu') as Device;
if (!['cpu', 'webgpu', 'cuda'].includes(DEVICE)) throw new Error(`--device must be cpu, webgpu or cuda, got ${DEVICE}`);
const ON_GPU = DEVICE !== 'cpu';
const CONFIG_FILE = str('config');
if (CONFIG_FILE !== undefined && !has('random-weights')) {
  throw new Error('--config needs --random-weights (this bench runs shapes without checkpoints)');
}
const LENGTHS = (str('lengths') ?? '4096').split(',').map((s) => {
  const n = Number(s.trim().replace(/[kK]$/, '000'));
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--lengths: bad length "${s}"`);
  return n;
}).sort((a, b) => a - b);
const CHUNK = num('chunk', 4096);
const DECODE_STEPS = num('decode-steps', 32);
const REF_TOKENS = num('ref-tokens', 8192);
const MM = num('mm', ON_GPU ? 4096 : 512);
const MM_CHAIN = num('mm-chain', ON_GPU ? 16 : 4);
const THREADS = num('threads', availableParallelism());
const LAYERS = str('layers') === undefined ? null : num('layers', 1);
const PLAIN = has('plain');
const WEIGHT_DTYPE = str('weight-dtype') as 'float16' | 'float32' | undefined;
const JSON_PATH = str('json') ?? (process.env['OUT'] ? join(process.env['OUT'], 'gpu-bench.json') : null);

const REFERENCE_CONFIG: ModelConfig = parseModelConfig(REFERENCE_CONFIG_JSON);

const PARITY_CONFIG: ModelConfig = parseModelConfig({
  model_type: 'gla_swa',
  vocab_size: 512,
  hidden_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 256,
  sliding_window: 16,
});

// ---- results -----------------------------------------------------------------------------------
interface ModelRow {
  readonly model: string;
  readonly what: string;
  readonly tokens: number;
  readonly tokPerSec: number;
  readonly tflops: number;
}
const results: {
  device: Device;
  gpu: string;
  onnxruntime: string;
  node: string;
  graph: string;
  executionProviders: string[];
  matmul?: { m: number; n: number; chain: number; tflops: number; secPerRun: number };
  parity: { graph: string; maxAbsDiff: number; maxAbsLogit: number; tokens: number; weightDtype: string }[];
  models: { name: string; params: number; layers: number; loadSec: number; rows: ModelRow[] }[];
  errors: string[];
} = {
  device: DEVICE,
  gpu: gpuName(),
  onnxruntime: ort.env.versions.common,
  node: process.version,
  graph: PLAIN ? 'plain' : 'fused',
  executionProviders: resolveExecutionProviders(DEVICE),
  parity: [],
  models: [],
  errors: [],
};

function save(): void {
  if (JSON_PATH === null) return;
  writeFileSync(JSON_PATH, `${JSON.stringify(results, null, 2)}\n`);
}

function log(msg: string): void {
  process.stderr.write(`[gpu-bench ${(performance.now() / 1000).toFixed(0)}s] ${msg}\n`);
}

/** The GPU's name from nvidia-smi or the NVIDIA driver's /proc entry; 'cpu' or 'unknown' otherwise. */
function gpuName(): string {
  if (DEVICE === 'cpu') return 'cpu';
  try {
    return execFileSync('nvidia-smi', ['--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'], { encoding: 'utf8', timeout: 10000 }).trim();
  } catch {
    // no nvidia-smi: try the driver's proc files
  }
  try {
    const root = '/proc/driver/nvidia/gpus';
    const first = readdirSync(root)[0];
    if (first !== undefined) {
      const m = /Model:\s*(.+)/.exec(readFileSync(join(root, first, 'information'), 'utf8'));
      if (m?.[1] !== undefined) return m[1].trim();
    }
  } catch {
    // not an NVIDIA machine
  }
  return 'unknown';
}

// ---- 1. MatMul rate ----------------------------------------------------------------------------
async function matmulRate(dir: string): Promise<void> {
  const [M, N, chain] = [MM, MM, MM_CHAIN];
  const g = new GraphBuilder('mm.onnx.data');
  const x = g.input('x', DataType.FLOAT, [M, N]);
  // One weight shared by every link; scaled so values stay O(1) along the chain.
  const w = g.weight('w', [N, N], () => {
    const a = new Float32Array(N * N);
    const s = 1 / Math.sqrt(N);
    for (let i = 0; i < a.length; i++) a[i] = (((i * 2654435761) >>> 0) / 2 ** 32 - 0.5) * 2 * Math.sqrt(3) * s;
    return a;
  });
  let y = x;
  for (let i = 0; i < chain; i++) y = g.op('MatMul', [y, w]);
  g.output('y', y, DataType.FLOAT, [M, N]);
  g.writeExternalData(join(dir, 'mm.onnx.data'));
  writeFileSync(join(dir, 'mm.onnx'), encodeModel(g.toModel('mm', new Map([['', 17]]))));
  const session = await ort.InferenceSession.create(join(dir, 'mm.onnx'), {
    executionProviders: resolveExecutionProviders(DEVICE),
    intraOpNumThreads: THREADS,
    graphOptimizationLevel: 'all',
  });
  const feed = { x: new ort.Tensor('float32', Float32Array.from({ length: M * N }, (_, i) => ((i % 13) - 6) / 6), [M, N]) };
  for (let i = 0; i < 2; i++) await session.run(feed);
  const iters = ON_GPU ? 8 : 10;
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await session.run(feed);
  const secPerRun = (performance.now() - t0) / 1000 / iters;
  await session.release();
  results.matmul = { m: M, n: N, chain, secPerRun, tflops: (2 * M * N * N * chain) / secPerRun / 1e12 };
  log(`MatMul ${chain}×[${M}×${N}]@[${N}×${N}]: ${results.matmul.tflops.toFixed(2)} TFLOP/s`);
}

// ---- FLOPs -------------------------------------------------------------------------------------
/** Useful FLOPs per token for the weights (lm_head apart), per attended key, and per GLA token. */
function flopsOf(c: ModelConfig): { weights: number; lmHead: number; perKey: number; glaPerToken: number } {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d, intermediateSize: F } = c;
  let params = 0;
  for (const kind of c.layerKinds) {
    params += D * (H * d + 2 * Hkv * d) + H * d * D + 3 * D * F;
    if (kind === 'gla') params += D * 16 + 16 * Hkv * d;
  }
  const attn = c.layerKinds.filter((k) => k !== 'gla').length;
  const gla = layersOfKind(c, 'gla').length;
  return { weights: 2 * params, lmHead: 2 * D * c.vocabSize, perKey: attn * 4 * H * d, glaPerToken: gla * 2 * (H + Hkv) * d * d };
}

/** Σ over positions p in [from, to) of the keys a query at p attends: min(p, W) + 1. */
function keysAttended(c: ModelConfig, from: number, to: number): number {
  const W = c.slidingWindow ?? Infinity;
  let total = 0;
  for (let p = from; p < to; p++) total += Math.min(p, W) + 1;
  return total;
}

// ---- the model steps ---------------------------------------------------------------------------
function loadOptions(cacheDir: string, device: Device, fused: boolean, weightDtype?: 'float16' | 'float32'): ModelLoadOptions {
  const dtype = weightDtype ?? WEIGHT_DTYPE;
  let lastLogged = 0;
  return {
    cacheDir,
    device,
    intraOpThreads: THREADS,
    fusedOps: fused,
    ...(dtype !== undefined ? { weightDtype: dtype } : {}),
    onProgress: (p) => {
      const now = performance.now();
      if (now - lastLogged > 10000 || p.tensorsDone === p.tensorsTotal) {
        lastLogged = now;
        log(`  building: ${p.tensorsDone}/${p.tensorsTotal} tensors, ${(p.bytesDone / 2 ** 30).toFixed(2)}/${(p.bytesTotal / 2 ** 30).toFixed(2)} GiB`);
      }
    },
  };
}

function promptTokens(n: number, vocab: number, salt: number): number[] {
  let s = (12345 + salt * 7919) >>> 0;
  return Array.from({ length: n }, () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % vocab);
}

async function parity(cacheDir: string, fused: boolean): Promise<void> {
  const ckpt = randomCheckpoint(PARITY_CONFIG, { seed: 7, gkLayout: 'lowrank' });
  const cpu = await Model.load(ckpt, { ...loadOptions(cacheDir, 'cpu', fused, 'float32'), onProgress: () => undefined });
  const dev = await Model.load(ckpt, { ...loadOptions(cacheDir, DEVICE, fused), onProgress: () => undefined });
  try {
    const V = PARITY_CONFIG.vocabSize;
    const tokens = promptTokens(40, V, 1);
    const sc = newSequence(cpu);
    const sd = newSequence(dev);
    const a = await prefill(cpu, sc, tokens, { chunkTokens: 16, allLogits: true });
    const b = await prefill(dev, sd, tokens, { chunkTokens: 16, allLogits: true });
    let maxDiff = 0;
    let maxLogit = 0;
    const cmp = (x: Float32Array, y: Float32Array): void => {
      for (let i = 0; i < x.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs((x[i] as number) - (y[i] as number)));
        maxLogit = Math.max(maxLogit, Math.abs(x[i] as number));
      }
    };
    cmp(a, b);
    for (let step = 0; step < 8; step++) {
      const t = (step * 31 + 3) % V;
      const [x] = await decodeBatch(cpu, [sc], [t]);
      const [y] = await decodeBatch(dev, [sd], [t]);
      if (x !== undefined && y !== undefined) cmp(x, y);
    }
    const weightDtype = WEIGHT_DTYPE ?? (ON_GPU ? 'float16' : 'float32');
    if (has('placement')) {
      // onnxruntime prints, at verbose level, which provider each node went to ("Node placements"):
      // on stderr, for gpu-run.sh to pick out. Same op set as the big models (one graph builder).
      const s = await ort.InferenceSession.create(dev.modelPath, { executionProviders: resolveExecutionProviders(DEVICE), logSeverityLevel: 0, logVerbosityLevel: 0 });
      await s.release();
    }
    results.parity.push({ graph: fused ? 'fused' : 'plain', maxAbsDiff: maxDiff, maxAbsLogit: maxLogit, tokens: tokens.length + 8, weightDtype });
    log(`parity (${fused ? 'fused' : 'plain'} graph): max |Δ logit| ${maxDiff.toExponential(2)} (logits up to ${maxLogit.toFixed(2)}), device weights ${weightDtype}`);
  } finally {
    await cpu.close();
    await dev.close();
  }
}

async function decodeRate(model: Model, seq: Sequence, steps: number): Promise<number> {
  const V = model.config.vocabSize;
  let tok = 7;
  for (let i = 0; i < 3; i++) await decodeBatch(model, [seq], [(tok = (tok * 31 + 1) % V)]);
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) await decodeBatch(model, [seq], [(tok = (tok * 31 + 1) % V)]);
  return steps / ((performance.now() - t0) / 1000);
}

/** Loads `config` with random weights, prefills one sequence through `lengths`, then decodes. */
async function benchModel(name: string, config: ModelConfig, lengths: readonly number[], cacheDir: string, fused: boolean): Promise<void> {
  const ckpt = randomCheckpoint(config, { seed: 1, gkLayout: 'lowrank' });
  log(`${name}: ${(ckpt.numParameters / 1e9).toFixed(2)}B params, loading (builds on a cache miss)`);
  const t0 = performance.now();
  const model = await Model.load(ckpt, loadOptions(cacheDir, DEVICE, fused));
  const entry = { name, params: ckpt.numParameters, layers: config.numLayers, loadSec: (performance.now() - t0) / 1000, rows: [] as ModelRow[] };
  results.models.push(entry);
  log(`${name}: loaded in ${entry.loadSec.toFixed(1)} s`);
  save();
  const f = flopsOf(config);
  try {
    // Warm-up: one short chunk on a throwaway sequence (shader compilation, arena growth).
    await prefill(model, newSequence(model), promptTokens(Math.min(CHUNK, 256), config.vocabSize, 9), { chunkTokens: CHUNK });
    const seq = newSequence(model);
    let elapsed = 0;
    let done = 0;
    for (const length of lengths) {
      const ids = promptTokens(length - done, config.vocabSize, length);
      const t = performance.now();
      await prefill(model, seq, ids, { chunkTokens: CHUNK });
      elapsed += (performance.now() - t) / 1000;
      done = length;
      const flops = length * (f.weights + f.glaPerToken) + f.perKey * keysAttended(config, 0, length) + f.lmHead * Math.ceil(length / CHUNK);
      const row: ModelRow = { model: name, what: `prefill ${kTok(length)}`, tokens: length, tokPerSec: length / elapsed, tflops: flops / elapsed / 1e12 };
      entry.rows.push(row);
      log(`${name}: ${row.what}: ${row.tokPerSec.toFixed(0)} tok/s, ${row.tflops.toFixed(2)} TFLOP/s`);
      save();
    }
    const rate = await decodeRate(model, seq, DECODE_STEPS);
    const keys = Math.min(done, config.slidingWindow ?? done) + 1;
    const perToken = f.weights + f.glaPerToken + f.lmHead + f.perKey * keys;
    entry.rows.push({ model: name, what: `decode at ${kTok(done)}`, tokens: DECODE_STEPS, tokPerSec: rate, tflops: (rate * perToken) / 1e12 });
    log(`${name}: decode at ${kTok(done)}: ${rate.toFixed(1)} tok/s`);
    save();
  } finally {
    await model.close();
  }
}

const kTok = (n: number): string => (n % 1024 === 0 ? `${n / 1024}K` : `${n}`);

async function stage(name: string, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const msg = `${name}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`;
    results.errors.push(msg);
    log(`FAILED ${msg}`);
  }
  save();
}

function printTable(): void {
  const mm = results.matmul?.tflops;
  console.log(`\nspikeserve GPU bench — device ${DEVICE} (${results.executionProviders.join(' → ')}), GPU: ${results.gpu}`);
  console.log(`onnxruntime-node ${results.onnxruntime}, node ${results.node}, ${results.graph} graph, weights ${WEIGHT_DTYPE ?? (ON_GPU ? 'float16' : 'float32')} (compute float32), prefill chunk ${CHUNK}`);
  console.log('');
  console.log('| measure | value | TFLOP/s | share of MatMul rate |');
  console.log('|---|---|---|---|');
  if (results.matmul !== undefined) {
    const m = results.matmul;
    console.log(`| MatMul rate: ${m.chain} × [${m.m}×${m.n}]·[${m.n}×${m.n}] fp32 | ${(m.secPerRun * 1000).toFixed(1)} ms/run | ${m.tflops.toFixed(2)} | 100% |`);
  }
  for (const p of results.parity) {
    console.log(`| parity vs CPU fp32 (tiny model, ${p.graph} graph, ${p.tokens} tokens, device weights ${p.weightDtype}) | max abs diff ${p.maxAbsDiff.toExponential(2)} (target ≤ 1e-2; logits up to ${p.maxAbsLogit.toFixed(1)}) | | |`);
  }
  for (const m of results.models) {
    console.log(`| ${m.name}: ${(m.params / 1e9).toFixed(2)}B params, ${m.layers} layers | load ${m.loadSec.toFixed(1)} s | | |`);
    for (const r of m.rows) {
      const share = mm === undefined ? '' : `${((100 * r.tflops) / mm).toFixed(1)}%`;
      console.log(`| ${m.name}: ${r.what} | ${r.tokPerSec.toFixed(r.tokPerSec < 100 ? 1 : 0)} tok/s | ${r.tflops.toFixed(3)} | ${share} |`);
    }
  }
  for (const e of results.errors) console.log(`| error | ${e} | | |`);
  if (JSON_PATH !== null) console.log(`\nJSON: ${JSON_PATH}`);
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-gpu-'));
  const cacheDir = str('cache-dir') ?? join(tmp, 'models');
  mkdirSync(cacheDir, { recursive: true });
  try {
    log(`device ${DEVICE}, GPU: ${results.gpu}`);
    await probeDevice(DEVICE); // one clear line and exit 1 when the device is not usable
    await stage('matmul', () => matmulRate(tmp));
    // The graph variants to run: the chosen one (--plain or fused), and with --also-plain the plain one too.
    const graphs = PLAIN ? [false] : has('also-plain') ? [true, false] : [true];
    for (const fused of graphs) {
      const tag = fused ? 'fused' : 'plain';
      if (!has('skip-parity')) await stage(`parity ${tag}`, () => parity(cacheDir, fused));
      if (!has('skip-ref')) await stage(`reference ${tag}`, () => benchModel(`reference (${tag})`, REFERENCE_CONFIG, [REF_TOKENS], cacheDir, fused));
    }
    if (CONFIG_FILE !== undefined) {
      const raw = JSON.parse(readFileSync(CONFIG_FILE, 'utf8')) as Record<string, unknown>;
      let config = parseModelConfig(raw);
      // ../shared/spec/spikingbrain-7b/config.json → spikingbrain-7b; x/spikingbrain-7b.config.json → spikingbrain-7b
      const parts = CONFIG_FILE.split('/');
      const file = parts[parts.length - 1] ?? 'config.json';
      let name = file === 'config.json' ? (parts[parts.length - 2] ?? 'config') : file.replace(/(\.config)?\.json$/, '');
      if (LAYERS !== null && LAYERS < config.numLayers) {
        const attn = raw['attn_layers'];
        config = parseModelConfig({ ...raw, num_hidden_layers: LAYERS, ...(Array.isArray(attn) ? { attn_layers: attn.filter((i) => typeof i === 'number' && i < LAYERS) } : {}) });
        name = `${name} (first ${LAYERS} of ${parseModelConfig(raw).numLayers} layers)`;
      }
      await stage(name, () => benchModel(`${name} (${PLAIN ? 'plain' : 'fused'})`, config, LENGTHS, cacheDir, !PLAIN));
    }
    printTable();
  } finally {
    save();
    if (str('cache-dir') === undefined && existsSync(tmp)) rmSync(tmp, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  process.stderr.write(`gpu bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
