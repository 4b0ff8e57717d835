// GPU benchmark (issue 7): the engine on onnxruntime-node's WebGPU (or CUDA) provider. One run prints
// one table, so every ratio in it is measured under the same conditions:
//   1. the provider's MatMul rate: `--mm-chain` chained fp32 MatMuls x [M, N] @ W [N, N] (M = N = --mm)
//      in one graph, host↔device copies of x and y included — the ceiling the model is held against;
//   2. parity: a tiny random model on the device (weights as the device stores them: fp16) against
//      the fp32 CPU engine, max |Δ logit| over a chunked prefill and a few decode steps (target ≤ 1e-2);
//   3. the reference size (hidden 256, 8 layers, 8 heads, 2 kv heads, ffn 1024, vocab 4096, window 1024):
//      prefill tok/s over a --ref-tokens prompt, then decode tok/s;
//   4. the io probe (./gpu-io-probe.ts, in a child process: it may abort): GLA states kept on the GPU
//      between decode steps (preferredOutputLocation 'gpu-buffer', fed back as inputs) against the host
//      round trip, step by step (max |Δ logit|) and in ms/step;
//   5. with --config FILE --random-weights: that shape (e.g. SpikingBrain-7B) with random weights, built
//      by --build-processes processes (./gpu-build.ts), one sequence prefilled through --lengths
//      (milestones), each within its --max-seconds-per-length budget, then decode tok/s at that depth;
//   after each decode (3 and 5): what the decode step's host↔device IO alone costs (./gpu-copy-cost.ts).
// A milestone cut by its budget reports what it measured (tok/s to where it stopped, and the steady rate
// of the chunks after the window filled: prefill cost is flat in depth there) and, labelled
// EXTRAPOLATED, the full-prompt TTFT at that steady rate. An extrapolation is never a measurement.
// TFLOP/s achieved = tok/s × useful FLOPs per token (weights: 2 per weight; attention: 4·H·d per key
// actually attended; GLA: 2·(H+Hkv)·d² per token), also as a share of the MatMul rate of step 1.
//
//   node --import tsx bench/gpu.ts --device webgpu                         (steps 1–4)
//   node --import tsx bench/gpu.ts --config test/fixtures/spikingbrain-7b/config.json --random-weights \
//        --lengths 4096,32768,131072 --max-seconds-per-length 60,150,90 --deadline 500   (steps 1–5)
// Flags: --device webgpu|cuda|cpu (default webgpu), --lengths a,b,c (default 4096), --chunk N (prefill
// tokens per step, default 4096), --decode-steps N (default 32), --ref-tokens N (default 8192),
// --layers N (keep the first N layers of --config: a full-width slice, to fit a short GPU lease),
// --max-seconds-per-length S or S1,S2,… (one per length, sorted), --deadline S (seconds after start:
// later stages are skipped and prefill stops early to keep 45 s for decode and the IO measurement),
// --build-only (build the --config model, time it, no session), --build-processes N (default: cores),
// --io-probe ref|config|off (the model the io probe runs; default ref), --io-probe-steps N (16),
// --skip-copy-cost, --mm N, --mm-chain N, --skip-ref, --skip-parity, --plain (plain-op graph),
// --weight-dtype float16|float32|int8|int4, --also-plain (parity and reference size with the plain-op graph too),
// --placement (log onnxruntime's node placement of the parity model at verbose level, on stderr),
// --cache-dir DIR (built models; default a temporary folder, removed at the end), --threads N.
// A 7B-shaped model in fp16 is ~15 GB of external data: build it on the GPU machine. Writes
// gpu-bench.json to $OUT (or --json FILE) after every step.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { parseModelConfig, type ModelConfig } from '../src/engine/model/config.ts';
import { probeDevice, resolveExecutionProviders, type Device } from '../src/engine/model/device.ts';
import { Model, type ModelLoadOptions } from '../src/engine/model/model.ts';
import type { GraphOptions } from '../src/engine/model/onnx/context.ts';
import { GraphBuilder, type WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { decodeBatch, newSequence, prefill, type Sequence } from '../src/engine/model/sequence.ts';
import { REFERENCE_CONFIG_JSON } from './common.ts';
import { BUILD_PART_FLAG, buildModel, buildPartChild, checkpointOf, type BuildSpec } from './gpu-build.ts';
import { measureCopyCost } from './gpu-copy-cost.ts';
import { PROBE_FLAG, ioProbeChild, runIoProbe } from './gpu-io-probe.ts';
import { flopsOf, prefillMilestones, promptTokens } from './gpu-prefill.ts';
import { kTok, printTable, type ModelEntry, type Results } from './gpu-report.ts';

// ---- flags -------------------------------------------------------------------------------------
const argv = process.argv.slice(2);
/** A flag's value; the last one wins (so `gpu-run.sh next --deadline 400` overrides the plan). */
function str(name: string): string | undefined {
  const i = argv.lastIndexOf(`--${name}`);
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
/** Per length (sorted like LENGTHS): wall-clock seconds its part of the prefill may take; Infinity: no budget. */
const LENGTH_BUDGETS_SEC: readonly number[] = (() => {
  const s = str('max-seconds-per-length');
  if (s === undefined) return LENGTHS.map(() => Infinity);
  const xs = s.split(',').map((x) => Number(x.trim()));
  if (xs.some((x) => !Number.isFinite(x) || x <= 0) || (xs.length !== 1 && xs.length !== LENGTHS.length)) {
    throw new Error(`--max-seconds-per-length: one positive number, or one per length (${LENGTHS.length}); got "${s}"`);
  }
  return LENGTHS.map((_, i) => xs[xs.length === 1 ? 0 : i] ?? Infinity);
})();
const DEADLINE_SEC = str('deadline') === undefined ? null : num('deadline', 1);
/** What a deadline keeps back, after a model's prefill, for its decode, its IO measurement and the table. */
const RESERVE_AFTER_PREFILL_SEC = 45;
const CHUNK = num('chunk', 4096);
const DECODE_STEPS = num('decode-steps', 32);
const REF_TOKENS = num('ref-tokens', 8192);
const MM = num('mm', ON_GPU ? 4096 : 512);
const MM_CHAIN = num('mm-chain', ON_GPU ? 16 : 4);
const THREADS = num('threads', availableParallelism());
const BUILD_PROCESSES = num('build-processes', availableParallelism());
const LAYERS = str('layers') === undefined ? null : num('layers', 1);
const PLAIN = has('plain');
const WEIGHT_DTYPE = str('weight-dtype') as WeightDtype | undefined;
if (WEIGHT_DTYPE !== undefined && !['float16', 'float32', 'int8', 'int4'].includes(WEIGHT_DTYPE)) throw new Error('--weight-dtype needs float16, float32, int8 or int4');
const IO_PROBE = str('io-probe') ?? 'ref';
if (!['ref', 'config', 'off'].includes(IO_PROBE)) throw new Error(`--io-probe must be ref, config or off, got ${IO_PROBE}`);
const IO_PROBE_STEPS = num('io-probe-steps', 16);
const JSON_PATH = str('json') ?? (process.env['OUT'] ? join(process.env['OUT'], 'gpu-bench.json') : null);
/** Sub-chunk of the plain-op GLA; passed explicitly so the prebuilt model is the one Model.load asks for. */
const GLA_SUB_CHUNK = 16;

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
const results: Results = {
  device: DEVICE,
  gpu: gpuName(),
  onnxruntime: ort.env.versions.common,
  node: process.version,
  graph: PLAIN ? 'plain' : 'fused',
  executionProviders: resolveExecutionProviders(DEVICE),
  parity: [],
  models: [],
  errors: [],
  skipped: [],
};

function save(): void {
  if (JSON_PATH === null) return;
  writeFileSync(JSON_PATH, `${JSON.stringify(results, null, 2)}\n`);
}

function log(msg: string): void {
  process.stderr.write(`[gpu-bench ${(performance.now() / 1000).toFixed(0)}s] ${msg}\n`);
}

/** Seconds until --deadline (Infinity without one). */
const secondsLeft = (): number => (DEADLINE_SEC === null ? Infinity : DEADLINE_SEC - performance.now() / 1000);

/** The GPU's name from nvidia-smi or the NVIDIA driver's /proc entry; 'cpu' or 'unknown' otherwise. */
function gpuName(): string {
  if (DEVICE === 'cpu' || has(PROBE_FLAG) || has(BUILD_PART_FLAG)) return 'cpu';
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

// ---- the model steps ---------------------------------------------------------------------------
const defaultWeightDtype = (device: Device): WeightDtype => WEIGHT_DTYPE ?? (device === 'cpu' ? 'float32' : 'float16');

/** The graph Model.load builds for these options: spelled out, so a prebuilt cache entry matches it. */
function graphOptionsFor(device: Device, fused: boolean, weightDtype?: WeightDtype): GraphOptions {
  return { fusedOps: fused, glaSubChunk: GLA_SUB_CHUNK, weightDtype: weightDtype ?? defaultWeightDtype(device) };
}

function loadOptions(cacheDir: string, device: Device, fused: boolean, weightDtype?: WeightDtype, onBuild?: () => void): ModelLoadOptions {
  const g = graphOptionsFor(device, fused, weightDtype);
  let lastLogged = 0;
  return {
    cacheDir,
    device,
    intraOpThreads: THREADS,
    fusedOps: g.fusedOps,
    glaSubChunk: g.glaSubChunk,
    weightDtype: g.weightDtype ?? 'float32',
    onProgress: (p) => {
      onBuild?.();
      const now = performance.now();
      if (now - lastLogged > 10000 || p.tensorsDone === p.tensorsTotal) {
        lastLogged = now;
        log(`  building: ${p.tensorsDone}/${p.tensorsTotal} tensors, ${(p.bytesDone / 2 ** 30).toFixed(2)}/${(p.bytesTotal / 2 ** 30).toFixed(2)} GiB`);
      }
    },
  };
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

/** Builds `config` with random weights, loads it, prefills one sequence through `lengths`, then decodes. */
async function benchModel(name: string, rawConfig: Record<string, unknown>, lengths: readonly number[], budgetsSec: readonly number[], cacheDir: string, fused: boolean): Promise<void> {
  const spec: BuildSpec = { config: rawConfig, graphOptions: graphOptionsFor(DEVICE, fused) };
  const ckpt = checkpointOf(spec);
  const config = ckpt.config;
  log(`${name}: ${(ckpt.numParameters / 1e9).toFixed(2)}B params, building (unless cached)`);
  const built = await buildModel(spec, cacheDir, BUILD_PROCESSES, log);
  const entry: ModelEntry = {
    name,
    params: ckpt.numParameters,
    layers: config.numLayers,
    build: built.cached ? null : { seconds: built.seconds, bytes: built.bytes, processes: built.processes },
    sessionSec: 0,
    rows: [],
  };
  results.models.push(entry);
  if (!built.cached) log(`${name}: built in ${built.seconds.toFixed(1)} s (${(built.bytes / 2 ** 30).toFixed(2)} GiB, ${built.processes} processes)`);
  let rebuilt = false;
  const t0 = performance.now();
  const model = await Model.load(ckpt, loadOptions(cacheDir, DEVICE, fused, undefined, () => (rebuilt = true)));
  entry.sessionSec = (performance.now() - t0) / 1000;
  // Model.load building again means its cache entry is not the one gpu-build.ts wrote: say so.
  if (rebuilt) results.errors.push(`${name}: Model.load rebuilt the model (the prebuilt cache entry did not match): session time includes a serial build`);
  log(`${name}: session created in ${entry.sessionSec.toFixed(1)} s`);
  save();
  const f = flopsOf(config);
  try {
    // Warm-up: one short chunk on a throwaway sequence (shader compilation, arena growth).
    await prefill(model, newSequence(model), promptTokens(Math.min(CHUNK, 256), config.vocabSize, 9), { chunkTokens: CHUNK });
    const seq = newSequence(model);
    await prefillMilestones(model, seq, {
      name,
      chunkTokens: CHUNK,
      lengths,
      budgetsSec,
      secondsLeft,
      reserveSec: RESERVE_AFTER_PREFILL_SEC,
      log,
      onRow: (row) => {
        entry.rows.push(row);
        save();
      },
    });
    const done = seq.numTokens;
    const rate = await decodeRate(model, seq, DECODE_STEPS);
    const keys = Math.min(done, config.slidingWindow ?? done) + 1;
    const perToken = f.weights + f.glaPerToken + f.lmHead + f.perKey * keys;
    entry.rows.push({ model: name, what: `decode at ${kTok(done)}`, kind: 'measured', tokens: DECODE_STEPS, tokPerSec: rate, tflops: (rate * perToken) / 1e12, seconds: 1 / rate });
    log(`${name}: decode at ${kTok(done)}: ${rate.toFixed(1)} tok/s`);
    save();
    if (!has('skip-copy-cost')) {
      const dir = mkdtempSync(join(tmpdir(), 'spikeserve-copy-'));
      try {
        const rows = await measureCopyCost(config, seq.keptTokens, { device: DEVICE, threads: THREADS, minSeconds: 1, dir });
        entry.copyCost = { pastTokens: seq.keptTokens, decodeMsPerStep: 1000 / rate, rows };
        for (const r of rows) log(`${name}: decode IO (${r.variant}): ${(r.hostToDeviceBytes / 1e6).toFixed(1)} MB in, ${(r.deviceToHostBytes / 1e6).toFixed(1)} MB out: ${r.msPerRun.toFixed(2)} ms`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      save();
    }
  } finally {
    await model.close();
  }
}

async function stage(name: string, body: () => Promise<void>, minSecondsLeft = 0): Promise<void> {
  if (secondsLeft() < minSecondsLeft) {
    results.skipped.push(`${name}: ${Math.max(0, secondsLeft()).toFixed(0)} s left before --deadline`);
    log(`SKIPPED ${name}: deadline`);
    save();
    return;
  }
  try {
    await body();
  } catch (err) {
    const msg = `${name}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`;
    results.errors.push(msg);
    log(`FAILED ${msg}`);
  }
  save();
}

/** The --config file's raw config.json (first --layers layers) and a short name for it. */
function configModel(file: string): { name: string; raw: Record<string, unknown> } {
  let raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  // test/fixtures/spikingbrain-7b/config.json → spikingbrain-7b; x/spikingbrain-7b.config.json → spikingbrain-7b
  const parts = file.split('/');
  const base = parts[parts.length - 1] ?? 'config.json';
  let name = base === 'config.json' ? (parts[parts.length - 2] ?? 'config') : base.replace(/(\.config)?\.json$/, '');
  const numLayers = parseModelConfig(raw).numLayers;
  if (LAYERS !== null && LAYERS < numLayers) {
    const attn = raw['attn_layers'];
    raw = { ...raw, num_hidden_layers: LAYERS, ...(Array.isArray(attn) ? { attn_layers: attn.filter((i) => typeof i === 'number' && i < LAYERS) } : {}) };
    name = `${name} (first ${LAYERS} of ${numLayers} layers)`;
  }
  return { name, raw };
}

async function ioProbe(cacheDir: string): Promise<void> {
  const fused = !PLAIN;
  const target = IO_PROBE === 'config' && CONFIG_FILE !== undefined ? configModel(CONFIG_FILE) : { name: 'reference size', raw: { ...REFERENCE_CONFIG_JSON } };
  const window = parseModelConfig(target.raw).slidingWindow ?? 512;
  log(`io probe (${target.name}) in a child process`);
  const r = await runIoProbe(
    {
      device: DEVICE,
      name: target.name,
      config: target.raw,
      fused,
      weightDtype: defaultWeightDtype(DEVICE),
      cacheDir,
      threads: THREADS,
      promptTokens: window + 64,
      steps: IO_PROBE_STEPS,
    },
    // A hung child must not eat the lease: the reference size takes ~10 s; a big --config model
    // loads a second session.
    IO_PROBE === 'ref' ? 90 : 400,
  );
  results.ioProbe = r;
  log(`io probe: ${r.status}${r.signal !== null ? ` (signal ${r.signal})` : ''}${r.model !== undefined ? `, max |Δ| ${r.model.maxAbsDiff.toExponential(2)}, ${r.model.msPerStepGpuStates.toFixed(2)} vs ${r.model.msPerStepHost.toFixed(2)} ms/step` : ''}`);
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-gpu-'));
  const cacheDir = str('cache-dir') ?? join(tmp, 'models');
  mkdirSync(cacheDir, { recursive: true });
  try {
    log(`device ${DEVICE}, GPU: ${results.gpu}`);
    if (has('build-only')) {
      if (CONFIG_FILE === undefined) throw new Error('--build-only needs --config FILE --random-weights');
      const { name, raw } = configModel(CONFIG_FILE);
      const b = await buildModel({ config: raw, graphOptions: graphOptionsFor(DEVICE, !PLAIN) }, cacheDir, BUILD_PROCESSES, log);
      results.buildOnly = { model: name, seconds: b.seconds, bytes: b.bytes, processes: b.processes, cached: b.cached };
      log(`${name}: ${b.cached ? 'cached' : `built in ${b.seconds.toFixed(1)} s, ${(b.bytes / 2 ** 30).toFixed(2)} GiB, ${b.processes} processes`} (${b.modelPath})`);
      printTable(results, CHUNK, defaultWeightDtype(DEVICE), JSON_PATH);
      return;
    }
    await probeDevice(DEVICE); // one clear line and exit 1 when the device is not usable
    await stage('matmul', () => matmulRate(tmp));
    // The graph variants to run: the chosen one (--plain or fused), and with --also-plain the plain one too.
    const graphs = PLAIN ? [false] : has('also-plain') ? [true, false] : [true];
    for (const fused of graphs) {
      const tag = fused ? 'fused' : 'plain';
      if (!has('skip-parity')) await stage(`parity ${tag}`, () => parity(cacheDir, fused), 30);
      if (!has('skip-ref')) await stage(`reference ${tag}`, () => benchModel(`reference (${tag})`, { ...REFERENCE_CONFIG_JSON }, [REF_TOKENS], [Infinity], cacheDir, fused), 60);
    }
    if (IO_PROBE !== 'off') await stage('io probe', () => ioProbe(cacheDir), 60);
    if (CONFIG_FILE !== undefined) {
      const { name, raw } = configModel(CONFIG_FILE);
      await stage(name, () => benchModel(`${name} (${PLAIN ? 'plain' : 'fused'})`, raw, LENGTHS, LENGTH_BUDGETS_SEC, cacheDir, !PLAIN), 120);
    }
    printTable(results, CHUNK, defaultWeightDtype(DEVICE), JSON_PATH);
  } finally {
    save();
    if (str('cache-dir') === undefined && existsSync(tmp)) rmSync(tmp, { recursive: true, force: true });
  }
}

try {
  const probeArgs = str(PROBE_FLAG);
  const partArgs = str(BUILD_PART_FLAG);
  if (probeArgs !== undefined) await ioProbeChild(probeArgs);
  else if (partArgs !== undefined) buildPartChild(partArgs);
  else await main();
} catch (err) {
  process.stderr.write(`gpu bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
