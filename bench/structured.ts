// Structured outputs benchmark (issue 14) on the default model (models/spikingbrain-tiny, real
// weights and tokenizer), int8 weights and --decode-threads 1 as the README recommends:
//
// 1. Compile time of a typical schema through the grammar worker: cold (first time) and cached, for
//    the default model's vocabulary (4,096 ids) and SpikingBrain-7B's (test/fixtures, 151,643 + added).
// 2. Mask + accept round trip alone (no model): each step, every matcher's mask is read and applied to
//    a logits row, and the sampled token accepted; wall time per step at 1 and 16 matchers.
// 3. Through the engine, side by side: decode at 1 and 16 streams, unconstrained and constrained
//    (the same number of tokens), alternating, medians of --repeats runs: wall and CPU time per step,
//    and what the constraint adds.
// Prints tables and ratios measured in this one run (no thresholds).
//
//   node --import tsx bench/structured.ts [--tokens 256] [--streams 1,16] [--repeats 3] [--weights int8]
//        [--decode-threads 1] [--skip-7b]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../src/engine/engine.ts';
import { GrammarClient } from '../src/engine/grammar/grammar-client.ts';
import type { WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import type { GenerateRequest, GrammarConstraint, SamplingParams } from '../src/engine/types.ts';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/server/config.ts';
import { cpuSeconds, loadAverage } from './common.ts';

const { values: args } = parseArgs({
  options: {
    tokens: { type: 'string', default: '256' },
    streams: { type: 'string', default: '1,16' },
    weights: { type: 'string', default: 'int8' },
    'decode-threads': { type: 'string', default: '1' },
    'skip-7b': { type: 'boolean', default: false },
    repeats: { type: 'string', default: '3' },
  },
});
const TOKENS = Number(args.tokens);
const REPEATS = Number(args.repeats);
const STREAMS = args.streams.split(',').map(Number);
const LOAD_AT_START = loadAverage();

/** A typical structured-output schema: a record with bounded strings, an enum, numbers, a nested array. */
const RECORD = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 24 },
    email: { type: 'string', maxLength: 40 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    role: { type: 'string', enum: ['admin', 'editor', 'viewer'] },
    active: { type: 'boolean' },
    tags: { type: 'array', items: { type: 'string', maxLength: 12 }, minItems: 1, maxItems: 4 },
    address: { type: 'object', properties: { city: { type: 'string', maxLength: 20 }, zip: { type: 'string', maxLength: 8 } }, required: ['city', 'zip'] },
  },
  required: ['name', 'email', 'age', 'role', 'active', 'tags', 'address'],
  additionalProperties: false,
};
/** Records without end: every stream runs exactly max_tokens constrained tokens. */
const ENDLESS = { type: 'array', items: RECORD, minItems: 100000 };
const constraint = (schema: object): GrammarConstraint => ({ param: 'response_format', kind: 'json_schema', schema: JSON.stringify(schema) });

function table(header: readonly string[], rows: readonly (readonly string[])[]): void {
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${header.map(() => '---').join('|')}|`);
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
}

// 1. Compile time.
async function compileTimes(modelDir: string, vocabSize: number, eosTokenIds: number[]): Promise<string[]> {
  const client = new GrammarClient({ modelDir, vocabSize, eosTokenIds, cacheEntries: 8, log: () => {} });
  let t = performance.now();
  (await client.open({ param: 'x', kind: 'choice', choices: ['a'] }, eosTokenIds)).close(); // starts the worker, builds TokenizerInfo
  const startMs = performance.now() - t;
  t = performance.now();
  (await client.open(constraint(RECORD), eosTokenIds)).close();
  const coldMs = performance.now() - t;
  const cached: number[] = [];
  for (let i = 0; i < 5; i++) {
    t = performance.now();
    (await client.open(constraint(RECORD), eosTokenIds)).close();
    cached.push(performance.now() - t);
  }
  await client.close();
  return [String(vocabSize), `${startMs.toFixed(0)} ms`, `${coldMs.toFixed(0)} ms`, `${(cached.reduce((a, b) => a + b) / cached.length).toFixed(2)} ms`, `${(coldMs / Math.min(...cached)).toFixed(0)}×`];
}

// 2. Mask + accept alone: matchers of ENDLESS walk greedily through a fixed record, in lock step.
async function maskAcceptRoundTrip(tokenizer: TextTokenizer, vocabSize: number, eos: number[], numMatchers: number): Promise<{ msPerStep: number; cpuPerStep: number }> {
  const client = new GrammarClient({ modelDir: DEFAULT_MODEL_DIR, vocabSize, eosTokenIds: eos, cacheEntries: 8, log: () => {} });
  const matchers = await Promise.all(Array.from({ length: numMatchers }, () => client.open(constraint(ENDLESS), eos)));
  const record = JSON.stringify([{ name: 'Ada Lovelace', email: 'ada@example.org', age: 36, role: 'admin', active: true, tags: ['math', 'poet'], address: { city: 'London', zip: 'W1' } }]).replace(/,/g, ', ').replace(/:/g, ': ');
  const text = record.slice(0, -1);
  const ids = await tokenizer.encode(text.repeat(1), { addSpecialTokens: false });
  const logits = new Float32Array(vocabSize);
  const steps = Math.min(ids.length, TOKENS);
  const cpu = process.cpuUsage();
  const t = performance.now();
  for (let s = 0; s < steps; s++) {
    for (const m of matchers) {
      if (m.poll(1000) !== 'ready') throw new Error(`matcher not ready at step ${s}`);
      logits.fill(0);
      m.applyMask(logits);
      if (logits[ids[s]!] === -Infinity) throw new Error(`token ${ids[s]} masked at step ${s}`);
      m.accept(ids[s]!);
    }
  }
  for (const m of matchers) m.poll(1000);
  const ms = performance.now() - t;
  const cpuS = cpuSeconds(cpu);
  for (const m of matchers) m.close();
  await client.close();
  return { msPerStep: ms / steps, cpuPerStep: (cpuS * 1000) / steps };
}

// 3. Through the engine.
function sampling(maxTokens: number, ignoreEos: boolean): SamplingParams {
  return {
    temperature: 1, topP: 1, topK: 0, minP: 0, seed: 1, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
    logitBias: new Map(), logprobs: null, promptLogprobs: null, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos,
  };
}

let nextId = 0;
async function decodeRun(engine: Engine, prompt: number[], numStreams: number, constrained: boolean): Promise<{ wallS: number; cpuS: number; tokens: number; firstTokenS: number }> {
  const requests: GenerateRequest[] = Array.from({ length: numStreams }, () => ({
    requestId: `s${nextId++}`,
    promptTokenIds: prompt,
    sampling: sampling(TOKENS, true),
    reportProgress: false,
    ...(constrained ? { constraint: constraint(ENDLESS) } : {}),
  }));
  const cpu = process.cpuUsage();
  const t = performance.now();
  let tokens = 0;
  let firstTokenS = 0;
  await Promise.all(
    requests.map(async (r) => {
      for await (const ev of engine.generate(r)) {
        if (ev.type === 'token') {
          if (tokens++ === 0) firstTokenS = (performance.now() - t) / 1000;
        }
        if (ev.type === 'done' && ev.finishReason !== 'length') throw new Error(`${r.requestId} ended with ${ev.finishReason}`);
      }
    }),
  );
  return { wallS: (performance.now() - t) / 1000, cpuS: cpuSeconds(cpu), tokens, firstTokenS };
}

const tokenizer = await TextTokenizer.load(DEFAULT_MODEL_DIR);
const engine = await Engine.start({
  modelDir: DEFAULT_MODEL_DIR,
  weightDtype: args.weights as WeightDtype,
  decodeIntraOpThreads: Number(args['decode-threads']),
  cacheDir: join(PACKAGE_ROOT, '.cache', 'models'),
});
const V = engine.config.vocabSize;
const eos = [...engine.config.eosTokenIds];

console.log(`\n## Compile time of a typical schema (load at start ${LOAD_AT_START})\n`);
const compileRows = [await compileTimes(DEFAULT_MODEL_DIR, V, eos)];
if (!args['skip-7b']) {
  const dir = join(PACKAGE_ROOT, 'test', 'fixtures', 'spikingbrain-7b');
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number; eos_token_id: number | number[] };
  compileRows.push(await compileTimes(dir, config.vocab_size, [config.eos_token_id].flat()));
}
table(['vocabulary (ids)', 'grammar worker start + vocabulary', 'compile, cold', 'compile, cached (mean of 5)', 'cold ÷ cached'], compileRows);

console.log(`\n## Mask + accept round trip, no model (${TOKENS} steps)\n`);
const roundRows: string[][] = [];
for (const n of STREAMS) {
  const r = await maskAcceptRoundTrip(tokenizer, V, eos, n);
  roundRows.push([String(n), `${r.msPerStep.toFixed(3)} ms`, `${(r.msPerStep / n).toFixed(3)} ms`, `${r.cpuPerStep.toFixed(3)} ms`]);
}
table(['matchers', 'wall per step', 'wall per matcher', 'CPU per step (all threads)'], roundRows);

console.log(`\n## Decode through the engine: ${TOKENS} tokens per stream, weights ${args.weights}, --decode-threads ${args['decode-threads']}\n`);
const prompt = await tokenizer.encode('<|im_start|>user\nGive me the records as JSON.<|im_end|>\n<|im_start|>assistant\n', { addSpecialTokens: false });
await decodeRun(engine, prompt, 2, true); // warm up: sessions, grammar worker, the ENDLESS grammar compiled
await decodeRun(engine, prompt, 2, false);
const rows: string[][] = [];
const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const n of STREAMS) {
  // Free and constrained runs alternate, REPEATS times each; medians per step (the load moves meanwhile).
  const frees: Awaited<ReturnType<typeof decodeRun>>[] = [];
  const helds: Awaited<ReturnType<typeof decodeRun>>[] = [];
  for (let r = 0; r < REPEATS; r++) {
    frees.push(await decodeRun(engine, prompt, n, false));
    helds.push(await decodeRun(engine, prompt, n, true));
  }
  const steps = TOKENS; // every stream decodes TOKENS tokens; a step decodes one token of each
  const freeMs = median(frees.map((f) => f.wallS * 1000)) / steps;
  const heldMs = median(helds.map((h) => h.wallS * 1000)) / steps;
  const freeCpu = median(frees.map((f) => f.cpuS * 1000)) / steps;
  const heldCpu = median(helds.map((h) => h.cpuS * 1000)) / steps;
  rows.push([
    String(n),
    `${((n * 1000) / freeMs).toFixed(0)} / ${((n * 1000) / heldMs).toFixed(0)}`,
    `${freeMs.toFixed(2)} / ${heldMs.toFixed(2)} ms`,
    `${(((heldMs - freeMs) / heldMs) * 100).toFixed(1)}%`,
    `${freeCpu.toFixed(2)} / ${heldCpu.toFixed(2)} ms`,
    `${(((heldCpu - freeCpu) / heldCpu) * 100).toFixed(1)}%`,
  ]);
}
table(['streams', 'tokens/s free / constrained', 'wall per step free / constrained', 'constraint share of wall', 'CPU per step free / constrained', 'constraint share of CPU'], rows);
console.log(`\nload at end: ${loadAverage()}`);
await engine.shutdown();
await tokenizer.close();
