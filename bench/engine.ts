// Engine benchmark (`npm run bench:engine`): one run prints one table, so every ratio in it is
// measured under the same machine load.
//   1. onnxruntime MatMul GFLOP/s on this machine (x [512, 256] @ W [256, 1024], fp32) — the ceiling.
//   2. One sequence prefilled to --max-tokens (default 1M) in fixed chunks through Model.run; tok/s
//      (tokens / elapsed = 1 / TTFT per token) and RSS at 4K, 64K, 256K, 1M prompt tokens.
//   3. Single-stream decode tok/s at depth 0, with a full window (depth W + 64) and at 256K (from a
//      copy of the prefilled sequence); with --decode-threads, one model per thread count, interleaved.
// Reference size: hidden 256, 8 layers (GLA even, SWA odd), 8 heads, 2 kv heads, ffn 1024,
// vocab 4096, window 1024, random weights.
//
// Flags: --max-tokens N, --chunk N (prefill chunk, default 256), --threads N, --decode-steps N,
//        --plain (the plain-op reference graph instead of the fused one),
//        --sweep (first, prefill tok/s for chunk sizes 128…2048 on 8K tokens after a full window),
//        --spin (let idle onnxruntime threads spin: better on an idle machine, worse on a shared one),
//        --decode-threads 1,2 (decode measured side by side with these intra-op thread counts),
//        --decode-session N (the model runs decode steps on a second session with N threads),
//        --profile (only: onnxruntime's profile of decode steps with a full window, per op type),
//        --weights float32|int8|int4 (storage of weight matrices; bench/weights.ts compares them).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { parseModelConfig, type ModelConfig } from '../src/engine/model/config.ts';
import { Model } from '../src/engine/model/model.ts';
import { GraphBuilder, type WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { Sequence, decodeBatch, newSequence, stepSequences } from '../src/engine/model/sequence.ts';
import { REFERENCE_CONFIG_JSON, cpuSeconds, loadAverage } from './common.ts';
import { chunkRate, decodeRate, decodeRates, prefilled, type Rate } from './rates.ts';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} needs a positive number`);
  return v;
}

const MAX_TOKENS = flag('max-tokens', 1 << 20);
const CHUNK = flag('chunk', 256);
const THREADS = flag('threads', availableParallelism());
const DECODE_STEPS = flag('decode-steps', 128);
const PLAIN = process.argv.includes('--plain');
const SWEEP = process.argv.includes('--sweep');
const SPIN = process.argv.includes('--spin');
const PROFILE = process.argv.includes('--profile');
const WEIGHTS = ((): WeightDtype => {
  const i = process.argv.indexOf('--weights');
  const w = i >= 0 ? process.argv[i + 1] : 'float32';
  if (w !== 'float32' && w !== 'float16' && w !== 'int8' && w !== 'int4') throw new Error('--weights needs float32, float16, int8 or int4');
  return w;
})();
const DECODE_SESSION = process.argv.includes('--decode-session') ? flag('decode-session', 1) : undefined;
const DECODE_THREADS = ((): number[] => {
  const i = process.argv.indexOf('--decode-threads');
  if (i < 0) return [process.argv.includes('--decode-session') ? flag('decode-session', 1) : THREADS];
  const list = (process.argv[i + 1] ?? '').split(',').map(Number);
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < 1)) throw new Error('--decode-threads needs a list like 1,2');
  return list;
})();
const LOAD_AT_START = loadAverage();
const MILESTONES = [4096, 65536, 262144, 1 << 20].filter((m) => m <= MAX_TOKENS);

const CONFIG: ModelConfig = parseModelConfig(REFERENCE_CONFIG_JSON);

/** FLOPs per token: 2 per weight of every per-token MatMul (layers; lm_head counted separately). */
function flopsPerToken(c: ModelConfig): { layers: number; lmHead: number; attentionPerKey: number } {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: d, intermediateSize: F } = c;
  let params = 0;
  for (const kind of c.layerKinds) {
    params += D * (H * d + 2 * Hkv * d) + H * d * D + 3 * D * F; // q, k, v, o, MLP
    if (kind === 'gla') params += D * 16 + 16 * Hkv * d; // low-rank gate
  }
  const attnLayers = c.layerKinds.filter((k) => k !== 'gla').length;
  return { layers: 2 * params, lmHead: 2 * D * c.vocabSize, attentionPerKey: attnLayers * 4 * H * d };
}

async function matmulGflops(dir: string): Promise<{ wall: number; cpu: number }> {
  const [M, K, N] = [512, 256, 1024];
  const g = new GraphBuilder('mm.onnx.data');
  const x = g.input('x', DataType.FLOAT, [M, K]);
  const w = g.weight('w', [K, N], () => Float32Array.from({ length: K * N }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
  g.output('y', g.op('MatMul', [x, w]), DataType.FLOAT, [M, N]);
  g.writeExternalData(join(dir, 'mm.onnx.data'));
  writeFileSync(join(dir, 'mm.onnx'), encodeModel(g.toModel('mm', new Map([['', 17]]))));
  const s = await ort.InferenceSession.create(join(dir, 'mm.onnx'), { intraOpNumThreads: THREADS, graphOptimizationLevel: 'all' });
  const feed = { x: new ort.Tensor('float32', Float32Array.from({ length: M * K }, (_, i) => (i % 13) / 13), [M, K]) };
  for (let i = 0; i < 20; i++) await s.run(feed);
  const iters = 200;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await s.run(feed);
  const sec = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(c0);
  await s.release();
  return { wall: (2 * M * K * N * iters) / sec / 1e9, cpu: (2 * M * K * N * iters) / cpu / 1e9 };
}

function cloneSequence(model: Model, s: Sequence): Sequence {
  const c = newSequence(model);
  c.numTokens = s.numTokens;
  c.states = s.states.map((x) => x.slice());
  c.keys = s.keys.map((x) => x.slice());
  c.values = s.values.map((x) => x.slice());
  c.keptPositions = s.keptPositions.slice();
  return c;
}

interface TraceEvent {
  readonly cat: string;
  readonly name: string;
  /** Start, µs since the session started. */
  readonly ts: number;
  readonly dur: number;
  readonly args?: { readonly op_name?: string };
}

/**
 * `--profile`: decode steps with a full window under onnxruntime's profiler; prints kernel time per op
 * type and per step, the executor's time outside kernels, and the JS side of a step (decodeBatch
 * wall time minus onnxruntime's model_run).
 */
async function profileDecode(dir: string, ckpt: ReturnType<typeof randomCheckpoint>): Promise<void> {
  const model = await Model.load(ckpt, { intraOpThreads: THREADS, fusedOps: !PLAIN, allowSpinning: SPIN, weightDtype: WEIGHTS, profileFilePrefix: join(dir, 'decode') });
  const seq = await prefilled(model, (model.windowTokens ?? 1024) + 64);
  const V = model.config.vocabSize;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < DECODE_STEPS; i++) await decodeBatch(model, [seq], [(i * 31 + 1) % V]);
  const stepMs = (performance.now() - t0) / DECODE_STEPS;
  const cpuMs = (cpuSeconds(c0) * 1000) / DECODE_STEPS;
  const profiles = model.endProfiling();
  const events = JSON.parse(readFileSync(profiles.decode ?? profiles.step, 'utf8')) as TraceEvent[];
  await model.close();
  // The last DECODE_STEPS runs are the decode steps; their kernels are those that start after the first.
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').slice(-DECODE_STEPS);
  const firstTs = runs[0]?.ts ?? 0;
  const kernels = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && e.ts >= firstTs);
  const runUs = runs.reduce((a, e) => a + e.dur, 0) / DECODE_STEPS;
  const byOp = new Map<string, { us: number; nodes: number }>();
  for (const e of kernels) {
    const op = e.args?.op_name ?? '?';
    const o = byOp.get(op) ?? { us: 0, nodes: 0 };
    byOp.set(op, { us: o.us + e.dur / DECODE_STEPS, nodes: o.nodes + 1 / DECODE_STEPS });
  }
  const kernelUs = [...byOp.values()].reduce((a, o) => a + o.us, 0);
  console.log(`\ndecode profile — depth ${seq.numTokens - DECODE_STEPS}…${seq.numTokens}, ${THREADS} threads${SPIN ? ' (spinning)' : ''}, ${PLAIN ? 'plain' : 'fused'} graph; load average ${loadAverage()}`);
  console.log(`step ${stepMs.toFixed(2)} ms wall, ${cpuMs.toFixed(2)} ms CPU (profiling on); onnxruntime model_run ${(runUs / 1000).toFixed(2)} ms, of which kernels ${(kernelUs / 1000).toFixed(2)} ms in ${Math.round([...byOp.values()].reduce((a, o) => a + o.nodes, 0))} nodes; JS side ${(stepMs - runUs / 1000).toFixed(2)} ms`);
  console.log('');
  console.log('| op type | nodes/step | µs/step | share of kernel time |');
  console.log('|---|---|---|---|');
  for (const [op, o] of [...byOp].sort((a, b) => b[1].us - a[1].us)) console.log(`| ${op} | ${o.nodes.toFixed(0)} | ${o.us.toFixed(0)} | ${((100 * o.us) / kernelUs).toFixed(1)}% |`);
}

const mib = (b: number): string => (b / 2 ** 20).toFixed(0);
const kTok = (n: number): string => (n >= 1 << 20 ? `${n / (1 << 20)}M` : `${n / 1024}K`);

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spikeserve-bench-'));
  try {
    const mm = await matmulGflops(dir);
    const ckpt = randomCheckpoint(CONFIG, { seed: 1, gkLayout: 'lowrank' });
    if (PROFILE) {
      await profileDecode(dir, ckpt);
      return;
    }
    const tLoad = performance.now();
    const model = await Model.load(ckpt, { intraOpThreads: THREADS, fusedOps: !PLAIN, allowSpinning: SPIN, weightDtype: WEIGHTS, ...(DECODE_SESSION !== undefined ? { decodeIntraOpThreads: DECODE_SESSION } : {}) });
    const loadSec = (performance.now() - tLoad) / 1000;
    const f = flopsPerToken(CONFIG);
    const V = CONFIG.vocabSize;

    const sweep: [number, Rate][] = [];
    if (SWEEP) {
      for (const chunk of [128, 256, 512, 1024, 2048]) {
        sweep.push([chunk, await chunkRate(model, chunk, 8192)]);
        process.stderr.write(`  sweep chunk ${chunk}: ${sweep[sweep.length - 1]?.[1].wall.toFixed(0)} tok/s\n`);
      }
    }
    // Decode at depth 0 and with a full window, per intra-op thread count, interleaved.
    const decodeCases: { threads: number; depth: string; model: Model; seq: Sequence }[] = [];
    const extraModels: Model[] = [];
    for (const threads of DECODE_THREADS) {
      let m = model; // decodes with DECODE_SESSION threads when given, else THREADS
      if (threads !== (DECODE_SESSION ?? THREADS)) {
        m = await Model.load(ckpt, { intraOpThreads: threads, fusedOps: !PLAIN, allowSpinning: SPIN, weightDtype: WEIGHTS });
        extraModels.push(m);
      }
      const full = (m.windowTokens ?? 1024) + 64;
      decodeCases.push({ threads, depth: '0', model: m, seq: newSequence(m) }, { threads, depth: `${full} (window full)`, model: m, seq: await prefilled(m, full) });
    }
    const decodeRows = await decodeRates(decodeCases, DECODE_STEPS, 8);
    for (const m of extraModels) await m.close();
    const decode0 = decodeRows[0] ?? { wall: 0, cpu: 0 };

    // Prefill one sequence to MAX_TOKENS; record cumulative time and RSS at each milestone.
    const seq = newSequence(model);
    const rows: { tokens: number; tokPerSec: number; tokPerCpuSec: number; rssMiB: string; peakMiB: string }[] = [];
    let cpu = 0;
    let rng = 12345;
    let elapsed = 0;
    let peakRss = process.memoryUsage.rss();
    let at256k: Sequence | null = null;
    const chunkIds = new Array<number>(CHUNK);
    while (seq.numTokens < MAX_TOKENS) {
      const n = Math.min(CHUNK, MAX_TOKENS - seq.numTokens, (MILESTONES.find((m) => m > seq.numTokens) ?? MAX_TOKENS) - seq.numTokens);
      chunkIds.length = n;
      for (let i = 0; i < n; i++) chunkIds[i] = (rng = (rng * 1103515245 + 12345) >>> 0) % V;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await stepSequences(model, [seq], [chunkIds], false);
      elapsed += (performance.now() - t0) / 1000;
      cpu += cpuSeconds(c0);
      peakRss = Math.max(peakRss, process.memoryUsage.rss());
      if (MILESTONES.includes(seq.numTokens)) {
        rows.push({ tokens: seq.numTokens, tokPerSec: seq.numTokens / elapsed, tokPerCpuSec: seq.numTokens / cpu, rssMiB: mib(process.memoryUsage.rss()), peakMiB: mib(peakRss) });
        process.stderr.write(`  prefill ${kTok(seq.numTokens)}: ${(seq.numTokens / elapsed).toFixed(0)} tok/s\n`);
        if (seq.numTokens === 262144) at256k = cloneSequence(model, seq);
      }
    }
    const decodeDeep = at256k === null ? null : await decodeRate(model, at256k, DECODE_STEPS);

    const gf = (tokPerSec: number, perToken: number): string => ((tokPerSec * perToken) / 1e9).toFixed(1);
    const window = CONFIG.slidingWindow ?? 0;
    const prefillFlops = f.layers + f.attentionPerKey * (window + 1); // useful attention: W + 1 keys per query
    console.log(`\nspikeserve engine bench — onnxruntime ${ort.env.versions.common} CPU, ${THREADS} threads${SPIN ? ' (spinning)' : ''}${DECODE_SESSION !== undefined ? ` (decode session: ${DECODE_SESSION})` : ''}, ${PLAIN ? 'plain' : 'fused'} graph, chunk ${CHUNK}, weights ${WEIGHTS}`);
    console.log(`load average at start ${LOAD_AT_START}, at end ${loadAverage()} (${availableParallelism()} cores); GLIBC_TUNABLES=${process.env['GLIBC_TUNABLES'] ?? '(unset)'}`);
    console.log(`model: D=256 L=8 (GLA even, SWA odd) H=8 Hkv=2 F=1024 V=4096 W=1024, ${(ckpt.numParameters / 1e6).toFixed(1)}M params, load ${loadSec.toFixed(1)} s`);
    console.log(`FLOPs/token: layers ${(f.layers / 1e6).toFixed(1)} M, lm_head ${(f.lmHead / 1e6).toFixed(1)} M, attention ${(f.attentionPerKey / 1e3).toFixed(0)} K per key`);
    console.log('');
    console.log('| measure | value |');
    console.log('|---|---|');
    console.log(`| onnxruntime MatMul 512×256×1024 | ${mm.wall.toFixed(1)} GFLOP/s, ${mm.cpu.toFixed(1)} GFLOP/CPU-s |`);
    for (const [chunk, rate] of sweep) console.log(`| prefill 8K after a full window, chunk ${chunk} | ${rate.wall.toFixed(0)} tok/s, ${rate.cpu.toFixed(0)} tok/CPU-s |`);
    for (const r of rows) {
      console.log(`| prefill ${kTok(r.tokens)} tokens | ${r.tokPerSec.toFixed(0)} tok/s, ${r.tokPerCpuSec.toFixed(0)} tok/CPU-s; layers ${gf(r.tokPerSec, f.layers)} GFLOP/s (${gf(r.tokPerCpuSec, f.layers)}/CPU-s), with attention ${gf(r.tokPerSec, prefillFlops)} (${gf(r.tokPerCpuSec, prefillFlops)}/CPU-s); RSS ${r.rssMiB} MiB, peak ${r.peakMiB} MiB |`);
    }
    const first = rows[0];
    const lastRow = rows[rows.length - 1];
    if (first !== undefined && lastRow !== undefined && lastRow !== first) {
      console.log(`| prefill ratio ${kTok(lastRow.tokens)} ÷ ${kTok(first.tokens)} | ${(lastRow.tokPerSec / first.tokPerSec).toFixed(2)} wall, ${(lastRow.tokPerCpuSec / first.tokPerCpuSec).toFixed(2)} CPU |`);
    }
    for (const [i, c] of decodeCases.entries()) {
      const r = decodeRows[i] ?? { wall: 0, cpu: 0 };
      console.log(`| decode, depth ${c.depth}, ${c.threads} thread${c.threads === 1 ? '' : 's'} | ${r.wall.toFixed(0)} tok/s, ${r.cpu.toFixed(0)} tok/CPU-s (${(1000 / r.wall).toFixed(2)} ms, ${(1000 / r.cpu).toFixed(2)} CPU-ms per token) |`);
    }
    if (decodeDeep !== null) console.log(`| decode, depth 256K | ${decodeDeep.wall.toFixed(0)} tok/s, ${decodeDeep.cpu.toFixed(0)} tok/CPU-s (${gf(decodeDeep.wall, f.layers + f.lmHead + f.attentionPerKey * (window + 1))} GFLOP/s) |`);
    if (decodeDeep !== null) console.log(`| decode ratio 256K ÷ 0 | ${(decodeDeep.wall / decode0.wall).toFixed(2)} wall, ${(decodeDeep.cpu / decode0.cpu).toFixed(2)} CPU |`);
    console.log(`| GLA state per sequence | ${(model.stateBytesPerSequence / 1024).toFixed(0)} KiB; SWA KV kept ${(seq.kvBytes / 1024).toFixed(0)} KiB (${seq.keptTokens} tokens) |`);
    await model.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
