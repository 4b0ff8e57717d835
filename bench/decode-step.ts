// Where one decode step of the serving path goes (issue 18): one request decoding through the real
// EngineCore (scheduler, cache pools, StepRunner gather/scatter, sampler) and Model, with its window
// full, for several configurations measured side by side in interleaved rounds (every case sees the
// same machine load). Per case: tokens/s, CPU ms per token, and how that CPU splits between Model.run
// (onnxruntime, the binding, our feeds) and the rest of the step (scheduling, gather/scatter,
// sampling): each round also replays one captured step input through Model.run alone as many times,
// and the rest is the difference (CPU time read per call would be off by a scheduler tick per read).
// Also: the fixed cost of one session.run on a one-node graph, and with --profile, onnxruntime's
// per-op profile of the first case's decode steps.
//
//   node --import tsx bench/decode-step.ts [--model DIR | --reference] [--cases float32:2,int8:1,int8:2:1]
//        [--streams 1[,4,16]] [--before DIR] [--steps 2000] [--rounds 10] [--profile]
//
// --streams: each case also runs with that many requests decoding at once (a decode batch of that
// many rows per step); tokens/s and CPU are per generated token.
//
// A case is weights:threads[:decodeThreads] (decodeThreads: a second session over the decode graph).
// --before DIR adds the same cases run by the Model, EngineCore and RequestState of another checkout
// (e.g. `git worktree add /tmp/before <commit>` with its node_modules): before and after in one run.
// Its cases are marked "before"; --before-cases picks which (default: the --cases list).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import type { EngineCore as EngineCoreType } from '../src/engine/engine-core.ts';
import type { ForwardInput, ForwardOutput } from '../src/engine/model/forward.ts';
import type { parseModelConfig as ParseModelConfig } from '../src/engine/model/config.ts';
import type { openCheckpoint as OpenCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import type { Model as ModelType } from '../src/engine/model/model.ts';
import type { randomCheckpoint as RandomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import type { WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { GraphBuilder } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import type { RequestState as RequestStateType } from '../src/engine/request-state.ts';
import type { SamplingParams } from '../src/engine/types.ts';
import { REFERENCE_CONFIG_JSON, cpuSeconds, loadAverage } from './common.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    reference: { type: 'boolean', default: false },
    cases: { type: 'string', default: 'float32:2,int8:1,int8:2:1' },
    streams: { type: 'string', default: '1' },
    before: { type: 'string' },
    'before-cases': { type: 'string' },
    steps: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '10' },
    profile: { type: 'boolean', default: false },
  },
});
const STEPS = Number(args.steps);
const ROUNDS = Number(args.rounds);
const LOAD_AT_START = loadAverage();
const REPO = resolve(import.meta.dirname, '..');

interface CaseSpec {
  readonly tree: 'this' | 'before';
  readonly weights: WeightDtype;
  readonly threads: number;
  readonly decodeThreads: number | undefined;
  /** Requests decoding at once. */
  readonly streams: number;
}

function parseCases(list: string, tree: CaseSpec['tree']): CaseSpec[] {
  return args.streams.split(',').map(Number).flatMap((streams) => parseCaseList(list, tree, streams));
}

function parseCaseList(list: string, tree: CaseSpec['tree'], streams: number): CaseSpec[] {
  if (!Number.isInteger(streams) || streams < 1) throw new Error('--streams needs positive integers');
  return list.split(',').map((c) => {
    const [w, t, dt] = c.split(':');
    if (w !== 'float32' && w !== 'int8' && w !== 'int4' && w !== 'float16') throw new Error(`case ${c}: weights must be float32, int8, int4 or float16`);
    const threads = Number(t ?? '1');
    const decodeThreads = dt === undefined ? undefined : Number(dt);
    if (!Number.isInteger(threads) || threads < 1 || (decodeThreads !== undefined && (!Number.isInteger(decodeThreads) || decodeThreads < 1))) throw new Error(`case ${c}: bad thread count`);
    return { tree, weights: w, threads, decodeThreads, streams };
  });
}

/** The modules a case needs, from this checkout or the --before one. */
interface Tree {
  readonly Model: typeof ModelType;
  readonly EngineCore: typeof EngineCoreType;
  readonly RequestState: typeof RequestStateType;
  readonly openCheckpoint: typeof OpenCheckpoint;
  readonly randomCheckpoint: typeof RandomCheckpoint;
  readonly parseModelConfig: typeof ParseModelConfig;
  readonly cacheDir: string;
}

async function loadTree(root: string): Promise<Tree> {
  const m = (p: string): Promise<Record<string, unknown>> => import(join(root, p)) as Promise<Record<string, unknown>>;
  const [model, core, req, hf, rnd, cfg] = await Promise.all([
    m('src/engine/model/model.ts'),
    m('src/engine/engine-core.ts'),
    m('src/engine/request-state.ts'),
    m('src/engine/model/hf-checkpoint.ts'),
    m('src/engine/model/random-checkpoint.ts'),
    m('src/engine/model/config.ts'),
  ]);
  return {
    Model: model['Model'] as Tree['Model'],
    EngineCore: core['EngineCore'] as Tree['EngineCore'],
    RequestState: req['RequestState'] as Tree['RequestState'],
    openCheckpoint: hf['openCheckpoint'] as Tree['openCheckpoint'],
    randomCheckpoint: rnd['randomCheckpoint'] as Tree['randomCheckpoint'],
    parseModelConfig: cfg['parseModelConfig'] as Tree['parseModelConfig'],
    cacheDir: join(root, '.cache', 'models'),
  };
}

function sampling(maxTokens: number): SamplingParams {
  return {
    temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, presencePenalty: 0, frequencyPenalty: 0,
    repetitionPenalty: 1, logitBias: new Map(), logprobs: null, promptLogprobs: null, maxTokens,
    minTokens: 0, stopTokenIds: [], ignoreEos: true,
  };
}

/** One configuration: its model, an engine core over a timing wrapper, and what was measured. */
interface Case {
  readonly spec: CaseSpec;
  readonly model: ModelType;
  readonly core: EngineCoreType;
  wallMs: number;
  cpuMs: number;
  /** CPU ms of the Model.run replays (as many as steps). */
  runCpuMs: number;
  steps: number;
  /** A copy of one step's input, replayed through Model.run alone. */
  captured: ForwardInput | null;
  /** CPU ms per token of each round, for the median. */
  readonly roundCpuMs: number[];
}

const label = (s: CaseSpec): string =>
  `${s.tree === 'before' ? 'before: ' : ''}${s.weights}, ${s.threads} thread${s.threads === 1 ? '' : 's'}${s.decodeThreads !== undefined ? `, decode session ${s.decodeThreads}` : ''}${s.streams > 1 ? `, ${s.streams} streams` : ''}`;

async function makeCase(spec: CaseSpec, tree: Tree, profileDir: string | null): Promise<Case> {
  const ckpt = args.reference
    ? tree.randomCheckpoint(tree.parseModelConfig(REFERENCE_CONFIG_JSON), { seed: 1, gkLayout: 'lowrank' })
    : tree.openCheckpoint(resolve(args.model ?? join(REPO, 'models', 'spikingbrain-tiny')));
  const model = await tree.Model.load(ckpt, {
    cacheDir: tree.cacheDir,
    intraOpThreads: spec.threads,
    weightDtype: spec.weights,
    ...(spec.decodeThreads !== undefined ? { decodeIntraOpThreads: spec.decodeThreads } : {}),
    ...(profileDir !== null ? { profileFilePrefix: join(profileDir, 'decode') } : {}),
  });
  const c: Case = { spec, model, core: undefined as unknown as EngineCoreType, wallMs: 0, cpuMs: 0, runCpuMs: 0, steps: 0, captured: null, roundCpuMs: [] };
  let capture = false;
  const capturing = {
    async run(input: ForwardInput): Promise<ForwardOutput> {
      if (capture) {
        // Field by field (the before tree's ForwardInput names its states differently): typed arrays copied.
        const copy = (v: unknown): unknown => (ArrayBuffer.isView(v) ? (v as Float32Array).slice() : Array.isArray(v) ? v.map(copy) : v);
        c.captured = Object.fromEntries(Object.entries(input).map(([k, v]) => [k, copy(v)])) as unknown as ForwardInput;
        capture = false;
      }
      return model.run(input);
    },
  };
  const core = new tree.EngineCore(capturing, model.config, { prefixCacheBytes: 0, maxNumSeqs: Math.max(64, spec.streams) }, () => {});
  Object.assign(c, { core });
  // Requests that decode for the whole run, their windows full from the start (prompts of W + 64).
  const V = model.config.vocabSize;
  const promptTokens = (model.windowTokens ?? 1024) + 64;
  for (let r = 0; r < spec.streams; r++) {
    const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 11 + r * 131) % V);
    core.submit({ requestId: `decode-${r}`, promptTokenIds: prompt, sampling: sampling(1 << 22), reportProgress: false });
  }
  for (let i = 0; i < 64 + 4 * spec.streams && core.hasWork; i++) await core.step(); // prefills + warm-up decodes
  capture = true;
  await core.step();
  if (c.captured === null || c.captured.chunkTokens !== 1 || c.captured.batchSize !== spec.streams) throw new Error(`${label(spec)}: no decode step of every stream was captured`);
  return c;
}

async function stepRound(c: Case, n: number): Promise<void> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await c.core.step();
  const cpu = cpuSeconds(c0) * 1000;
  c.wallMs += performance.now() - t0;
  c.cpuMs += cpu;
  c.steps += n;
  c.roundCpuMs.push(cpu / (n * c.spec.streams));
  const input = c.captured!;
  const r0 = process.cpuUsage();
  for (let i = 0; i < n; i++) await c.model.run(input);
  c.runCpuMs += cpuSeconds(r0) * 1000;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** µs per session.run of a one-node graph (Identity on 4 floats): the fixed cost of a call. */
async function emptyRunCost(dir: string): Promise<{ wallUs: number; cpuUs: number }> {
  const g = new GraphBuilder('empty.onnx.data');
  const x = g.input('x', DataType.FLOAT, [4]);
  g.output('y', g.op('Identity', [x]), DataType.FLOAT, [4]);
  g.writeExternalData(join(dir, 'empty.onnx.data'));
  writeFileSync(join(dir, 'empty.onnx'), encodeModel(g.toModel('empty', new Map([['', 17]]))));
  const s = await ort.InferenceSession.create(join(dir, 'empty.onnx'), { intraOpNumThreads: 1 });
  const feeds = { x: new ort.Tensor('float32', new Float32Array(4), [4]) };
  for (let i = 0; i < 200; i++) await s.run(feeds);
  const n = 5000;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await s.run(feeds);
  const r = { wallUs: ((performance.now() - t0) * 1000) / n, cpuUs: (cpuSeconds(c0) * 1e6) / n };
  await s.release();
  return r;
}

interface TraceEvent {
  readonly cat: string;
  readonly name: string;
  readonly ts: number;
  readonly dur: number;
  readonly args?: { readonly op_name?: string };
}

function printProfile(path: string, steps: number): void {
  const events = JSON.parse(readFileSync(path, 'utf8')) as TraceEvent[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').slice(-steps);
  const firstTs = runs[0]?.ts ?? 0;
  const kernels = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && e.ts >= firstTs);
  const n = runs.length;
  const byOp = new Map<string, { us: number; nodes: number }>();
  for (const e of kernels) {
    const op = e.args?.op_name ?? '?';
    const o = byOp.get(op) ?? { us: 0, nodes: 0 };
    byOp.set(op, { us: o.us + e.dur / n, nodes: o.nodes + 1 / n });
  }
  const kernelUs = [...byOp.values()].reduce((a, o) => a + o.us, 0);
  const runUs = runs.reduce((a, e) => a + e.dur, 0) / n;
  const nodes = [...byOp.values()].reduce((a, o) => a + o.nodes, 0);
  console.log(`\nonnxruntime profile (${path.split('/').pop()}), last ${n} runs: model_run ${runUs.toFixed(0)} µs, kernels ${kernelUs.toFixed(0)} µs in ${nodes.toFixed(0)} nodes (profiling roughly doubles small ops: read the shares)`);
  console.log('| op type | nodes/step | µs/step | share of kernel time |');
  console.log('|---|---|---|---|');
  for (const [op, o] of [...byOp].sort((a, b) => b[1].us - a[1].us)) console.log(`| ${op} | ${o.nodes.toFixed(0)} | ${o.us.toFixed(0)} | ${((100 * o.us) / kernelUs).toFixed(1)}% |`);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'spikeserve-decode-step-'));
  try {
    const here = await loadTree(REPO);
    const before = args.before !== undefined ? await loadTree(resolve(args.before)) : null;
    const specs = [
      ...(before !== null ? parseCases(args['before-cases'] ?? args.cases, 'before') : []),
      ...parseCases(args.cases, 'this'),
    ];
    const cases: Case[] = [];
    for (const [i, spec] of specs.entries()) {
      cases.push(await makeCase(spec, spec.tree === 'before' ? before! : here, args.profile && i === specs.length - 1 ? dir : null));
    }
    const empty = await emptyRunCost(dir);
    const perRound = Math.max(1, Math.round(STEPS / ROUNDS));
    for (let r = 0; r < ROUNDS; r++) for (const c of cases) await stepRound(c, perRound);

    const model = args.reference ? 'reference size, random weights (W = 1024)' : `${args.model ?? 'models/spikingbrain-tiny'} (W = ${cases[0]?.model.windowTokens ?? '?'})`;
    console.log(`\ndecode step of the serving path — ${model}; onnxruntime ${ort.env.versions.common}; ${STEPS} steps per case in ${ROUNDS} interleaved rounds`);
    console.log(`load average at start ${LOAD_AT_START}, at end ${loadAverage()}; GLIBC_TUNABLES=${process.env['GLIBC_TUNABLES'] ?? '(unset)'}`);
    console.log(`session.run of a one-node graph: ${empty.wallUs.toFixed(1)} µs wall, ${empty.cpuUs.toFixed(1)} µs CPU per call`);
    console.log('');
    console.log('| case | tok/s | CPU ms/token (all) | median of rounds | Model.run alone | rest of the step | vs first case (CPU) |');
    console.log('|---|---|---|---|---|---|---|');
    const base = cases[0];
    const perToken = (x: Case, ms: number): number => ms / (x.steps * x.spec.streams);
    for (const c of cases) {
      const cpu = perToken(c, c.cpuMs);
      const run = perToken(c, c.runCpuMs);
      const ratio = base === undefined ? 1 : perToken(base, base.cpuMs) / cpu;
      console.log(`| ${label(c.spec)} | ${((1000 * c.steps * c.spec.streams) / c.wallMs).toFixed(0)} | ${cpu.toFixed(3)} | ${median(c.roundCpuMs).toFixed(3)} | ${run.toFixed(3)} | ${(cpu - run).toFixed(3)} | ${ratio.toFixed(2)}× |`);
    }
    if (args.profile) {
      const last = cases[cases.length - 1]!;
      const files = last.model.endProfiling() as unknown as { step: string; decode: string | null };
      printProfile(files.decode ?? files.step, Math.min(500, last.steps));
    }
    for (const c of cases) await c.model.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
