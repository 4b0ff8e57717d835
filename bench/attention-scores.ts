// What the score bound of long prefills (--max-attention-score-bytes, Scheduler attentionScores) costs
// and saves: one long prompt through the real EngineCore (scheduler, paged KV, step runner, Model) of a
// model whose attention layers all keep every position (the reference size, bench/long-context.ts
// `full`), once with the default bound (256 MiB) and once unbounded (2^50 bytes), each in a fresh child
// process so that its peak RSS (VmHWM) is its own. Prefill chunks are 256 tokens (the default) until the
// bound cuts them: at 8 heads that happens past ~32K tokens of context.
//
//   node --import tsx bench/attention-scores.ts [--tokens 65536] [--bound-bytes 268435456] [--unbounded-first]
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { cpuSeconds, loadAverage, procStatusMiB } from './common.ts';
import { benchConfig } from './long-context.ts';

const { values: args } = parseArgs({
  options: {
    tokens: { type: 'string', default: '65536' },
    'bound-bytes': { type: 'string', default: String(256 * 2 ** 20) },
    'unbounded-first': { type: 'boolean', default: false },
    child: { type: 'string' },
  },
});

interface Result {
  readonly boundBytes: number;
  readonly tokens: number;
  readonly seconds: number;
  readonly cpuSeconds: number;
  readonly steps: number;
  readonly smallestChunk: number;
  readonly peakRssMiB: number;
  readonly rssAfterLoadMiB: number;
  readonly load: string;
}

async function child(boundBytes: number, tokens: number): Promise<Result> {
  const { parseModelConfig } = await import('../src/engine/model/config.ts');
  const { randomCheckpoint } = await import('../src/engine/model/random-checkpoint.ts');
  const { Model } = await import('../src/engine/model/model.ts');
  const { EngineCore } = await import('../src/engine/engine-core.ts');
  const config = parseModelConfig(benchConfig('full'));
  const model = await Model.load(randomCheckpoint(config, { seed: 3, gkLayout: 'lowrank' }), { intraOpThreads: 2 });
  const rssAfterLoadMiB = procStatusMiB('VmRSS');
  let done = false;
  let finish = '';
  const core = new EngineCore(
    model,
    config,
    { maxAttentionScoreBytes: boundBytes, maxModelLen: tokens + 8, kvCacheBytes: 2 * tokens * model.kvBytesPerToken, prefixCacheBytes: 0 },
    (_, e) => {
      if (e.type !== 'done') return;
      done = true;
      finish = e.finishReason;
    },
  );
  const prompt = Array.from({ length: tokens }, (_, i) => (i * 2654435761) % config.vocabSize);
  core.submit({ requestId: 'long', promptTokenIds: prompt, sampling: { maxTokens: 1, minTokens: 0, temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, logitBias: new Map(), logprobs: null, promptLogprobs: null, stopTokenIds: [], ignoreEos: true }, reportProgress: false });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let steps = 0;
  while (!done) {
    await core.step();
    steps++;
  }
  const seconds = (performance.now() - t0) / 1000;
  if (finish !== 'length') throw new Error(`the prompt did not complete (finish reason ${finish})`);
  const result: Result = {
    boundBytes,
    tokens,
    seconds,
    cpuSeconds: cpuSeconds(cpu0),
    steps,
    smallestChunk: Math.ceil(tokens / steps),
    peakRssMiB: procStatusMiB('VmHWM'),
    rssAfterLoadMiB,
    load: loadAverage(),
  };
  await model.close();
  return result;
}

function runChild(boundBytes: number, tokens: number): Promise<Result> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, process.argv[1]!, '--child', `${boundBytes},${tokens}`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as Result) : reject(new Error(`child exited ${code}`))));
  });
}

if (args.child !== undefined) {
  const [bound, tokens] = args.child.split(',').map(Number) as [number, number];
  process.stdout.write(`${JSON.stringify(await child(bound, tokens))}\n`);
} else {
  const tokens = Number(args.tokens);
  // Alternate the order between runs (--unbounded-first): on a shared machine the load drifts.
  const first = args['unbounded-first'] ? await runChild(2 ** 50, tokens) : await runChild(Number(args['bound-bytes']), tokens);
  const second = args['unbounded-first'] ? await runChild(Number(args['bound-bytes']), tokens) : await runChild(2 ** 50, tokens);
  const [bounded, unbounded] = args['unbounded-first'] ? [second, first] : [first, second];
  const row = (name: string, r: Result): string =>
    `| ${name} | ${r.tokens} | ${r.steps} | ${r.seconds.toFixed(1)} | ${r.cpuSeconds.toFixed(1)} | ${r.rssAfterLoadMiB.toFixed(0)} | ${r.peakRssMiB.toFixed(0)} | ${r.load} |`;
  console.log('| score bound | prompt tokens | steps | prefill s | CPU s | RSS after load MiB | peak RSS MiB | load |');
  console.log('|---|---|---|---|---|---|---|---|');
  console.log(row(`${(bounded.boundBytes / 2 ** 20).toFixed(0)} MiB`, bounded));
  console.log(row('none', unbounded));
  console.log(
    `peak RSS above load: ${(bounded.peakRssMiB - bounded.rssAfterLoadMiB).toFixed(0)} vs ${(unbounded.peakRssMiB - unbounded.rssAfterLoadMiB).toFixed(0)} MiB ` +
      `(${((bounded.peakRssMiB - bounded.rssAfterLoadMiB) / (unbounded.peakRssMiB - unbounded.rssAfterLoadMiB)).toFixed(2)}×); ` +
      `CPU ${(bounded.cpuSeconds / unbounded.cpuSeconds).toFixed(2)}×, wall ${(bounded.seconds / unbounded.seconds).toFixed(2)}×`,
  );
}
