// SpikingBrain 2.0 benchmark (issue 16), four parts; every measured case runs in a fresh child process
// (its peak RSS is its own) and records CPU seconds and the load average beside its wall time:
//
// 1. kv: bytes per sequence of the 5B (growing KV of its 9 MoBA + 1 full layers, plus the constant SSE
//    states and window KV of its 26 hybrid layers) against Qwen3-4B (full attention on all 36 layers),
//    fp32 and bf16, at 4K / 32K / 128K / 512K tokens. Arithmetic from spikingbrain2-config.ts.
// 2. shape: the 5B shape (test/fixtures/spikingbrain2-5b/config.json) with random int8 weights on
//    `--threads` cores. A 32K prefill would take about an hour, so rates at depth are measured on a
//    synthetic past: Model.run with P = depth random keys/values in the growing layers (positions
//    0…P−1) and the last min(P, W) positions in the window layers' own past (W = slidingWindow = 127),
//    zero SSE states; prefill = one chunk of prompt tokens (mobaSelect 1) after one warm-up run, decode
//    = steps of one generated token (mobaSelect 0) after `--decode-warmup` untimed ones (a fresh process
//    faults in its buffers over the first steps: seconds each at 32K). Every layer's past keys and values are one shared
//    random buffer (the cost of a step does not depend on what they hold), so peak RSS does not include
//    the KV a real sequence of that depth would hold (part 1 gives it). TTFT at 4K / 32K is a fit
//    (seconds per token a + b·depth, summed over 512-token chunks) and says so.
// 3. moba: a reduced model of the same family (hidden 512, 4 layers: MoBA, hybrid, MoBA, hybrid;
//    chunk 4096, top-12, window 128 as the 5B) prefilled for real through the Sequence API to 32K and
//    128K tokens, once as is and once with its MoBA layers as full attention (attn.full_layers). Beside
//    the time ratio: the fraction of causal (query, key) pairs MoBA selects (own chunk causally + the
//    top K − 1 earlier chunks), what a kernel that skips unselected chunks could reach.
// 4. window: the reduced model (MoBA as is) prefilled to 32K, labelled `--label before|after`: run it in
//    a checkout of the commit before the window layers got a past of their own and in this one; the
//    report prints the saved labels side by side.
//
//   node --import tsx bench/spikingbrain2.ts [--part all|kv|shape|moba|window] [--threads 2]
//     [--prefill-depths 0:512,4096:512,32768:128] (depth:chunk) [--decode-depths 4096,32768] [--decode-steps 5]
//     [--decode-warmup 4]
//     [--moba-tokens 32768,131072] [--window-tokens 32768] [--chunk 512] [--label after]
//     [--report bench/results/spikingbrain2-all.json,…]   (tables from saved runs)
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseModelConfig, type Json } from '../src/engine/model/config.ts';
import type { ForwardInput } from '../src/engine/model/forward.ts';
import { Model } from '../src/engine/model/model.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { newSequence, prefill } from '../src/engine/model/sequence.ts';
import {
  growingKvBytesPerToken,
  parseSpikingBrain2Config,
  sseStateBytesPerSequence,
  windowKvBytesPerSequence,
} from '../src/engine/model/spikingbrain2-config.ts';
import { cpuSeconds, loadAverage } from './common.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const CACHE_DIR = join(HERE, '..', '.cache', 'bench-spikingbrain2');
const FIVE_B_CONFIG = join(HERE, '..', 'test', 'fixtures', 'spikingbrain2-5b', 'config.json');
/** Chunk length the TTFT fit sums over (the server's prefill chunk). */
const TTFT_CHUNK = 512;

/**
 * Qwen3-4B's published shape (its config.json on the Hugging Face hub: num_hidden_layers 36,
 * num_key_value_heads 8, head_dim 128; every layer full attention). Not vendored here.
 */
const QWEN3_4B = { layers: 36, kvHeads: 8, headDim: 128 } as const;

const fiveBJson = (): Json => JSON.parse(readFileSync(FIVE_B_CONFIG, 'utf8')) as Json;

/**
 * The reduced model: the 5B's family and attention settings (head_dim 128, 4 query heads per kv head,
 * qk-norm, window 128, MoBA chunk 4096 top-12), hidden 512, 4 layers (0 and 2 MoBA, 1 and 3 hybrid),
 * vocab 4096. `dense`: the same layers (and weights: random weights depend on tensor names only) as
 * full attention.
 */
function reducedJson(dense: boolean): Json {
  const mobaLayers = [0, 2];
  return {
    model_type: 'sse_swa_moba',
    vocab_size: 4096,
    hidden_size: 512,
    num_hidden_layers: 4,
    head_dim: 128,
    num_heads: 4,
    num_v_heads: 4,
    num_sparse_partition: 4,
    num_writer: 2,
    num_reader: 2,
    intermediate_size: 1920,
    hidden_act: 'swish',
    use_output_gate: false,
    use_short_conv: false,
    expand_v: 1,
    norm_eps: 1e-6,
    tie_word_embeddings: true,
    max_position_embeddings: 524288,
    attn: {
      layers: mobaLayers,
      full_layers: dense ? mobaLayers : [],
      num_heads: 4,
      num_kv_heads: 1,
      qk_norm: true,
      qkv_bias: false,
      rope_theta: 5000000,
      window_size: 128,
      moba_chunk_size: 4096,
      moba_topk: 12,
    },
  };
}

type ChildSpec =
  | { readonly task: 'build'; readonly threads: number }
  | { readonly task: 'prefill-at-depth'; readonly threads: number; readonly depth: number; readonly chunk: number }
  | { readonly task: 'decode-at-depth'; readonly threads: number; readonly depth: number; readonly warmup: number; readonly steps: number }
  | { readonly task: 'prefill'; readonly threads: number; readonly dense: boolean; readonly marks: readonly number[]; readonly chunk: number; readonly label: string };

interface Row {
  /** Depth (shape) or prompt tokens reached (prefill). */
  readonly point: number;
  /** Tokens the timed seconds cover. */
  readonly tokens: number;
  readonly seconds: number;
  readonly cpuSeconds: number;
  readonly load: string;
  /** Decode: seconds of each warm-up step, then of each timed step. */
  readonly warmupStepSeconds?: readonly number[];
  readonly stepSeconds?: readonly number[];
}

interface ChildResult {
  readonly spec: ChildSpec;
  readonly parameters: number;
  /** Model.load: build (when not cached) and session creation. */
  readonly loadSeconds: number;
  /** Peak RSS when the build finished writing weights (null: the build cache was hit). */
  readonly buildPeakRssMiB: number | null;
  readonly rssAfterLoadMiB: number;
  readonly rows: readonly Row[];
  readonly peakRssMiB: number;
}

const mib = (bytes: number): number => bytes / 2 ** 20;
const peakRssMiB = (): number => process.resourceUsage().maxRSS / 1024;

/** Deterministic values in [−1, 1] (random-looking; the cost of a step does not depend on them). */
function randomFloats(n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sin(i * 0.618 + 0.3);
  return out;
}

/**
 * One forward input of the 5B at depth P: T new tokens at positions P…P+T−1; the growing layers see
 * P past slots (0…P−1), the window layers the last min(P, W) positions; one shared K/V buffer per past.
 */
function inputAtDepth(model: Model, P: number, T: number, prompt: boolean): ForwardInput {
  const { numKvHeads: Hkv, headDim: d, vocabSize: V, slidingWindow } = model.config;
  const Pw = Math.min(P, slidingWindow ?? 0);
  const growing = randomFloats(Hkv * P * d);
  const window = growing.subarray(0, Hkv * Pw * d);
  return {
    batchSize: 1,
    chunkTokens: T,
    tokenIds: Int32Array.from({ length: T }, (_, i) => ((P + i) * 7919 + 13) % V),
    positions: Int32Array.from({ length: T }, (_, i) => P + i),
    states: model.stateSpecs.map((s) => new Float32Array(s.floats)),
    pastTokens: P,
    pastPositions: Int32Array.from({ length: P }, (_, i) => i),
    windowPast: { pastTokens: Pw, pastPositions: Int32Array.from({ length: Pw }, (_, i) => P - Pw + i) },
    pastKeys: model.windowLayers.map((isWindow) => (isWindow ? window : growing)),
    pastValues: model.windowLayers.map((isWindow) => (isWindow ? window : growing)),
    allLogits: false,
    mobaSelect: new Uint8Array(T).fill(prompt ? 1 : 0),
  };
}

async function runChild(spec: ChildSpec): Promise<ChildResult> {
  const fiveB = spec.task !== 'prefill';
  const config = parseModelConfig(fiveB ? fiveBJson() : reducedJson(spec.dense));
  const ckpt = randomCheckpoint(config, { seed: 0, gkLayout: 'lowrank' });
  let buildPeak: number | null = null;
  const t0 = performance.now();
  const model = await Model.load(ckpt, {
    cacheDir: CACHE_DIR,
    weightDtype: fiveB ? 'int8' : 'float32',
    intraOpThreads: spec.threads,
    onProgress: (p) => {
      if (p.tensorsDone === p.tensorsTotal) buildPeak = peakRssMiB();
    },
  });
  const loadSeconds = (performance.now() - t0) / 1000;
  process.stderr.write(`${spec.task}: model loaded in ${loadSeconds.toFixed(1)} s, RSS ${mib(process.memoryUsage().rss).toFixed(0)} MiB\n`);
  const rssAfterLoadMiB = mib(process.memoryUsage().rss);
  const rows: Row[] = [];
  const timed = async (point: number, tokens: number, body: () => Promise<unknown>): Promise<void> => {
    const c0 = process.cpuUsage();
    const start = performance.now();
    await body();
    rows.push({ point, tokens, seconds: (performance.now() - start) / 1000, cpuSeconds: cpuSeconds(c0), load: loadAverage() });
  };
  switch (spec.task) {
    case 'build':
      break;
    case 'prefill-at-depth': {
      const input = inputAtDepth(model, spec.depth, spec.chunk, true);
      await model.run(input); // warm-up: the arena's first allocations for these shapes
      await timed(spec.depth, spec.chunk, () => model.run(input));
      break;
    }
    case 'decode-at-depth': {
      // The first steps of a fresh process fault in the arena's buffers (seconds at 32K): warm up first.
      const input = inputAtDepth(model, spec.depth, 1, false);
      const step = async (): Promise<number> => {
        const start = performance.now();
        await model.run(input);
        return (performance.now() - start) / 1000;
      };
      const warmupStepSeconds: number[] = [];
      for (let i = 0; i < spec.warmup; i++) warmupStepSeconds.push(await step());
      const stepSeconds: number[] = [];
      await timed(spec.depth, spec.steps, async () => {
        for (let i = 0; i < spec.steps; i++) stepSeconds.push(await step());
      });
      const row = rows.pop() as Row;
      rows.push({ ...row, warmupStepSeconds, stepSeconds });
      break;
    }
    case 'prefill': {
      // One prompt, fed through prefill() segment by segment so the time to each mark is known.
      const seq = newSequence(model);
      const V = config.vocabSize;
      const c0 = process.cpuUsage();
      const start = performance.now();
      for (const mark of [...spec.marks].sort((a, b) => a - b)) {
        const ids = Array.from({ length: mark - seq.numTokens }, (_, i) => ((seq.numTokens + i) * 7919 + 13) % V);
        await prefill(model, seq, ids, { chunkTokens: spec.chunk });
        rows.push({ point: mark, tokens: mark, seconds: (performance.now() - start) / 1000, cpuSeconds: cpuSeconds(c0), load: loadAverage() });
        process.stderr.write(`prefill ${spec.dense ? 'dense' : 'moba'} [${spec.label}] ${mark}: ${((performance.now() - start) / 1000).toFixed(1)} s, peak RSS ${peakRssMiB().toFixed(0)} MiB\n`);
      }
      break;
    }
  }
  await model.close();
  return { spec, parameters: ckpt.numParameters, loadSeconds, buildPeakRssMiB: buildPeak, rssAfterLoadMiB, rows, peakRssMiB: peakRssMiB() };
}

function runInChild(spec: ChildSpec): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' },
    });
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0 || !line.startsWith('{')) reject(new Error(`child ${JSON.stringify(spec)} exited ${code ?? signal}`));
      else resolve(JSON.parse(line) as ChildResult);
    });
  });
}

/** Least squares y = a + b·x. */
function fitLinear(xs: readonly number[], ys: readonly number[]): { a: number; b: number } {
  const n = xs.length;
  const mx = xs.reduce((s, x) => s + x, 0) / n;
  const my = ys.reduce((s, y) => s + y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  xs.forEach((x, i) => {
    sxy += (x - mx) * ((ys[i] as number) - my);
    sxx += (x - mx) ** 2;
  });
  const b = sxx === 0 ? 0 : sxy / sxx;
  return { a: my - b * mx, b };
}

/**
 * Fraction of the causal (query, key) pairs of an n-token prompt that MoBA attends: a query in chunk c
 * takes its own chunk up to itself and min(c, K − 1) earlier chunks of C keys.
 */
function mobaSelectedFraction(n: number, C: number, K: number): number {
  let selected = 0;
  for (let start = 0, c = 0; start < n; start += C, c++) {
    const q = Math.min(C, n - start); // queries in chunk c
    selected += (q * (q + 1)) / 2 + q * Math.min(c, K - 1) * C;
  }
  return selected / ((n * (n + 1)) / 2);
}

const fmt = (x: number, digits = 1): string => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const k = (n: number): string => (n === 0 ? '0' : `${n / 1024}K`);
const gib = (bytes: number): string => (bytes >= 2 ** 30 ? `${fmt(bytes / 2 ** 30, 2)} GiB` : `${fmt(mib(bytes), 0)} MiB`);

interface Saved {
  machine?: { cpus: number; model: string | undefined };
  kv?: unknown;
  shape?: { build: ChildResult; prefill: ChildResult[]; decode: ChildResult[] };
  moba?: { moba: ChildResult; dense: ChildResult };
  window?: Record<string, ChildResult>;
  loadBefore?: string;
  loadAfter?: string;
}

function kvTable(lines: string[]): unknown {
  const c = parseSpikingBrain2Config(fiveBJson());
  const perToken = growingKvBytesPerToken(c);
  const sse = sseStateBytesPerSequence(c);
  const window = windowKvBytesPerSequence(c);
  const qwenPerToken = QWEN3_4B.layers * 2 * QWEN3_4B.kvHeads * QWEN3_4B.headDim * 4;
  const contexts = [4096, 32768, 131072, 524288];
  // bf16: keys and values in 2 bytes; the SSE states are counted at fp32 in both columns (a choice:
  // recurrent states are the part one keeps in full precision).
  const sb = (n: number, bytes: 2 | 4): number => sse + ((window + n * perToken) * bytes) / 4;
  const qw = (n: number, bytes: 2 | 4): number => (n * qwenPerToken * bytes) / 4;
  lines.push(
    'KV and state bytes per sequence: SpikingBrain 2.0 5B vs Qwen3-4B (36 full-attention layers, 8 kv heads × 128)',
    '',
    '| | SpikingBrain 2.0 5B fp32 | Qwen3-4B fp32 | ratio | SpikingBrain 2.0 5B bf16 KV | Qwen3-4B bf16 | ratio |',
    '|---|---|---|---|---|---|---|',
    `| per context token (growing KV) | ${fmt(perToken / 1024, 0)} KiB | ${fmt(qwenPerToken / 1024, 0)} KiB | ${fmt(qwenPerToken / perToken, 2)}× | ${fmt(perToken / 2048, 0)} KiB | ${fmt(qwenPerToken / 2048, 0)} KiB | ${fmt(qwenPerToken / perToken, 2)}× |`,
    `| constant: SSE states (fp32) + window KV | ${gib(sse)} + ${gib(window)} | — | | ${gib(sse)} + ${gib(window / 2)} | — | |`,
  );
  for (const n of contexts) {
    lines.push(`| one sequence of ${k(n)} tokens | ${gib(sb(n, 4))} | ${gib(qw(n, 4))} | ${fmt(qw(n, 4) / sb(n, 4), 2)}× | ${gib(sb(n, 2))} | ${gib(qw(n, 2))} | ${fmt(qw(n, 2) / sb(n, 2), 2)}× |`);
  }
  lines.push('');
  return { perTokenBytes: perToken, sseStateBytes: sse, windowKvBytes: window, qwen3_4bPerTokenBytes: qwenPerToken };
}

function shapeTable(lines: string[], s: NonNullable<Saved['shape']>, threads: number): void {
  const params = s.build.parameters;
  const cfg = parseModelConfig(fiveBJson());
  // Weights a prompt token multiplies (2 FLOP each): all but the embedding (tied: the lm_head runs
  // for the chunk's last position only).
  const gflopPerToken = (2 * (params - cfg.vocabSize * cfg.hiddenSize)) / 1e9;
  const sessionSeconds = [...s.prefill, ...s.decode].map((r) => r.loadSeconds);
  const build = s.build;
  lines.push(
    `SpikingBrain 2.0 5B shape: ${fmt(params / 1e9, 2)} B parameters, random weights, int8 (MatMulNBits, int8 activations), ${threads} threads, one session`,
    '',
    '| measure | result | CPU-s | load average |',
    '|---|---|---|---|',
    build.buildPeakRssMiB === null
      ? `| build | cached (not measured in this run) | | |`
      : `| build + first session (one process) | ${fmt(build.loadSeconds, 0)} s; peak RSS ${fmt(build.buildPeakRssMiB, 0)} MiB at the end of the build, ${fmt(build.peakRssMiB, 0)} MiB with the session | | |`,
    `| session creation on the built model | ${fmt(Math.min(...sessionSeconds), 1)}–${fmt(Math.max(...sessionSeconds), 1)} s; RSS after it ${fmt(Math.min(...s.prefill.map((r) => r.rssAfterLoadMiB)), 0)} MiB | | |`,
  );
  for (const r of s.prefill) {
    const row = r.rows[0];
    if (row === undefined || r.spec.task !== 'prefill-at-depth') continue;
    const rate = row.tokens / row.seconds;
    lines.push(
      `| prefill, one chunk of ${row.tokens} at depth ${k(row.point)} | **${fmt(rate)} tok/s** (${fmt(row.seconds, 1)} s; ${fmt((rate * gflopPerToken) / 1e3, 2)} TFLOP/s of weights); peak RSS ${fmt(r.peakRssMiB, 0)} MiB | ${fmt(row.cpuSeconds)} (${fmt(row.tokens / row.cpuSeconds)} tok/CPU-s) | ${row.load} |`,
    );
  }
  // TTFT fit: seconds per prompt token at depth x, a + b·x (x = the chunk's depth + T/2), summed over
  // TTFT_CHUNK-token chunks.
  const points = s.prefill.flatMap((r) => r.rows.map((row) => ({ x: row.point + row.tokens / 2, wall: row.seconds / row.tokens, cpu: row.cpuSeconds / row.tokens })));
  if (points.length >= 2) {
    const wall = fitLinear(points.map((p) => p.x), points.map((p) => p.wall));
    const cpu = fitLinear(points.map((p) => p.x), points.map((p) => p.cpu));
    const ttft = (n: number, f: { a: number; b: number }): number => {
      let t = 0;
      for (let p = 0; p < n; p += TTFT_CHUNK) {
        const T = Math.min(TTFT_CHUNK, n - p);
        t += T * (f.a + f.b * (p + T / 2));
      }
      return t;
    };
    for (const n of [4096, 32768]) {
      lines.push(`| TTFT of a ${k(n)} prompt (**fit**: ${fmt(wall.a * 1e3, 1)} ms + ${fmt(wall.b * 1e6, 3)} µs × depth per token, chunks of ${TTFT_CHUNK}) | ~${fmt(ttft(n, wall) / 60, 1)} min | ~${fmt(ttft(n, cpu) / 60, 1)} CPU-min | |`);
    }
  }
  for (const r of s.decode) {
    const row = r.rows[0];
    if (row === undefined) continue;
    const ms = (xs: readonly number[] | undefined): string => (xs ?? []).map((x) => fmt(1e3 * x, 0)).join(', ');
    const steps = row.stepSeconds === undefined ? `${row.tokens} steps` : `${row.tokens} steps: ${ms(row.stepSeconds)} ms after ${ms(row.warmupStepSeconds)} ms of warm-up`;
    lines.push(
      `| decode (B = 1, T = 1) at depth ${k(row.point)} | **${fmt(row.tokens / row.seconds, 2)} tok/s** (${fmt((1e3 * row.seconds) / row.tokens, 0)} ms/step; ${steps}); peak RSS ${fmt(r.peakRssMiB, 0)} MiB | ${fmt(row.cpuSeconds / row.tokens, 2)} per step | ${row.load} |`,
    );
  }
  lines.push('');
}

function mobaTable(lines: string[], m: NonNullable<Saved['moba']>): void {
  const cfg = parseModelConfig(reducedJson(false));
  const moba = cfg.moba;
  if (moba === null) throw new Error('the reduced config has no MoBA layers');
  const chunk = m.moba.spec.task === 'prefill' ? m.moba.spec.chunk : 0;
  lines.push(
    `MoBA vs dense prefill, reduced model (${fmt(m.moba.parameters / 1e6, 1)} M parameters: hidden ${cfg.hiddenSize}, ${cfg.numLayers} layers = 2 MoBA|full + 2 hybrid, ${cfg.numHeads} heads of ${cfg.headDim}, ${cfg.numKvHeads} kv head; MoBA chunk ${moba.chunkTokens}, top-${moba.topk}; fp32, chunks of ${chunk})`,
    '',
    '| prompt | MoBA: time to reach it | dense: time to reach it | MoBA ÷ dense (wall) | MoBA ÷ dense (CPU) | pairs MoBA selects | load (MoBA / dense) |',
    '|---|---|---|---|---|---|---|',
  );
  for (const a of m.moba.rows) {
    const b = m.dense.rows.find((r) => r.point === a.point);
    if (b === undefined) continue;
    lines.push(
      `| ${k(a.point)} | ${fmt(a.seconds)} s (${fmt(a.point / a.seconds, 0)} tok/s; ${fmt(a.cpuSeconds)} CPU-s) | ${fmt(b.seconds)} s (${fmt(b.point / b.seconds, 0)} tok/s; ${fmt(b.cpuSeconds)} CPU-s) | **${fmt(a.seconds / b.seconds, 2)}×** | ${fmt(a.cpuSeconds / b.cpuSeconds, 2)}× | ${fmt(mobaSelectedFraction(a.point, moba.chunkTokens, moba.topk), 3)} | ${a.load} / ${b.load} |`,
    );
  }
  lines.push(`| peak RSS | ${fmt(m.moba.peakRssMiB, 0)} MiB | ${fmt(m.dense.peakRssMiB, 0)} MiB | | | | |`, '');
}

function windowTable(lines: string[], w: Record<string, ChildResult>): void {
  const labels = Object.keys(w).sort(); // "after" before "before"
  lines.push('Window layers\' past: reduced model (MoBA as is), prefill through the Sequence API', '', '| | ' + labels.join(' | ') + (labels.length === 2 ? ` | ${labels[0]} ÷ ${labels[1]} |` : ' |'), '|---|' + labels.map(() => '---|').join('') + (labels.length === 2 ? '---|' : ''));
  const row = (what: string, cell: (r: ChildResult) => number, digits: number, unit: string): void => {
    const xs = labels.map((l) => cell(w[l] as ChildResult));
    const ratio = xs.length === 2 ? ` ${fmt((xs[0] as number) / (xs[1] as number), 2)}× |` : '';
    lines.push(`| ${what} | ${xs.map((x) => `${fmt(x, digits)}${unit}`).join(' | ')} |${ratio}`);
  };
  const last = (r: ChildResult): Row => r.rows[r.rows.length - 1] as Row;
  const tokens = last(w[labels[0] as string] as ChildResult).point;
  row(`time to ${k(tokens)} tokens`, (r) => last(r).seconds, 1, ' s');
  row('CPU seconds', (r) => last(r).cpuSeconds, 1, '');
  row('prefill tok/s', (r) => last(r).point / last(r).seconds, 0, '');
  row('peak RSS', (r) => r.peakRssMiB, 0, ' MiB');
  lines.push(`| load average at the end | ${labels.map((l) => last(w[l] as ChildResult).load).join(' | ')} |${labels.length === 2 ? ' |' : ''}`, '');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      part: { type: 'string', default: 'all' },
      threads: { type: 'string', default: '2' },
      // 32K: a chunk of 256 peaked at 15.6 GiB (over the 14 GiB this machine can spare), 128 at 13.0 GiB.
      'prefill-depths': { type: 'string', default: '0:512,4096:512,32768:128' },
      'decode-depths': { type: 'string', default: '4096,32768' },
      'decode-steps': { type: 'string', default: '5' },
      'decode-warmup': { type: 'string', default: '4' },
      'moba-tokens': { type: 'string', default: '32768,131072' },
      'window-tokens': { type: 'string', default: '32768' },
      chunk: { type: 'string', default: '512' },
      label: { type: 'string', default: 'after' },
      report: { type: 'string' },
    },
  });
  if (values.child !== undefined) {
    process.stdout.write(`${JSON.stringify(await runChild(JSON.parse(values.child) as ChildSpec))}\n`);
    return;
  }
  const part = values.part;
  const threads = Number(values.threads);
  const chunk = Number(values.chunk);
  const nums = (s: string): number[] => s.split(',').map(Number);
  const lines: string[] = [];
  const has = (p: string): boolean => part === 'all' || part === p;

  if (values.report !== undefined) {
    // Tables from saved runs; window results of several files (labels) are shown side by side.
    const merged: Saved = {};
    for (const file of values.report.split(',')) {
      const s = JSON.parse(readFileSync(file, 'utf8')) as Saved;
      Object.assign(merged, { ...s, window: { ...merged.window, ...s.window } });
      lines.push(`${file}: load average before ${s.loadBefore ?? '?'}, after ${s.loadAfter ?? '?'}`);
    }
    lines.push('');
    if (merged.kv !== undefined) kvTable(lines);
    if (merged.shape !== undefined) shapeTable(lines, merged.shape, threads);
    if (merged.moba !== undefined) mobaTable(lines, merged.moba);
    if (merged.window !== undefined && Object.keys(merged.window).length > 0) windowTable(lines, merged.window);
    process.stdout.write(`${lines.join('\n')}\n`);
    return;
  }

  const results: Saved = { machine: { cpus: cpus().length, model: cpus()[0]?.model }, loadBefore: loadAverage() };
  if (has('kv')) results.kv = kvTable(lines);
  if (has('shape')) {
    const build = await runInChild({ task: 'build', threads });
    const prefillRuns: ChildResult[] = [];
    for (const pair of values['prefill-depths'].split(',')) {
      const [depth, chunkTokens] = pair.split(':').map(Number) as [number, number];
      prefillRuns.push(await runInChild({ task: 'prefill-at-depth', threads, depth, chunk: chunkTokens }));
    }
    const decodeRuns: ChildResult[] = [];
    for (const depth of nums(values['decode-depths'])) {
      decodeRuns.push(await runInChild({ task: 'decode-at-depth', threads, depth, warmup: Number(values['decode-warmup']), steps: Number(values['decode-steps']) }));
    }
    results.shape = { build, prefill: prefillRuns, decode: decodeRuns };
    shapeTable(lines, results.shape, threads);
  }
  if (has('moba')) {
    const marks = nums(values['moba-tokens']);
    const moba = await runInChild({ task: 'prefill', threads, dense: false, marks, chunk, label: 'moba' });
    const dense = await runInChild({ task: 'prefill', threads, dense: true, marks, chunk, label: 'dense' });
    results.moba = { moba, dense };
    mobaTable(lines, results.moba);
  }
  if (has('window')) {
    const r = await runInChild({ task: 'prefill', threads, dense: false, marks: [Number(values['window-tokens'])], chunk, label: values.label });
    results.window = { [values.label]: r };
    windowTable(lines, results.window);
  }
  results.loadAfter = loadAverage();
  lines.push(`load average before: ${results.loadBefore ?? ''}, after: ${results.loadAfter}`);
  mkdirSync(join(HERE, 'results'), { recursive: true });
  const name = part === 'window' ? `window-${values.label}` : part;
  writeFileSync(join(HERE, 'results', `spikingbrain2-${name}.json`), `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
