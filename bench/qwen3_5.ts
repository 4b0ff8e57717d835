// Qwen3.5 benchmark, two parts, each case in a fresh child process (its peak RSS is its own):
//
// 1. The Qwen3.5-0.8B shape with random weights and int8 weights (--weights int8), beside a qwen2 model
//    of the same size with full attention on every layer: prefill tok/s at 4K / 32K / 128K prompt tokens
//    (one chunked prefill, 512 tokens a chunk, timed at each mark: the rate is marks / time to reach it),
//    decode tok/s at depth 1K / 32K / 128K, peak RSS. A decode step at depth P is timed with P past
//    keys/values present (random values: a step costs the same whatever they hold) and the GDN states in
//    place, so depths need no prefill. Prefill stops at --max-tokens (Qwen3.5) and --full-max-tokens
//    (qwen2), qwen2's decode at --full-max-depth; the rest is a fit (a·n + b·n² for the time to a prefix
//    of n tokens, a + b·P for a decode step), marked as such.
// 2. The reference size (hidden 256, 8 layers, 8 heads, 2 kv heads, ffn 1024, vocab 4096, SWA window 1024
//    on odd layers) with Gated DeltaNet on the even layers (8 heads of 32, as the GLA's query heads)
//    against the GLA hybrid: prefill tok/s at 64K, fp32, chunks of 512.
//
// Wall-clock rates move with other people's load on a shared machine: each row records CPU seconds too,
// and the load average is printed with the tables.
//
//   node --import tsx bench/qwen3_5.ts [--part all|shape|reference] [--lengths 4096,32768,131072]
//     [--depths 1024,32768,131072] [--max-tokens 32768] [--full-max-tokens 8192] [--full-max-depth 32768]
//     [--reference-tokens 65536] [--report bench/results/qwen3_5-all.json]   (tables from a saved run)
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseModelConfig, plainAttentionForm, type LayerKind, type ModelConfig } from '../src/engine/model/config.ts';
import type { ForwardInput } from '../src/engine/model/forward.ts';
import { Model } from '../src/engine/model/model.ts';
import type { WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { newSequence, stepSequences } from '../src/engine/model/sequence.ts';
import { cpuSeconds, loadAverage, REFERENCE_CONFIG_JSON } from './common.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const CACHE_DIR = join(HERE, '..', '.cache', 'bench-qwen3_5');
const CHUNK = 512;

/**
 * The Qwen3.5-0.8B text model's published shape: hidden 1024, 24 layers (every 4th full attention),
 * 8 attention heads of 256 (2 kv heads), ffn 3584, GDN 16 key and 16 value heads of 128, conv 4,
 * vocab 248320, tied embeddings, partial RoPE 0.25 (θ 1e7). The official config.json was not reachable
 * here; these are the values the public model card and configs report.
 */
export const QWEN3_5_0_8B = {
  model_type: 'qwen3_5_text',
  vocab_size: 248320,
  hidden_size: 1024,
  intermediate_size: 3584,
  num_hidden_layers: 24,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  head_dim: 256,
  linear_num_key_heads: 16,
  linear_num_value_heads: 16,
  linear_key_head_dim: 128,
  linear_value_head_dim: 128,
  linear_conv_kernel_dim: 4,
  full_attention_interval: 4,
  rms_norm_eps: 1e-6,
  tie_word_embeddings: true,
  max_position_embeddings: 262144,
  rope_parameters: { rope_type: 'default', rope_theta: 10000000, partial_rotary_factor: 0.25 },
};

/**
 * qwen2 of the same size: hidden 1024, 24 layers all full attention, 4 heads of 256 (qwen2's head dim is
 * hidden/heads) and 2 kv heads (the same KV per attention layer as Qwen3.5's), ffn 3584, vocab 248320, tied.
 */
export const QWEN2_SAME_SIZE = {
  model_type: 'qwen2',
  vocab_size: 248320,
  hidden_size: 1024,
  intermediate_size: 3584,
  num_hidden_layers: 24,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 10000000,
  tie_word_embeddings: true,
  max_position_embeddings: 262144,
};

/**
 * The reference size with GDN in place of GLA (even layers), SWA on odd layers; the SWA layers, norms
 * and MLPs are the GLA hybrid's (plain attention with biases, norms scaling by w), so only the mixer differs.
 */
function referenceGdnConfig(): ModelConfig {
  const gdnShape = parseModelConfig({
    model_type: 'qwen3_5_text', vocab_size: 4096, hidden_size: 256, intermediate_size: 1024, num_hidden_layers: 8,
    num_attention_heads: 8, num_key_value_heads: 2, head_dim: 32, linear_num_key_heads: 8, linear_num_value_heads: 8,
    linear_key_head_dim: 32, linear_value_head_dim: 32, linear_conv_kernel_dim: 4, rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 1 },
  });
  return Object.freeze({ ...gdnShape, attention: plainAttentionForm(32), zeroCentredNorms: false, slidingWindow: 1024, layerKinds: Object.freeze(gdnShape.layerKinds.map((_, i): LayerKind => (i % 2 === 0 ? 'gdn' : 'swa'))) });
}

type CaseName = 'qwen3_5' | 'qwen2' | 'ref-gla' | 'ref-gdn';

interface ChildSpec {
  readonly name: CaseName;
  readonly task: 'prefill' | 'decode';
  /** Prefill: marks in tokens (the last is the total); decode: depths. */
  readonly points: readonly number[];
}

interface ChildResult {
  readonly spec: ChildSpec;
  readonly parameters: number;
  readonly stateBytesPerSequence: number;
  readonly kvBytesPerToken: number;
  /** Per point: tokens/s (wall and per CPU second) and seconds. */
  readonly rows: readonly { readonly point: number; readonly seconds: number; readonly wall: number; readonly cpu: number }[];
  readonly peakRssMiB: number;
}

function configOf(name: CaseName): { config: ModelConfig; weightDtype: WeightDtype } {
  switch (name) {
    case 'qwen3_5':
      return { config: parseModelConfig(QWEN3_5_0_8B), weightDtype: 'int8' };
    case 'qwen2':
      return { config: parseModelConfig(QWEN2_SAME_SIZE), weightDtype: 'int8' };
    case 'ref-gla':
      return { config: parseModelConfig(REFERENCE_CONFIG_JSON), weightDtype: 'float32' };
    case 'ref-gdn':
      return { config: referenceGdnConfig(), weightDtype: 'float32' };
  }
}

function peakRssMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

async function runChild(spec: ChildSpec): Promise<ChildResult> {
  const { config, weightDtype } = configOf(spec.name);
  const ckpt = randomCheckpoint(config, { seed: 0, gkLayout: 'lowrank' });
  const model = await Model.load(ckpt, { cacheDir: CACHE_DIR, weightDtype, intraOpThreads: cpus().length });
  const V = config.vocabSize;
  const rows: { point: number; seconds: number; wall: number; cpu: number }[] = [];
  if (spec.task === 'prefill') {
    const seq = newSequence(model);
    const total = Math.max(...spec.points);
    const marks = [...spec.points].sort((a, b) => a - b);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    while (seq.numTokens < total) {
      const n = Math.min(CHUNK, total - seq.numTokens);
      const ids = Array.from({ length: n }, (_, i) => ((seq.numTokens + i) * 7919 + 13) % V);
      await stepSequences(model, [seq], [ids], false);
      if (marks.includes(seq.numTokens)) {
        const seconds = (performance.now() - t0) / 1000;
        rows.push({ point: seq.numTokens, seconds, wall: seq.numTokens / seconds, cpu: seq.numTokens / cpuSeconds(c0) });
        process.stderr.write(`${spec.name} prefill ${seq.numTokens}: ${seconds.toFixed(1)} s\n`);
      }
    }
  } else {
    const { numKvHeads: Hkv, headDim: d } = config;
    for (const depth of spec.points) {
      const random = (n: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.618) * 0.5);
      const input: ForwardInput = {
        batchSize: 1,
        chunkTokens: 1,
        tokenIds: Int32Array.of(17),
        positions: Int32Array.of(depth),
        states: model.stateSpecs.map((s) => random(s.floats)),
        pastTokens: depth,
        pastPositions: Int32Array.from({ length: depth }, (_, i) => i),
        pastKeys: model.attentionLayers.map(() => random(Hkv * depth * d)),
        pastValues: model.attentionLayers.map(() => random(Hkv * depth * d)),
        allLogits: false,
      };
      for (let i = 0; i < 3; i++) await model.run(input); // warm-up
      const steps = depth >= 65536 ? 8 : 24;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < steps; i++) await model.run(input);
      const seconds = (performance.now() - t0) / 1000;
      rows.push({ point: depth, seconds: seconds / steps, wall: steps / seconds, cpu: steps / cpuSeconds(c0) });
      process.stderr.write(`${spec.name} decode at ${depth}: ${(steps / seconds).toFixed(1)} tok/s\n`);
    }
  }
  await model.close();
  return { spec, parameters: ckpt.numParameters, stateBytesPerSequence: model.stateBytesPerSequence, kvBytesPerToken: model.kvBytesPerToken, rows, peakRssMiB: peakRssMiB() };
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
    p.on('exit', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0 || !line.startsWith('{')) reject(new Error(`child ${spec.name} ${spec.task} exited ${code}`));
      else resolve(JSON.parse(line) as ChildResult);
    });
  });
}

/** Least squares y = a·x + b·x² (through the origin). */
function fitQuadratic(xs: readonly number[], ys: readonly number[]): (x: number) => number {
  let s11 = 0, s12 = 0, s22 = 0, t1 = 0, t2 = 0;
  xs.forEach((x, i) => {
    const y = ys[i] as number;
    s11 += x * x; s12 += x ** 3; s22 += x ** 4; t1 += x * y; t2 += x * x * y;
  });
  const det = s11 * s22 - s12 * s12;
  const a = (t1 * s22 - t2 * s12) / det;
  const b = (s11 * t2 - s12 * t1) / det;
  return (x) => a * x + b * x * x;
}

/** Least squares y = a + b·x. */
function fitLinear(xs: readonly number[], ys: readonly number[]): (x: number) => number {
  const n = xs.length;
  const mx = xs.reduce((s, x) => s + x, 0) / n;
  const my = ys.reduce((s, y) => s + y, 0) / n;
  let sxy = 0, sxx = 0;
  xs.forEach((x, i) => {
    sxy += (x - mx) * ((ys[i] as number) - my);
    sxx += (x - mx) ** 2;
  });
  const b = sxx === 0 ? 0 : sxy / sxx;
  return (x) => my + b * (x - mx);
}

const fmt = (x: number, digits = 1): string => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const k = (n: number): string => `${n / 1024}K`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      part: { type: 'string', default: 'all' },
      lengths: { type: 'string', default: '4096,32768,131072' },
      depths: { type: 'string', default: '1024,32768,131072' },
      'max-tokens': { type: 'string', default: '32768' },
      'full-max-tokens': { type: 'string', default: '8192' },
      'full-max-depth': { type: 'string', default: '32768' },
      'reference-tokens': { type: 'string', default: '65536' },
      report: { type: 'string' },
    },
  });
  if (values.child !== undefined) {
    process.stdout.write(`${JSON.stringify(await runChild(JSON.parse(values.child) as ChildSpec))}\n`);
    return;
  }
  // --report FILE: rebuild the tables from a saved results file instead of measuring again.
  const saved: ChildResult[] = [];
  if (values.report !== undefined) {
    const old = JSON.parse(readFileSync(values.report, 'utf8')) as { shape?: Record<string, ChildResult>; reference?: Record<string, ChildResult> };
    saved.push(...Object.values(old.shape ?? {}), ...Object.values(old.reference ?? {}));
  }
  const child = async (spec: ChildSpec): Promise<ChildResult> => {
    if (values.report === undefined) return runInChild(spec);
    const i = saved.findIndex((r) => r.spec.name === spec.name && r.spec.task === spec.task);
    if (i < 0) throw new Error(`${values.report} has no ${spec.name} ${spec.task} result`);
    return saved.splice(i, 1)[0] as ChildResult;
  };
  const nums = (s: string): number[] => s.split(',').map(Number);
  const lengths = nums(values.lengths);
  const depths = nums(values.depths);
  const maxTokens = Number(values['max-tokens']);
  const fullMax = Number(values['full-max-tokens']);
  const fullMaxDepth = Number(values['full-max-depth']);
  const results: Record<string, unknown> = { machine: { cpus: cpus().length, model: cpus()[0]?.model }, loadBefore: loadAverage() };
  const lines: string[] = [];

  if (values.part === 'all' || values.part === 'shape') {
    // Prefill is measured up to a cap per model (at least three marks for the fit), the longer rows fitted.
    const marksUpTo = (cap: number): number[] => [...new Set([4096, cap / 2, cap, ...lengths.filter((n) => n <= cap)])].sort((a, b) => a - b);
    const depthsUpTo = (cap: number): number[] => [...new Set([1024, 8192, ...depths.filter((n) => n <= cap)])].filter((n) => n <= cap).sort((a, b) => a - b);
    const q35Prefill = await child({ name: 'qwen3_5', task: 'prefill', points: marksUpTo(maxTokens) });
    const q35Decode = await child({ name: 'qwen3_5', task: 'decode', points: depths });
    const q2Prefill = await child({ name: 'qwen2', task: 'prefill', points: marksUpTo(fullMax) });
    const q2Decode = await child({ name: 'qwen2', task: 'decode', points: depthsUpTo(fullMaxDepth) });
    results['shape'] = { q35Prefill, q35Decode, q2Prefill, q2Decode };

    // Cases run one after the other while other work comes and goes on a shared machine, so fits and
    // ratios use CPU seconds (the work per token); wall-clock rates are shown beside them.
    /** A prefill row: measured when the mark was reached, else the fit of CPU time to n tokens. */
    const prefillCell = (r: ChildResult, n: number): { cpu: number; text: string } => {
      const row = r.rows.find((x) => x.point === n);
      if (row !== undefined) return { cpu: row.cpu, text: `${fmt(row.cpu)} tok/CPU-s (${fmt(row.wall)} tok/s)` };
      const time = fitQuadratic(r.rows.map((x) => x.point), r.rows.map((x) => x.point / x.cpu));
      return { cpu: n / time(n), text: `~${fmt(n / time(n))} tok/CPU-s (fit)` };
    };
    const decodeCell = (r: ChildResult, p: number): { cpu: number; text: string } => {
      const row = r.rows.find((x) => x.point === p);
      if (row !== undefined) return { cpu: row.cpu, text: `${fmt(row.cpu)} tok/CPU-s (${fmt(row.wall)} tok/s)` };
      const step = fitLinear(r.rows.map((x) => x.point), r.rows.map((x) => 1 / x.cpu));
      return { cpu: 1 / step(p), text: `~${fmt(1 / step(p))} tok/CPU-s (fit)` };
    };
    lines.push(
      `Qwen3.5-0.8B shape (random weights, int8) vs qwen2 of the same size (every layer full attention), ${cpus().length} threads`,
      `parameters: Qwen3.5 ${fmt(q35Prefill.parameters / 1e6, 0)} M, qwen2 ${fmt(q2Prefill.parameters / 1e6, 0)} M; ` +
        `KV per token ${q35Prefill.kvBytesPerToken / 1024} KiB vs ${q2Prefill.kvBytesPerToken / 1024} KiB (${fmt(q2Prefill.kvBytesPerToken / q35Prefill.kvBytesPerToken)}×); ` +
        `Qwen3.5 recurrent state ${fmt(q35Prefill.stateBytesPerSequence / 2 ** 20, 2)} MiB per sequence`,
      '',
      '| measure | Qwen3.5 (GDN + full, 3:1) | qwen2 (full everywhere) | Qwen3.5 ÷ qwen2 (per CPU-s) |',
      '|---|---|---|---|',
    );
    for (const n of lengths) {
      const a = prefillCell(q35Prefill, n);
      const b = prefillCell(q2Prefill, n);
      lines.push(`| prefill ${k(n)} | ${a.text} | ${b.text} | ${fmt(a.cpu / b.cpu, 2)}× |`);
    }
    for (const p of depths) {
      const a = decodeCell(q35Decode, p);
      const b = decodeCell(q2Decode, p);
      lines.push(`| decode at depth ${k(p)} | ${a.text} | ${b.text} | ${fmt(a.cpu / b.cpu, 2)}× |`);
    }
    lines.push(
      `| peak RSS, prefill to ${k(maxTokens)} / ${k(fullMax)} | ${fmt(q35Prefill.peakRssMiB, 0)} MiB | ${fmt(q2Prefill.peakRssMiB, 0)} MiB | |`,
      `| peak RSS, decode up to depth ${k(Math.max(...depths))} / ${k(Math.max(...depthsUpTo(fullMaxDepth)))} | ${fmt(q35Decode.peakRssMiB, 0)} MiB | ${fmt(q2Decode.peakRssMiB, 0)} MiB | |`,
      '',
    );
  }

  if (values.part === 'all' || values.part === 'reference') {
    const n = Number(values['reference-tokens']);
    const gla = await child({ name: 'ref-gla', task: 'prefill', points: [n] });
    const gdn = await child({ name: 'ref-gdn', task: 'prefill', points: [n] });
    const again = await child({ name: 'ref-gla', task: 'prefill', points: [n] }); // load drift check
    results['reference'] = { gla, gdn, glaAgain: again };
    const g = gla.rows[0];
    const d = gdn.rows[0];
    const g2 = again.rows[0];
    if (g !== undefined && d !== undefined && g2 !== undefined) {
      const glaWall = (g.wall + g2.wall) / 2;
      const glaCpu = (g.cpu + g2.cpu) / 2;
      lines.push(
        `Reference size, prefill of ${k(n)} tokens (fp32, chunks of ${CHUNK}): GDN hybrid vs GLA hybrid (GLA run before and after)`,
        '',
        '| model | prefill tok/s | per CPU-second | peak RSS |',
        '|---|---|---|---|',
        `| GLA + SWA | ${fmt(g.wall)} / ${fmt(g2.wall)} | ${fmt(g.cpu)} / ${fmt(g2.cpu)} | ${fmt(gla.peakRssMiB, 0)} MiB |`,
        `| GDN + SWA | ${fmt(d.wall)} | ${fmt(d.cpu)} | ${fmt(gdn.peakRssMiB, 0)} MiB |`,
        `| GDN ÷ GLA | **${fmt((100 * d.wall) / glaWall, 0)}%** | **${fmt((100 * d.cpu) / glaCpu, 0)}%** | |`,
        '',
      );
    }
  }
  results['loadAfter'] = loadAverage();
  lines.push(`load average before: ${String(results['loadBefore'])}, after: ${String(results['loadAfter'])}`);
  if (values.report === undefined) {
    mkdirSync(join(HERE, 'results'), { recursive: true });
    writeFileSync(join(HERE, 'results', `qwen3_5-${values.part}.json`), `${JSON.stringify(results, null, 2)}\n`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

await main();
