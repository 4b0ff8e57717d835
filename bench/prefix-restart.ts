// Prefix snapshots on disk (`--prefix-cache-dir`): time to first token of a long prompt computed from
// scratch, then the same prompt with a new question after it, (1) in the same engine (the snapshot is
// in memory) and (2) in a freshly started engine that finds the snapshot only on disk, as after a
// server restart. Reference-size hybrid model, random weights, through Engine (worker thread, scheduler,
// cache): the path a request takes. One run prints one table.
//
//   node --import tsx bench/prefix-restart.ts [--tokens 65536] [--threads N]
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import type { GenerateRequest, SamplingParams } from '../src/engine/types.ts';
import { REFERENCE_CONFIG_JSON, loadAverage } from './common.ts';

const { values: args } = parseArgs({ options: { tokens: { type: 'string', default: '65536' }, threads: { type: 'string' } } });
const TOKENS = Number(args.tokens);
if (!Number.isInteger(TOKENS) || TOKENS < 1024) throw new Error('--tokens must be an integer ≥ 1024');

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
  try {
    const loadStart = loadAverage();
    const first = await Engine.start(opts, (m) => process.stderr.write(`${m}\n`));
    const cold = await ttft(first, [...doc, ...question(1)], 'cold');
    process.stderr.write(`  cold: ${cold.seconds.toFixed(2)} s\n`);
    const warm = await ttft(first, [...doc, ...question(2)], 'warm');
    await first.shutdown();
    const folder = join(root, 'snapshots', readdirSync(join(root, 'snapshots'))[0] ?? '');
    const files = readdirSync(folder);
    const bytes = files.reduce((n, f) => n + statSync(join(folder, f)).size, 0);

    const startT0 = performance.now();
    const second = await Engine.start(opts, (m) => process.stderr.write(`${m}\n`));
    const startSeconds = (performance.now() - startT0) / 1000;
    const restarted = await ttft(second, [...doc, ...question(3)], 'restarted');
    await second.shutdown();

    console.log(`\nspikeserve prefix snapshots across a restart — reference size, ${TOKENS.toLocaleString('en-US')}-token document + 24-token question; load average ${loadStart} → ${loadAverage()}`);
    console.log('');
    console.log('| request | TTFT | prompt tokens from a snapshot | ÷ cold TTFT |');
    console.log('|---|---|---|---|');
    console.log(`| cold (nothing cached) | ${cold.seconds.toFixed(2)} s | ${cold.cached} | 1.00 |`);
    console.log(`| same engine, new question (snapshot in memory) | ${warm.seconds.toFixed(3)} s | ${warm.cached} | ${(warm.seconds / cold.seconds).toFixed(4)} |`);
    console.log(`| new engine, new question (snapshot read from disk) | ${restarted.seconds.toFixed(3)} s | ${restarted.cached} | ${(restarted.seconds / cold.seconds).toFixed(4)} |`);
    console.log(`| snapshot files on disk | ${files.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB | | |`);
    console.log(`| engine start with the snapshot folder | ${startSeconds.toFixed(2)} s (model cached) | | |`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
