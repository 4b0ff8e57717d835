// Engine throughput benchmark on the reference-size hybrid model (random weights; no files needed):
//   hidden 256, 8 layers (GLA / SWA alternating), 8 heads, 2 kv heads, ffn 1024, vocab 4096, window 1024.
// 0. Prefill tokens/s by prefill chunk size (one engine per size; basis of the default chunk).
// 1. Aggregate decode tokens/s at 1, 4, 16 and 64 concurrent streams, and the ratio to one stream.
// 2. Inter-token latency of short requests, alone and while a long prompt (default 1M tokens) is prefilled.
// Prints tables; numbers are measured in this one run (no thresholds).
//
//   node --import tsx bench/throughput.ts [--long-tokens 1048576] [--decode-tokens 64] [--threads N]
//        [--chunk-tokens 256] [--chunk-sweep 128,256,512,1024 | none] [--sweep-tokens 8192]
//        [--weights float32 | int8 | int4] [--decode-threads N]
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.ts';
import type { WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import type { GenerateRequest, SamplingParams, TokenEvent } from '../src/engine/types.ts';
import { REFERENCE_CONFIG_JSON, cpuSeconds, loadAverage } from './common.ts';

const { values: args } = parseArgs({
  options: {
    'long-tokens': { type: 'string', default: String(1 << 20) },
    'decode-tokens': { type: 'string', default: '64' },
    'prompt-tokens': { type: 'string', default: '32' },
    streams: { type: 'string', default: '1,4,16,64' },
    threads: { type: 'string' },
    'decode-threads': { type: 'string' },
    'chunk-tokens': { type: 'string', default: '256' },
    'chunk-sweep': { type: 'string', default: '128,256,512,1024' },
    'sweep-tokens': { type: 'string', default: '8192' },
    weights: { type: 'string', default: 'float32' },
  },
});
const WEIGHTS = args.weights as WeightDtype;
if (!['float32', 'float16', 'int8', 'int4'].includes(WEIGHTS)) throw new Error(`--weights must be float32, float16, int8 or int4, got ${args.weights}`);
const LONG_TOKENS = Number(args['long-tokens']);
const DECODE_TOKENS = Number(args['decode-tokens']);
const PROMPT_TOKENS = Number(args['prompt-tokens']);
const STREAMS = args.streams.split(',').map(Number);
const VOCAB = REFERENCE_CONFIG_JSON.vocab_size;
const LOAD_AT_START = loadAverage();

const referenceConfig = { ...REFERENCE_CONFIG_JSON, eos_token_id: 2, max_position_embeddings: 4096 };

function sampling(maxTokens: number): SamplingParams {
  return {
    temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0,
    repetitionPenalty: 1, logitBias: new Map(), logprobs: null, promptLogprobs: null, maxTokens,
    minTokens: 0, stopTokenIds: [], ignoreEos: true,
  };
}

let nextId = 0;
function request(promptTokens: number, maxTokens: number, reportProgress = false): GenerateRequest {
  const seed = nextId;
  return {
    requestId: `bench-${nextId++}`,
    promptTokenIds: Array.from({ length: promptTokens }, (_, i) => (seed * 7919 + i * 31) % VOCAB),
    sampling: sampling(maxTokens),
    reportProgress,
  };
}

/** Runs one request; returns the arrival time of each token. */
async function tokenTimes(engine: Engine, req: GenerateRequest, onEvent?: (e: TokenEvent) => void): Promise<number[]> {
  const times: number[] = [];
  for await (const e of engine.generate(req)) {
    if (e.type === 'token') times.push(performance.now());
    onEvent?.(e);
  }
  return times;
}

function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

function gaps(times: readonly number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]!);
}

/**
 * Aggregate decode tokens/s with n concurrent streams, measured while all n are decoding; and
 * generated tokens per CPU-second of this process (all threads, onnxruntime's included), which
 * depends much less on what else runs on the machine.
 */
async function decodeThroughput(engine: Engine, n: number): Promise<{ tokensPerSecond: number; tokensPerCpuSecond: number; itlMs: number }> {
  const cpu0 = process.cpuUsage();
  const all = await Promise.all(Array.from({ length: n }, () => tokenTimes(engine, request(PROMPT_TOKENS, DECODE_TOKENS))));
  const cpu = cpuSeconds(cpu0);
  const from = Math.max(...all.map((t) => t[0]!)); // every stream has its first token
  const to = Math.min(...all.map((t) => t[t.length - 1]!)); // no stream has finished yet
  let tokens = 0;
  for (const t of all) tokens += t.filter((x) => x > from && x <= to).length;
  return {
    tokensPerSecond: (tokens / (to - from)) * 1000,
    tokensPerCpuSecond: (n * DECODE_TOKENS) / cpu,
    itlMs: percentile(all.flatMap(gaps), 50),
  };
}

function row(cells: readonly (string | number)[], widths: readonly number[]): string {
  return cells.map((c, i) => String(c).padStart(widths[i]!)).join('  ');
}

function startEngine(chunkTokens: number, maxNumSeqs: number): Promise<Engine> {
  return Engine.start({
    modelDir: '(random reference-size weights)',
    randomWeightsConfig: referenceConfig,
    maxNumSeqs,
    prefillChunkTokens: chunkTokens,
    maxBatchedTokens: Math.max(2048, chunkTokens),
    prefixCacheBytes: 0, // every prompt is computed
    weightDtype: WEIGHTS,
    ...(args.threads !== undefined ? { intraOpThreads: Number(args.threads) } : {}),
    ...(args['decode-threads'] !== undefined ? { decodeIntraOpThreads: Number(args['decode-threads']) } : {}),
  }, (m) => process.stderr.write(`${m}\n`));
}

async function chunkSweep(): Promise<void> {
  if (args['chunk-sweep'] === 'none') return;
  const tokens = Number(args['sweep-tokens']);
  console.log(`Prefill throughput by chunk size (${tokens}-token prompt)`);
  const w = [8, 12];
  console.log(row(['chunk', 'tokens/s'], w));
  for (const chunk of args['chunk-sweep'].split(',').map(Number)) {
    const engine = await startEngine(chunk, 2);
    let seconds = NaN;
    for await (const e of engine.generate(request(tokens, 1))) if (e.type === 'done') seconds = e.timing.prefillSeconds;
    console.log(row([chunk, (tokens / seconds).toFixed(0)], w));
    await engine.shutdown();
  }
  console.log('');
}

async function main(): Promise<void> {
  await chunkSweep();
  const maxStreams = Math.max(...STREAMS, 8);
  const t0 = performance.now();
  const engine = await startEngine(Number(args['chunk-tokens']), maxStreams + 1);
  console.log(`weights ${WEIGHTS}${args['decode-threads'] !== undefined ? `, decode session ${args['decode-threads']} thread(s)` : ''}; prefill chunk ${args['chunk-tokens']} tokens; model loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; pool ${engine.stats().kvPagesTotal} pages, ${engine.stats().stateSlotsTotal} slots`);

  await decodeThroughput(engine, 1); // warm-up
  console.log(`\nDecode throughput (prompt ${PROMPT_TOKENS} tokens, ${DECODE_TOKENS} new tokens per stream, greedy)`);
  // tokens/s: counted while all streams decode (wall clock; hit by stalls on a busy machine);
  // n/ITL: streams ÷ median inter-token gap (robust to a few stalls); tokens/cpu-s: per CPU-second.
  const w = [8, 10, 8, 10, 8, 14, 8, 10];
  console.log(row(['streams', 'tokens/s', 'vs 1', 'n/ITL', 'vs 1', 'tokens/cpu-s', 'vs 1', 'ITL p50'], w));
  let base = NaN;
  let baseItl = NaN;
  let baseCpu = NaN;
  for (const n of STREAMS) {
    const r = await decodeThroughput(engine, n);
    const byItl = (n * 1000) / r.itlMs;
    if (n === STREAMS[0]) {
      base = r.tokensPerSecond;
      baseItl = byItl;
      baseCpu = r.tokensPerCpuSecond;
    }
    console.log(row([
      n,
      r.tokensPerSecond.toFixed(0),
      `${(r.tokensPerSecond / base).toFixed(2)}×`,
      byItl.toFixed(0),
      `${(byItl / baseItl).toFixed(2)}×`,
      r.tokensPerCpuSecond.toFixed(0),
      `${(r.tokensPerCpuSecond / baseCpu).toFixed(2)}×`,
      `${r.itlMs.toFixed(1)} ms`,
    ], w));
  }

  console.log(`\nInter-token latency of short requests (4 streams × ${DECODE_TOKENS} tokens)`);
  const shortBatch = async (): Promise<number[][]> =>
    Promise.all(Array.from({ length: 4 }, () => tokenTimes(engine, request(PROMPT_TOKENS, DECODE_TOKENS))));
  const idle = (await shortBatch()).flatMap(gaps);

  let longDone: Extract<TokenEvent, { type: 'done' }> | null = null;
  let longFirstToken = Infinity;
  let resolveStarted: () => void = () => undefined;
  const started = new Promise<void>((r) => (resolveStarted = r));
  const longRun = tokenTimes(engine, request(LONG_TOKENS, 1, true), (e) => {
    if (e.type === 'progress') resolveStarted();
    if (e.type === 'token') longFirstToken = Math.min(longFirstToken, performance.now());
    if (e.type === 'done') {
      longDone = e;
      resolveStarted();
    }
  });
  await started;
  // Short streams, round after round, until the long prompt has its first token; only gaps that
  // ended before it count.
  const shortTimes: number[][] = [];
  let rounds = 0;
  while (longDone === null) {
    shortTimes.push(...(await shortBatch()));
    rounds++;
  }
  const during = shortTimes.flatMap((t) => gaps(t.filter((x) => x < longFirstToken)));
  await longRun;
  const w2 = [34, 10, 10, 10];
  console.log(row(['', 'p50', 'p99', 'max'], w2));
  const fmt = (xs: number[]): string[] => [50, 99, 100].map((p) => (xs.length === 0 ? 'n/a' : `${percentile(xs, p).toFixed(1)} ms`));
  console.log(row(['alone', ...fmt(idle)], w2));
  console.log(row([`during a ${LONG_TOKENS}-token prefill`, ...fmt(during)], w2));
  const d = longDone as Extract<TokenEvent, { type: 'done' }> | null;
  if (d !== null) {
    console.log(
      `\nlong prompt: ${d.promptTokens} tokens prefilled in ${d.timing.prefillSeconds.toFixed(1)} s ` +
        `(${(d.promptTokens / d.timing.prefillSeconds).toFixed(0)} tokens/s), ${during.length} short-request gaps measured in ${rounds} rounds`,
    );
  }
  await engine.shutdown();
  console.log(`load average at start ${LOAD_AT_START}, at end ${loadAverage()} (${availableParallelism()} cores)`);
}

await main();
