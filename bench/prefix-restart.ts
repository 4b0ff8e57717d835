// Prefix snapshots in a shared folder (`--prefix-cache-dir`): time to first token of a long document
// computed from scratch on replica A, then the document with a new question (1) on A (the snapshot is
// in memory), (2) on replica B, an engine on the same folder started before A read anything (the
// snapshot A wrote through), and (3) on a freshly started engine after both shut down, as after a
// rolling deploy. Reference-size hybrid model, random weights, through Engine (worker thread,
// scheduler, cache): the path a request takes. One run prints one table, ratios to the cold TTFT.
//
//   node --import tsx bench/prefix-restart.ts [--tokens 262144] [--threads N]
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import type { GenerateRequest, SamplingParams } from '../src/engine/types.ts';
import { REFERENCE_CONFIG_JSON, loadAverage } from './common.ts';

const { values: args } = parseArgs({ options: { tokens: { type: 'string', default: '262144' }, threads: { type: 'string' } } });
const TOKENS = Number(args.tokens);
if (!Number.isInteger(TOKENS) || TOKENS < 8192) throw new Error('--tokens must be an integer ≥ 8192 (snapshots of ≥ 4096 tokens are shared at once)');

const sampling: SamplingParams = {
  temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0,
  repetitionPenalty: 1, logitBias: new Map(), logprobs: null, promptLogprobs: null, maxTokens: 1,
  minTokens: 0, stopTokenIds: [], ignoreEos: true,
};

/** TTFT of one request (submit → first token) and how many prompt tokens came from a snapshot. */
async function ttft(engine: Engine, prompt: readonly number[], id: string): Promise<{ seconds: number; cached: number }> {
  const req: GenerateRequest = { requestId: id, promptTokenIds: prompt, sampling, reportProgress: false };
  const t0 = performance.now();
  let first = -1;
  let cached = 0;
  for await (const e of engine.generate(req)) {
    if (e.type === 'token' && first < 0) first = performance.now();
    if (e.type === 'done') cached = e.cachedTokens;
  }
  return { seconds: (first - t0) / 1000, cached };
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'spikeserve-prefix-restart-'));
  const V = REFERENCE_CONFIG_JSON.vocab_size;
  const doc = Array.from({ length: TOKENS }, (_, i) => (i * 7919 + 13) % V);
  const question = (salt: number): number[] => Array.from({ length: 24 }, (_, i) => (i * 104729 + salt) % V);
  const opts: EngineOptions = {
    modelDir: '(random reference-size weights)',
    randomWeightsConfig: { ...REFERENCE_CONFIG_JSON, eos_token_id: 2 },
    cacheDir: join(root, 'built'),
    prefixCacheDir: join(root, 'snapshots'),
    ...(args.threads !== undefined ? { intraOpThreads: Number(args.threads) } : {}),
  };
  const log = (m: string): void => void process.stderr.write(`${m}\n`);
  try {
    const loadStart = loadAverage();
    const a = await Engine.start(opts, log);
    const b = await Engine.start(opts, log); // replica B: running, empty memory cache, before A reads anything
    // Both have served something before (first runs of a session allocate): a short prompt each.
    await Promise.all([ttft(a, question(5), 'a-first'), ttft(b, question(6), 'b-first')]);
    const cold = await ttft(a, [...doc, ...question(1)], 'cold');
    log(`  cold: ${cold.seconds.toFixed(2)} s`);
    // A writes the document's snapshot through, off its step loop: B can use it once it is published.
    const publishT0 = performance.now();
    while ((a.stats().prefixStore?.writes ?? 0) < 1) await new Promise((r) => setTimeout(r, 5));
    const publishedAfter = (performance.now() - publishT0) / 1000;
    const warm = await ttft(a, [...doc, ...question(2)], 'warm');
    const replica = await ttft(b, [...doc, ...question(3)], 'replica');
    await Promise.all([a.shutdown(), b.shutdown()]);
    const folder = join(root, 'snapshots', readdirSync(join(root, 'snapshots'))[0] ?? '');
    const files = readdirSync(folder);
    const bytes = files.reduce((n, f) => n + statSync(join(folder, f)).size, 0);

    const startT0 = performance.now();
    const c = await Engine.start(opts, log);
    const startSeconds = (performance.now() - startT0) / 1000;
    await ttft(c, question(7), 'c-first');
    const restarted = await ttft(c, [...doc, ...question(4)], 'restarted');
    await c.shutdown();

    const ratio = (s: number): string => (s / cold.seconds).toFixed(4);
    console.log(`\nspikeserve prefix snapshots shared by replicas — reference size, ${TOKENS.toLocaleString('en-US')}-token document + 24-token question; load average ${loadStart} → ${loadAverage()}`);
    console.log('');
    console.log('| request | TTFT | prompt tokens from a snapshot | ÷ cold TTFT |');
    console.log('|---|---|---|---|');
    console.log(`| A, cold (nothing cached) | ${cold.seconds.toFixed(2)} s | ${cold.cached} | 1.00 |`);
    console.log(`| A, new question (snapshot in memory) | ${warm.seconds.toFixed(3)} s | ${warm.cached} | ${ratio(warm.seconds)} |`);
    console.log(`| **B, another replica on the folder, new question** (A's snapshot read from disk) | ${replica.seconds.toFixed(3)} s | ${replica.cached} | ${ratio(replica.seconds)} |`);
    console.log(`| new engine after both shut down, new question (read from disk) | ${restarted.seconds.toFixed(3)} s | ${restarted.cached} | ${ratio(restarted.seconds)} |`);
    console.log(`| A's snapshot on disk, after A's first token | ${publishedAfter.toFixed(3)} s | | |`);
    console.log(`| snapshot files on disk | ${files.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB | | |`);
    console.log(`| engine start with the snapshot folder | ${startSeconds.toFixed(2)} s (model cached) | | |`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
