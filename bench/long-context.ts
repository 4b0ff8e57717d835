// Long-context benchmark: time to first token, peak memory and decode speed of the reference-size
// hybrid model (GLA on even layers, sliding-window attention on odd ones) against the same model with
// every layer full attention, at prompt lengths 1K … 4M tokens. This is the product claim in numbers:
// the hybrid's prefill is linear in the prompt and its memory flat; full attention's is quadratic.
//
// Each (model, length) runs in a fresh child process, so its peak RSS (VmHWM) belongs to that length
// alone. The child drives Model.run through sequence.ts (stepSequences, one chunk at a time: a Sequence
// keeps the GLA states, the last W keys/values per SWA layer, every key/value for full attention).
// Token ids are pseudo-random and generated chunk by chunk (a 4M-token prompt is never materialised:
// 16 MB of ids would show up in the memory figure). Chunks of 512 tokens by default: on this graph
// larger chunks cost memory (scores are [Hkv, G·T, W+T]) without prefilling faster.
//
// Full attention stops when the lengths done so far plus the next one, predicted by the fit
// a·n + b·n², would overrun --time-budget-seconds; the fit is then extrapolated to the rest.
// On a shared machine wall-clock rates move with other people's load: each row also records CPU
// seconds and the load average, and the longest run reports its rate between benchmark lengths.
//
//   node --import tsx bench/long-context.ts [--max-tokens 4M] [--full-max-tokens 4M]
//     [--time-budget-seconds 900] [--chunk-tokens 512] [--decode-tokens 32] [--only hybrid|full]
//     [--lengths 4K,4M --merge]    (re-run some lengths, keep the other rows of the existing JSON)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { procStatusMiB } from './common.ts';
import { COLORS, writePanelsPng, type Panel, type Series } from './plot.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const RESULTS_DIR = join(HERE, 'results');
const DEFAULT_LENGTHS = [1, 4, 16, 64, 256, 1024, 4096].map((k) => k * 1024);
const DECODE_DEPTHS = [1024, 64 * 1024, 256 * 1024];

export type ModelKind = 'hybrid' | 'full';

/** The reference-size model (random weights); `full` lists every layer as attention with no window. */
export function benchConfig(kind: ModelKind): Record<string, unknown> {
  const numLayers = 8;
  return {
    model_type: 'gla_swa',
    vocab_size: 4096,
    hidden_size: 256,
    num_hidden_layers: numLayers,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    intermediate_size: 1024,
    rope_theta: 10000,
    norm_eps: 1e-6,
    tie_word_embeddings: false,
    ...(kind === 'hybrid'
      ? { sliding_window: 1024 } // attn_layers absent: the odd layers
      : { attn_layers: Array.from({ length: numLayers }, (_, i) => i), sliding_window: null }),
  };
}

/** What a child measures for one (kind, length). */
export interface LengthResult {
  readonly kind: ModelKind;
  readonly promptTokens: number;
  readonly chunkTokens: number;
  /** Prefill of the whole prompt (all chunks), seconds. */
  readonly prefillSeconds: number;
  /** Prefill + picking the first token from the last chunk's logits, seconds. */
  readonly ttftSeconds: number;
  readonly prefillTokensPerSecond: number;
  /**
   * CPU seconds (user + system, all threads) the prefill used. On a shared machine, wall time counts
   * other people's work; tokens per CPU-second is the steadier figure to compare lengths by.
   */
  readonly prefillCpuSeconds: number;
  readonly prefillTokensPerCpuSecond: number;
  /** VmHWM at the end of the run, MiB. */
  readonly peakRssMiB: number;
  /** VmRSS after loading the model and one warm-up chunk, before the prompt, MiB. */
  readonly rssAfterLoadMiB: number;
  readonly modelLoadSeconds: number;
  /** Present when this length is a decode depth: tokens/s of single-sequence greedy decode after the prompt. */
  readonly decodeTokensPerSecond: number | null;
  readonly decodeTokens: number;
  /** When it was measured, and the 1-minute load average then (this machine may be shared). */
  readonly measuredAt: string;
  readonly loadAverage1m: number;
  /** Inside this one run: seconds and RSS when the prefill passed each shorter benchmark length. */
  readonly timeline: readonly TimelinePoint[];
}

export interface TimelinePoint {
  readonly tokens: number;
  readonly seconds: number;
  readonly cpuSeconds: number;
  readonly rssMiB: number;
}

// ---- child: one (kind, length) ---------------------------------------------------------------------

interface ChildJob {
  readonly kind: ModelKind;
  readonly promptTokens: number;
  readonly chunkTokens: number;
  readonly decodeTokens: number;
  readonly seed: number;
}

/** mulberry32 → token ids in [0, vocab): the prompt, generated a chunk at a time. */
function tokenStream(seed: number, vocab: number): (count: number) => number[] {
  let a = seed >>> 0;
  return (count) =>
    Array.from({ length: count }, () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) % vocab;
    });
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if ((x[i] ?? -Infinity) > (x[best] ?? -Infinity)) best = i;
  return best;
}

async function runChild(job: ChildJob): Promise<LengthResult> {
  // Imported here so that the parent process never loads onnxruntime.
  const { parseModelConfig } = await import('../src/engine/model/config.ts');
  const { randomCheckpoint } = await import('../src/engine/model/random-checkpoint.ts');
  const { Model } = await import('../src/engine/model/model.ts');
  const { newSequence, stepSequences } = await import('../src/engine/model/sequence.ts');

  const config = parseModelConfig(benchConfig(job.kind));
  const t0 = performance.now();
  const model = await Model.load(randomCheckpoint(config, { seed: job.seed, gkLayout: 'lowrank' }));
  // Warm-up: one chunk on a throw-away sequence (session allocations, first-run kernels).
  await stepSequences(model, [newSequence(model)], [tokenStream(job.seed + 1, config.vocabSize)(job.chunkTokens)], false);
  const modelLoadSeconds = (performance.now() - t0) / 1000;
  const rssAfterLoadMiB = procStatusMiB('VmRSS');

  // TTFT: every prompt chunk, then the first token from the last chunk's logits.
  const nextIds = tokenStream(job.seed, config.vocabSize);
  const seq = newSequence(model);
  const tStart = performance.now();
  const cpuStart = process.cpuUsage();
  const cpuSince = (): number => {
    const u = process.cpuUsage(cpuStart);
    return (u.user + u.system) / 1e6;
  };
  let logits: Float32Array = new Float32Array(0);
  let lastReport = tStart;
  const timeline: TimelinePoint[] = [];
  const marks = DEFAULT_LENGTHS.filter((n) => n < job.promptTokens);
  for (let start = 0; start < job.promptTokens; start += job.chunkTokens) {
    const ids = nextIds(Math.min(job.chunkTokens, job.promptTokens - start));
    logits = await stepSequences(model, [seq], [ids], false);
    const processed = start + ids.length;
    while (marks[0] !== undefined && processed >= marks[0]) {
      timeline.push({ tokens: marks.shift() ?? processed, seconds: (performance.now() - tStart) / 1000, cpuSeconds: cpuSince(), rssMiB: procStatusMiB('VmRSS') });
    }
    if (performance.now() - lastReport > 30_000) {
      lastReport = performance.now();
      const rate = (start + ids.length) / ((lastReport - tStart) / 1000);
      process.stderr.write(`  ${job.kind} ${start + ids.length}/${job.promptTokens} tokens, ${rate.toFixed(0)} tok/s, RSS ${procStatusMiB('VmRSS').toFixed(0)} MiB\n`);
    }
  }
  const tPrefilled = performance.now();
  const prefillCpuSeconds = cpuSince();
  let token = argmax(logits);
  const tFirst = performance.now();

  // Decode: greedy, one sequence, after the whole prompt.
  let decodeTokensPerSecond: number | null = null;
  if (job.decodeTokens > 0) {
    const td = performance.now();
    for (let i = 0; i < job.decodeTokens; i++) token = argmax(await stepSequences(model, [seq], [[token]], false));
    decodeTokensPerSecond = job.decodeTokens / ((performance.now() - td) / 1000);
  }
  const prefillSeconds = (tPrefilled - tStart) / 1000;
  const result: LengthResult = {
    kind: job.kind,
    promptTokens: job.promptTokens,
    chunkTokens: job.chunkTokens,
    prefillSeconds,
    ttftSeconds: (tFirst - tStart) / 1000,
    prefillTokensPerSecond: job.promptTokens / prefillSeconds,
    prefillCpuSeconds,
    prefillTokensPerCpuSecond: job.promptTokens / prefillCpuSeconds,
    peakRssMiB: procStatusMiB('VmHWM'),
    rssAfterLoadMiB,
    modelLoadSeconds,
    decodeTokensPerSecond,
    decodeTokens: job.decodeTokens,
    measuredAt: new Date().toISOString(),
    loadAverage1m: loadavg()[0] ?? Number.NaN,
    timeline,
  };
  await model.close();
  return result;
}

// ---- parent: sweep, fit, report --------------------------------------------------------------------

function spawnChild(job: ChildJob): Promise<LengthResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', JSON.stringify(job)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code !== 0 || line === undefined) reject(new Error(`child ${job.kind} ${job.promptTokens} exited with ${code}`));
      else resolve(JSON.parse(line.slice('RESULT '.length)) as LengthResult);
    });
  });
}

/** TTFT model t(n) = a·n + b·n², fitted by least squares on relative error (each length weighs the same). */
export interface TtftFit {
  readonly a: number;
  readonly b: number;
}

export function fitTtft(points: readonly (readonly [number, number])[], quadratic: boolean): TtftFit | null {
  const usable = points.filter(([n, t]) => n > 0 && t > 0);
  if (usable.length === 0) return null;
  if (!quadratic || usable.length === 1) {
    // Linear: minimise Σ((a·n − t)/t)²  →  a = Σ(n/t) / Σ(n/t)².
    let num = 0;
    let den = 0;
    for (const [n, t] of usable) {
      num += n / t;
      den += (n / t) ** 2;
    }
    return quadratic ? { a: 0, b: usable[0] === undefined ? 0 : usable[0][1] / usable[0][0] ** 2 } : { a: num / den, b: 0 };
  }
  // Normal equations of Σ((a·n + b·n² − t)/t)² in (a, b), with u = n/t, v = n²/t.
  let suu = 0;
  let suv = 0;
  let svv = 0;
  let su = 0;
  let sv = 0;
  for (const [n, t] of usable) {
    const u = n / t;
    const v = (n * n) / t;
    suu += u * u;
    suv += u * v;
    svv += v * v;
    su += u;
    sv += v;
  }
  const det = suu * svv - suv * suv;
  let a = (su * svv - sv * suv) / det;
  let b = (suu * sv - suv * su) / det;
  if (!(b >= 0) || !(a >= 0)) {
    // A negative term fits noise, not cost: keep the pure quadratic or pure linear that fits better.
    const bOnly = sv / svv;
    const aOnly = su / suu;
    const err = (fa: number, fb: number): number => usable.reduce((s, [n, t]) => s + ((fa * n + fb * n * n - t) / t) ** 2, 0);
    [a, b] = err(0, bOnly) <= err(aOnly, 0) ? [0, bOnly] : [aOnly, 0];
  }
  return { a, b };
}

export const predict = (f: TtftFit, n: number): number => f.a * n + f.b * n * n;

const label = (n: number): string => (n >= 1 << 20 ? `${n / (1 << 20)}M` : n >= 1024 ? `${n / 1024}K` : `${n}`);

function parseLength(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KkMm]?)$/.exec(s.trim());
  if (m === null) throw new Error(`bad length "${s}"`);
  const unit = m[2]?.toUpperCase() === 'M' ? 1 << 20 : m[2]?.toUpperCase() === 'K' ? 1024 : 1;
  return Math.round(Number(m[1]) * unit);
}

interface Report {
  readonly date: string;
  readonly machine: { readonly cpus: number; readonly cpuModel: string | null; readonly totalMemGiB: number; readonly node: string };
  readonly configs: Record<ModelKind, Record<string, unknown>>;
  readonly chunkTokens: number;
  readonly timeBudgetSeconds: number;
  readonly hybrid: LengthResult[];
  readonly full: LengthResult[];
  readonly fits: { readonly hybridLinear: TtftFit | null; readonly fullQuadratic: TtftFit | null };
  readonly fullExtrapolated: { readonly promptTokens: number; readonly ttftSeconds: number }[];
  readonly acceptance: Record<string, unknown>;
}

function acceptance(hybrid: readonly LengthResult[], full: readonly LengthResult[]): Record<string, unknown> {
  const at = (n: number): LengthResult | undefined => hybrid.find((r) => r.promptTokens === n);
  const h4k = at(4096);
  const hMax = [...hybrid].sort((x, y) => y.promptTokens - x.promptTokens)[0];
  const out: Record<string, unknown> = {};
  if (h4k !== undefined && hMax !== undefined && hMax.promptTokens > 4096) {
    const ratio = hMax.prefillTokensPerSecond / h4k.prefillTokensPerSecond;
    out['prefillThroughputRatio'] = {
      longTokens: hMax.promptTokens,
      ratioOver4K: ratio,
      required: 0.9,
      pass: ratio >= 0.9,
      perCpuSecondRatioOver4K: hMax.prefillTokensPerCpuSecond / h4k.prefillTokensPerCpuSecond,
    };
    const grow = hMax.peakRssMiB - h4k.peakRssMiB;
    out['peakRssGrowthMiB'] = { longTokens: hMax.promptTokens, overFrom4K: grow, limit: 64, pass: grow <= 64 };
  }
  if (hMax !== undefined && hMax.timeline.length > 0) {
    // The same ratio inside the longest run (one process, one stretch of machine load): rate of each
    // segment between benchmark lengths, first 4K tokens against the last segment.
    const start = { tokens: 0, seconds: 0, cpuSeconds: 0 };
    const marks = [start, ...hMax.timeline, { tokens: hMax.promptTokens, seconds: hMax.prefillSeconds, cpuSeconds: hMax.prefillCpuSeconds }];
    const segments = marks.slice(1).map((m, i) => {
      const prev = marks[i] ?? start;
      return {
        fromTokens: prev.tokens,
        toTokens: m.tokens,
        tokensPerSecond: (m.tokens - prev.tokens) / (m.seconds - prev.seconds),
        tokensPerCpuSecond: (m.tokens - prev.tokens) / (m.cpuSeconds - prev.cpuSeconds),
      };
    });
    const first4K = hMax.timeline.find((m) => m.tokens === 4096);
    const last = segments.at(-1);
    out['inRunPrefillSegments'] = segments;
    if (first4K !== undefined && last !== undefined) {
      out['inRunLastSegmentOverFirst4K'] = {
        wall: last.tokensPerSecond / (4096 / first4K.seconds),
        cpu: last.tokensPerCpuSecond / (4096 / first4K.cpuSeconds),
      };
    }
  }
  const both = full.filter((f) => at(f.promptTokens) !== undefined).sort((x, y) => y.promptTokens - x.promptTokens)[0];
  const hb = both === undefined ? undefined : at(both.promptTokens);
  if (both !== undefined && hb !== undefined) {
    out['largestCommonLength'] = {
      promptTokens: both.promptTokens,
      fullOverHybridTtft: both.ttftSeconds / hb.ttftSeconds,
      fullOverHybridPeakRss: both.peakRssMiB / hb.peakRssMiB,
    };
  }
  return out;
}

function printTable(r: Report): void {
  const lengths = [...new Set([...r.hybrid, ...r.full].map((x) => x.promptTokens))].sort((a, b) => a - b);
  const f = (v: number | undefined, d = 2): string => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
  console.log(`\nchunk ${r.chunkTokens} tokens; ${r.machine.cpus} CPUs (${r.machine.cpuModel ?? '?'}); node ${r.machine.node}`);
  console.log('length   hyb TTFT s  hyb tok/s  hyb RSS MiB  full TTFT s  full RSS MiB  full/hyb TTFT  hyb dec tok/s  full dec tok/s  load h/f');
  for (const n of lengths) {
    const h = r.hybrid.find((x) => x.promptTokens === n);
    const fu = r.full.find((x) => x.promptTokens === n);
    const extra = r.fullExtrapolated.find((x) => x.promptTokens === n);
    const fullTtft = fu !== undefined ? f(fu.ttftSeconds) : extra !== undefined ? `~${f(extra.ttftSeconds, 0)}` : '-';
    const fullT = fu?.ttftSeconds ?? extra?.ttftSeconds;
    const ratio = h !== undefined && fullT !== undefined ? `${fu === undefined ? '~' : ''}${f(fullT / h.ttftSeconds)}` : '-';
    console.log(
      `${label(n).padEnd(7)}  ${f(h?.ttftSeconds).padStart(10)}  ${f(h?.prefillTokensPerSecond, 0).padStart(9)}  ${f(h?.peakRssMiB, 1).padStart(11)}  ` +
        `${fullTtft.padStart(11)}  ${f(fu?.peakRssMiB, 1).padStart(12)}  ${ratio.padStart(13)}  ` +
        `${f(h?.decodeTokensPerSecond ?? undefined, 1).padStart(13)}  ${f(fu?.decodeTokensPerSecond ?? undefined, 1).padStart(14)}  ` +
        `${f(h?.loadAverage1m, 1)}/${f(fu?.loadAverage1m, 1)}`,
    );
  }
  console.log('(~ = extrapolated from the quadratic fit of full attention; load = 1-min load average at the end of each run)');
  console.log('acceptance:', JSON.stringify(r.acceptance, null, 2));
}

function plot(r: Report, file: string): void {
  const lengths = [...new Set([...r.hybrid, ...r.full, ...r.fullExtrapolated].map((x) => x.promptTokens))].sort((a, b) => a - b);
  const xTicks = lengths.map((n) => ({ value: n, label: label(n) }));
  const pts = (rows: readonly LengthResult[], pick: (x: LengthResult) => number): [number, number][] =>
    [...rows].sort((a, b) => a.promptTokens - b.promptTokens).map((x) => [x.promptTokens, pick(x)]);
  const ttft: Series[] = [
    { name: 'hybrid GLA + SWA', color: COLORS.blue, points: pts(r.hybrid, (x) => x.ttftSeconds) },
    { name: 'full attention', color: COLORS.orange, points: pts(r.full, (x) => x.ttftSeconds) },
  ];
  const fit = r.fits.fullQuadratic;
  const lastFull = pts(r.full, (x) => x.ttftSeconds).at(-1);
  if (fit !== null && lastFull !== undefined && r.fullExtrapolated.length > 0) {
    ttft.push({
      name: `full, fit ${fit.a.toExponential(1)}n + ${fit.b.toExponential(1)}n^2`,
      color: COLORS.orange,
      dashed: true,
      points: [lastFull, ...r.fullExtrapolated.map((e) => [e.promptTokens, e.ttftSeconds] as [number, number])],
    });
  }
  const panels: Panel[] = [
    { title: 'Time to first token', xLabel: 'prompt tokens', yLabel: 'TTFT (s)', xTicks, series: ttft },
    {
      title: 'Peak RSS',
      xLabel: 'prompt tokens',
      yLabel: 'peak RSS (MiB)',
      xTicks,
      series: [
        { name: 'hybrid GLA + SWA', color: COLORS.blue, points: pts(r.hybrid, (x) => x.peakRssMiB) },
        { name: 'full attention', color: COLORS.orange, points: pts(r.full, (x) => x.peakRssMiB) },
      ],
    },
  ];
  panels.push({
    title: 'Prefill throughput',
    xLabel: 'prompt tokens',
    yLabel: 'prompt tokens / s',
    xTicks,
    series: [
      { name: 'hybrid GLA + SWA', color: COLORS.blue, points: pts(r.hybrid, (x) => x.prefillTokensPerSecond) },
      { name: 'full attention', color: COLORS.orange, points: pts(r.full, (x) => x.prefillTokensPerSecond) },
    ],
  });
  writePanelsPng(file, panels, { columns: 3 });
}

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      child: { type: 'string' },
      'max-tokens': { type: 'string', default: '4M' },
      'full-max-tokens': { type: 'string', default: '4M' },
      'time-budget-seconds': { type: 'string', default: '900' },
      'chunk-tokens': { type: 'string', default: '512' },
      'decode-tokens': { type: 'string', default: '32' },
      lengths: { type: 'string' },
      only: { type: 'string' },
      merge: { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      out: { type: 'string', default: join(RESULTS_DIR, 'long-context.json') },
      png: { type: 'string', default: join(RESULTS_DIR, 'long-context.png') },
    },
  });
  if (args.child !== undefined) {
    const result = await runChild(JSON.parse(args.child) as ChildJob);
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
    return;
  }

  const maxTokens = parseLength(args['max-tokens']);
  const fullMaxTokens = parseLength(args['full-max-tokens']);
  const budgetSeconds = Number(args['time-budget-seconds']);
  const chunkTokens = Number(args['chunk-tokens']);
  const decodeTokens = Number(args['decode-tokens']);
  const seed = Number(args.seed);
  const lengths = args.lengths === undefined ? DEFAULT_LENGTHS : args.lengths.split(',').map(parseLength);
  const kinds: ModelKind[] = args.only === 'hybrid' || args.only === 'full' ? [args.only] : ['hybrid', 'full'];

  const previous: Report | null = args.merge && existsSync(args.out) ? (JSON.parse(readFileSync(args.out, 'utf8')) as Report) : null;
  const rows: Record<ModelKind, LengthResult[]> = { hybrid: [...(previous?.hybrid ?? [])], full: [...(previous?.full ?? [])] };

  // Written after every length, so a long sweep stopped half-way keeps what it measured.
  const save = (): Report => {
    const fullFit = fitTtft(rows.full.map((x) => [x.promptTokens, x.ttftSeconds]), true);
    const fullMax = Math.max(0, ...rows.full.map((x) => x.promptTokens));
    const allLengths = [...new Set([...DEFAULT_LENGTHS, ...rows.hybrid.map((x) => x.promptTokens)])].sort((a, b) => a - b);
    const report: Report = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, totalMemGiB: totalmem() / 2 ** 30, node: process.version },
      configs: { hybrid: benchConfig('hybrid'), full: benchConfig('full') },
      chunkTokens,
      timeBudgetSeconds: budgetSeconds,
      hybrid: rows.hybrid,
      full: rows.full,
      fits: { hybridLinear: fitTtft(rows.hybrid.map((x) => [x.promptTokens, x.ttftSeconds]), false), fullQuadratic: fullFit },
      fullExtrapolated:
        fullFit === null ? [] : allLengths.filter((n) => n > fullMax).map((n) => ({ promptTokens: n, ttftSeconds: predict(fullFit, n) })),
      acceptance: acceptance(rows.hybrid, rows.full),
    };
    mkdirSync(dirname(args.out), { recursive: true });
    writeFileSync(args.out, JSON.stringify(report, null, 2) + '\n');
    plot(report, args.png);
    return report;
  };

  for (const kind of kinds) {
    const cap = kind === 'hybrid' ? maxTokens : fullMaxTokens;
    let spentSeconds = 0;
    const done: [number, number][] = [];
    for (const n of lengths.filter((x) => x <= cap).sort((a, b) => a - b)) {
      if (kind === 'full') {
        const fit = fitTtft(done, true);
        const predicted = fit === null ? 0 : predict(fit, n);
        if (spentSeconds + predicted > budgetSeconds) {
          console.error(`full attention: stopping before ${label(n)} (predicted ${predicted.toFixed(0)} s, ${(budgetSeconds - spentSeconds).toFixed(0)} s of budget left)`);
          break;
        }
      }
      console.error(`${kind} ${label(n)} …`);
      const r = await spawnChild({ kind, promptTokens: n, chunkTokens, decodeTokens: DECODE_DEPTHS.includes(n) ? decodeTokens : 0, seed });
      console.error(`${kind} ${label(n)}: TTFT ${r.ttftSeconds.toFixed(2)} s, ${r.prefillTokensPerSecond.toFixed(0)} tok/s, peak RSS ${r.peakRssMiB.toFixed(1)} MiB`);
      spentSeconds += r.ttftSeconds;
      done.push([n, r.ttftSeconds]);
      rows[kind] = rows[kind].filter((x) => x.promptTokens !== n).concat(r).sort((a, b) => a.promptTokens - b.promptTokens);
      save();
    }
  }

  const report = save();
  printTable(report);
  console.log(`wrote ${args.out} and ${args.png}; ${report.hybrid.length + report.full.length} runs`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
