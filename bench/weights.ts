// Weight storage benchmark (`npm run bench:weights`): float32 against int8 and int4 weights
// (MatMulNBits, src/engine/model/onnx/quantize.ts) in one run, so every ratio is measured under the
// same load.
//   1. Speed at the reference size (random weights): single-stream decode tok/s at depth 0 and with a
//      full window, per intra-op thread count, all cases interleaved round by round; prefill tok/s
//      over 16K tokens after a full window. Built model bytes.
//   2. Quality on the default model (models/spikingbrain-tiny): mean NLL on its eval.json slice and the
//      share of positions whose most likely next token is the same with both weight types.
// Flags: --threads 1,2 (decode thread counts; prefill uses the largest), --decode-steps N,
//        --prefill-tokens N, --chunk N (prefill chunk, default 256).
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { parseModelConfig } from '../src/engine/model/config.ts';
import type { Checkpoint } from '../src/engine/model/checkpoint.ts';
import { scoreNextTokens } from '../src/engine/model/evaluate.ts';
import { Model } from '../src/engine/model/model.ts';
import type { WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { EXTERNAL_DATA_FILE } from '../src/engine/model/onnx/model-graph.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { newSequence, prefill, type Sequence } from '../src/engine/model/sequence.ts';
import { REFERENCE_CONFIG_JSON, loadAverage } from './common.ts';
import { chunkRate, decodeRates, prefilled, type Rate } from './rates.ts';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}
const THREADS = arg('threads', '1,2').split(',').map(Number);
const DECODE_STEPS = Number(arg('decode-steps', '256'));
const PREFILL_TOKENS = Number(arg('prefill-tokens', '16384'));
const CHUNK = Number(arg('chunk', '256'));
if (THREADS.some((n) => !Number.isInteger(n) || n < 1) || !(DECODE_STEPS > 0) || !(PREFILL_TOKENS > 0) || !(CHUNK > 0)) {
  throw new Error('usage: bench/weights.ts [--threads 1,2] [--decode-steps N] [--prefill-tokens N] [--chunk N]');
}
const DTYPES: readonly WeightDtype[] = ['float32', 'int8', 'int4'];
const DEFAULT_MODEL = resolve(import.meta.dirname, '..', 'models', 'spikingbrain-tiny');

async function load(ckpt: Checkpoint, weightDtype: WeightDtype, threads: number, cacheDir: string): Promise<Model> {
  return Model.load(ckpt, { cacheDir, intraOpThreads: threads, weightDtype });
}

/** Mean NLL over the eval slice and the argmax of every position. */
async function evalSlice(model: Model, ids: readonly number[]): Promise<{ nll: number; top: readonly number[] }> {
  const all = await prefill(model, newSequence(model), ids, { chunkTokens: 512, allLogits: true });
  const { meanNll, argmax } = scoreNextTokens(all, ids, model.config.vocabSize);
  return { nll: meanNll, top: argmax };
}

const fmt = (r: Rate): string => `${r.wall.toFixed(0)} tok/s (${(1000 / r.wall).toFixed(2)} ms), ${r.cpu.toFixed(0)} tok/CPU-s`;
const ratio = (a: Rate, b: Rate): string => `${(a.wall / b.wall).toFixed(2)}× wall, ${(a.cpu / b.cpu).toFixed(2)}× CPU`;

async function main(): Promise<void> {
  const cacheDir = mkdtempSync(join(tmpdir(), 'spikeserve-bench-weights-'));
  try {
    const ckpt = randomCheckpoint(parseModelConfig(REFERENCE_CONFIG_JSON), { seed: 1, gkLayout: 'lowrank' });
    const loadAvgStart = loadAverage();

    // Decode: one model per (dtype, threads), two depths each, interleaved.
    const cases: { dtype: WeightDtype; threads: number; depth: string; model: Model; seq: Sequence }[] = [];
    const models: Model[] = [];
    for (const threads of THREADS) {
      for (const dtype of DTYPES) {
        const m = await load(ckpt, dtype, threads, cacheDir);
        models.push(m);
        const full = (m.windowTokens ?? 1024) + 64;
        cases.push({ dtype, threads, depth: '0', model: m, seq: newSequence(m) });
        cases.push({ dtype, threads, depth: `${full}`, model: m, seq: await prefilled(m, full) });
      }
    }
    process.stderr.write('  decode…\n');
    const decode = await decodeRates(cases, DECODE_STEPS, 8);

    // Prefill with the largest thread count, one dtype after the other, twice (ABAB) to even out load.
    const maxThreads = Math.max(...THREADS);
    const prefillModels = DTYPES.map((dtype) => {
      const i = cases.findIndex((c) => c.dtype === dtype && c.threads === maxThreads);
      return cases[i]?.model as Model;
    });
    const prefillRates: Rate[][] = DTYPES.map(() => []);
    for (let round = 0; round < 2; round++) {
      for (const [i, m] of prefillModels.entries()) {
        process.stderr.write(`  prefill ${DTYPES[i]} round ${round + 1}…\n`);
        prefillRates[i]?.push(await chunkRate(m, CHUNK, PREFILL_TOKENS / 2));
      }
    }
    const mean = (rs: readonly Rate[]): Rate => ({
      wall: rs.length / rs.reduce((a, r) => a + 1 / r.wall, 0),
      cpu: rs.length / rs.reduce((a, r) => a + 1 / r.cpu, 0),
    });
    const prefillRate = prefillRates.map(mean);
    const fileBytes = prefillModels.map((m) => statSync(join(dirname(m.modelPath), EXTERNAL_DATA_FILE)).size);
    for (const m of models) await m.close();

    // Quality on the default model.
    process.stderr.write('  quality on the default model…\n');
    const tiny = openCheckpoint(DEFAULT_MODEL);
    const ids = (JSON.parse(readFileSync(join(DEFAULT_MODEL, 'eval.json'), 'utf8')) as { token_ids: number[] }).token_ids;
    const quality: { nll: number; top: readonly number[] }[] = [];
    for (const dtype of DTYPES) {
      const m = await load(tiny, dtype, maxThreads, cacheDir);
      quality.push(await evalSlice(m, ids));
      await m.close();
    }

    console.log(`\nspikeserve weights bench — onnxruntime ${ort.env.versions.common} CPU; load average at start ${loadAvgStart}, at end ${loadAverage()}; GLIBC_TUNABLES=${process.env['GLIBC_TUNABLES'] ?? '(unset)'}`);
    console.log(`reference size (D=256 L=8 H=8 Hkv=2 F=1024 V=4096 W=1024, ${(ckpt.numParameters / 1e6).toFixed(1)}M params, random weights); int8/int4 = MatMulNBits 8/4-bit blocks of 32 with int8 activations (accuracy_level 4)`);
    console.log('');
    const head = DTYPES.join(' | ');
    const ratios = DTYPES.slice(1).map((d) => `${d} ÷ float32`).join(' | ');
    console.log(`| measure | ${head} | ${ratios} |`);
    console.log(`|---|${DTYPES.map(() => '---|').join('')}${DTYPES.slice(1).map(() => '---|').join('')}`);
    const row = (what: string, rates: readonly Rate[]): void => {
      const base = rates[0] as Rate;
      console.log(`| ${what} | ${rates.map(fmt).join(' | ')} | ${rates.slice(1).map((r) => ratio(r, base)).join(' | ')} |`);
    };
    // cases: per thread count, per dtype, two depths.
    const stride = 2 * DTYPES.length;
    for (let i = 0; i < cases.length; i += stride) {
      for (let j = 0; j < 2; j++) {
        const c = cases[i + j];
        if (c === undefined) continue;
        row(`decode, depth ${c.depth}, ${c.threads} thread${c.threads === 1 ? '' : 's'}`, DTYPES.map((_, k) => decode[i + 2 * k + j] as Rate));
      }
    }
    row(`prefill ${PREFILL_TOKENS / 1024}K after a full window, chunk ${CHUNK}, ${maxThreads} thread${maxThreads === 1 ? '' : 's'}`, prefillRate);
    const b32 = fileBytes[0] as number;
    console.log(`| built weights | ${fileBytes.map((b) => `${(b / 2 ** 20).toFixed(1)} MiB`).join(' | ')} | ${fileBytes.slice(1).map((b) => (b / b32).toFixed(2)).join(' | ')} |`);
    const q32 = quality[0] as { nll: number; top: readonly number[] };
    console.log(`| default model: mean NLL on eval.json (${ids.length} tokens) | ${quality.map((q) => q.nll.toFixed(4)).join(' | ')} | ${quality.slice(1).map((q) => (q.nll / q32.nll).toFixed(4)).join(' | ')} |`);
    const same = quality.slice(1).map((q) => q32.top.filter((t, i) => t === q.top[i]).length / q32.top.length);
    console.log(`| default model: same most likely next token as float32 | ${DTYPES.map(() => '').join(' | ')} | ${same.map((x) => `${(100 * x).toFixed(1)}%`).join(' | ')} |`);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
}

await main();
