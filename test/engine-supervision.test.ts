// The supervised Engine on a real worker and a real onnxruntime session, with faults injected through
// the test-only `faults` option (src/engine/faults.ts): what a failure takes down, what goes on, how a
// lost worker is restarted (and given up on), a hung step, and a shutdown that waits for a long step.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import { EngineUnavailableError } from '../src/engine/errors.ts';
import type { FaultKind, InjectedFault } from '../src/engine/faults.ts';
import type { EngineCondition, EngineStats, SamplingParams, TokenEvent } from '../src/engine/types.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';
import { greedy } from './helpers/sampling.ts';

const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-supervision-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const V = 64;
/** The sampling seed that triggers each fault. */
const SEED: Readonly<Record<FaultKind, number>> = {
  'throw-in-schedule': 101,
  'throw-in-execute': 102,
  'throw-in-complete': 103,
  exit: 104,
  uncaught: 105,
  hang: 106,
  delay: 107,
  oom: 108,
};
const DELAY_MS = 6000; // longer than the 5 s the engine used to give a step at shutdown
const FAULTS: InjectedFault[] = (Object.keys(SEED) as FaultKind[]).map((kind) => ({ seed: SEED[kind], kind, ...(kind === 'delay' ? { delayMs: DELAY_MS } : {}) }));

let modelDir: string;
beforeAll(() => {
  modelDir = makeRandomTinyCheckpoint(join(tmp, 'model'), { numLayers: 2, slidingWindow: 8, vocabSize: V, headDim: 8, numHeads: 2, seed: 5 }).dir;
});

let engine: Engine | undefined;
let logLines: string[] = [];
afterEach(async () => {
  await engine?.shutdown({ stepTimeoutMs: 1000 });
  engine = undefined;
});

async function start(opts: Partial<EngineOptions> = {}): Promise<Engine> {
  logLines = [];
  engine = await Engine.start(
    { modelDir, cacheDir: join(tmp, 'built'), intraOpThreads: 1, pageTokens: 4, prefillChunkTokens: 16, maxBatchedTokens: 32, kvPages: 256, faults: FAULTS, ...opts },
    (line) => logLines.push(line),
  );
  return engine;
}

let nextId = 0;
function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % V);
}

interface Outcome {
  readonly tokens: number[];
  readonly done: Extract<TokenEvent, { type: 'done' }> | null;
  readonly error: unknown;
}

/** Runs one request to its end; `onToken` sees each token as it comes. */
async function run(e: Engine, promptIds: readonly number[], sampling: SamplingParams, onToken?: (n: number) => void): Promise<Outcome> {
  const tokens: number[] = [];
  let done: Outcome['done'] = null;
  try {
    for await (const ev of e.generate({ requestId: `s-${nextId++}`, promptTokenIds: promptIds, sampling, reportProgress: false })) {
      if (ev.type === 'token') {
        tokens.push(ev.tokenId);
        onToken?.(tokens.length);
      }
      if (ev.type === 'done') done = ev;
    }
    return { tokens, done, error: null };
  } catch (error) {
    return { tokens, done, error };
  }
}

/** A request that is decoding (its first token is out) and runs until the test ends it. */
async function longRunning(e: Engine): Promise<{ outcome: Promise<Outcome> }> {
  let started!: () => void;
  const first = new Promise<void>((r) => (started = r));
  const outcome = run(e, prompt(6, 9), greedy(1_000_000), () => started());
  await Promise.race([first, outcome]);
  return { outcome };
}

/** Waits (polling; the deadline only stops a hung test) until the engine reports `condition`. */
async function until(e: Engine, condition: EngineCondition): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (e.health().condition !== condition) {
    if (Date.now() > deadline) throw new Error(`engine still ${e.health().condition}, expected ${condition}; log:\n${logLines.join('\n')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until an abort or a failure the worker applies after the current step is reflected in the stats. */
async function expectIdle(e: Engine): Promise<void> {
  const busy = (s: EngineStats): number => s.numRunning + s.numWaiting + s.kvPagesUsed + s.stateSlotsUsed;
  for (let i = 0; i < 400 && busy(e.stats()) > 0; i++) await new Promise((r) => setTimeout(r, 25));
  const s = e.stats();
  expect([s.numRunning, s.numWaiting, s.kvPagesUsed, s.stateSlotsUsed, s.stateBytesInUse]).toEqual([0, 0, 0, 0, 0]);
}

const faulty = (kind: FaultKind, maxTokens = 8): SamplingParams => greedy(maxTokens, { seed: SEED[kind] });

describe('a step that throws', () => {
  it('in the model run: that step\'s requests fail, a waiting request and the next one are served as before', async () => {
    const e = await start({ maxNumSeqs: 1 });
    const p = prompt(40, 1);
    const before = await run(e, p, greedy(12));
    expect(before.tokens).toHaveLength(12);

    const failing = run(e, prompt(20, 2), faulty('throw-in-execute'));
    const waiting = run(e, p, greedy(12)); // queued behind it (one sequence at a time): not in the failing step
    const f = await failing;
    expect(f.error).toBeNull();
    expect(f.done).toMatchObject({ finishReason: 'error' });
    expect(f.done?.errorMessage).toContain('injected fault: throw-in-execute');
    expect((await waiting).tokens).toEqual(before.tokens);
    expect((await run(e, p, greedy(12))).tokens).toEqual(before.tokens);
    expect(e.health()).toMatchObject({ condition: 'ready', restarts: 0 });
    await expectIdle(e);
  });

  it('while completing one request\'s chunk: only that request fails, the others of the step go on', async () => {
    const e = await start({ maxNumSeqs: 4 });
    const p = prompt(200, 3); // 13 prefill chunks of 16: still prefilling when the faulty request joins
    const alone = await run(e, p, greedy(10));
    const survivor = run(e, p.map((t) => (t + 1) % V), greedy(10));
    const aloneShifted = run(e, p.map((t) => (t + 1) % V), greedy(10));
    const f = await run(e, prompt(20, 4), faulty('throw-in-complete'));
    expect(f.done).toMatchObject({ finishReason: 'error' });
    const [s, a] = await Promise.all([survivor, aloneShifted]);
    expect(s.done?.finishReason).toBe('length');
    expect(s.tokens).toEqual(a.tokens);
    expect((await run(e, p, greedy(10))).tokens).toEqual(alone.tokens);
    expect(e.health()).toMatchObject({ condition: 'ready', restarts: 0 });
    await expectIdle(e);
  });

  it('in scheduling: the core cannot be trusted, so every request fails and the worker is restarted', async () => {
    const e = await start({ maxNumSeqs: 4 });
    const p = prompt(30, 5);
    const before = await run(e, p, greedy(12));
    const bystander = await longRunning(e);
    const f = await run(e, prompt(10, 6), faulty('throw-in-schedule'));
    // The failing request ends after the engine has left `ready`: readiness turned before any answer.
    expect(e.health().condition).toBe('restarting');
    expect(f.done).toMatchObject({ finishReason: 'error' });
    expect(f.done?.errorMessage).toContain('injected fault: throw-in-schedule');
    expect((await bystander.outcome).done).toMatchObject({ finishReason: 'error' });
    await expect(e.generate({ requestId: 'during-restart', promptTokenIds: p, sampling: greedy(1), reportProgress: false }).next()).rejects.toBeInstanceOf(EngineUnavailableError);
    await until(e, 'ready');
    expect(e.health().restarts).toBe(1);
    expect((await run(e, p, greedy(12))).tokens).toEqual(before.tokens);
    await expectIdle(e);
  });

  it('three model runs failing in a row: the model is taken for broken and the worker restarted', async () => {
    const e = await start();
    for (let i = 0; i < 2; i++) expect((await run(e, prompt(8, 7), faulty('throw-in-execute'))).done?.finishReason).toBe('error');
    expect(e.health()).toMatchObject({ condition: 'ready', restarts: 0 });
    expect((await run(e, prompt(8, 7), faulty('throw-in-execute'))).done?.finishReason).toBe('error');
    await until(e, 'ready');
    expect(e.health().restarts).toBe(1);
    expect(logLines.join('\n')).toContain('3 model runs in a row failed');
  });
});

describe('a lost worker', () => {
  it.each(['exit', 'uncaught', 'oom'] as const)('%s: fails the requests in flight, reports restarting at once, restarts and serves the same tokens', async (kind) => {
    const e = await start({ workerHeapMb: 256 });
    const p = prompt(30, 8);
    const before = await run(e, p, greedy(12));
    const bystander = await longRunning(e);
    const f = await run(e, prompt(10, 9), faulty(kind));
    expect(e.health().condition).toBe('restarting');
    expect(f.done ?? f.error).toBeTruthy();
    if (f.done !== null) expect(f.done.finishReason).toBe('error');
    expect((await bystander.outcome).done).toMatchObject({ finishReason: 'error' });
    expect(e.stats().numRunning).toBe(0);
    expect(e.health().lastFailure).toMatch({ exit: /exited \(code 70\)/, uncaught: /crashed: .*injected fault: uncaught/s, oom: /crashed: .*out of memory/is }[kind]);
    await until(e, 'ready');
    expect(e.health().restarts).toBe(1);
    expect((await run(e, p, greedy(12))).tokens).toEqual(before.tokens);
    await expectIdle(e);
  });

  it('a step that never returns: the step watchdog stops the worker and restarts it', async () => {
    const e = await start({ supervision: { stepTimeoutMs: 1000 } });
    const p = prompt(30, 10);
    const before = await run(e, p, greedy(12));
    const f = await run(e, prompt(10, 11), faulty('hang'));
    expect(f.done).toMatchObject({ finishReason: 'error' });
    expect(f.done?.errorMessage).toContain('the inference worker hangs');
    await until(e, 'ready');
    expect(e.health().restarts).toBe(1);
    expect((await run(e, p, greedy(12))).tokens).toEqual(before.tokens);
  });

  it('gives up after maxRestarts failures in the window: failed for good, requests refused', async () => {
    const e = await start({ supervision: { maxRestarts: 1, initialBackoffMs: 50 } });
    await run(e, prompt(10, 12), faulty('exit'));
    await until(e, 'ready');
    await run(e, prompt(10, 12), faulty('exit'));
    expect(e.health()).toMatchObject({ condition: 'failed', restarts: 1 });
    expect(logLines.join('\n')).toContain('not restarting it');
    await expect(e.generate({ requestId: 'after', promptTokenIds: [1, 2], sampling: greedy(1), reportProgress: false }).next()).rejects.toThrow(/could not be restarted/);
  });
});

describe('shutdown', () => {
  /** Starts a step of DELAY_MS beside a decoding stream; resolves once that step is in flight. */
  async function longStep(e: Engine): Promise<{ outcome: Promise<Outcome> }> {
    const bystander = await longRunning(e);
    void run(e, prompt(10, 13), faulty('delay'));
    while (!logLines.some((l) => l.includes('playing injected fault delay'))) await new Promise((r) => setTimeout(r, 10));
    return bystander;
  }

  it('waits for the step in flight, however long, within its allowance: the worker ends it and closes cleanly', async () => {
    const e = await start();
    const { outcome } = await longStep(e);
    await e.shutdown({ stepTimeoutMs: 30_000 });
    const o = await outcome;
    // The abort came from the worker after its step (real counts), not from the engine giving up on it.
    expect(o.done).toMatchObject({ finishReason: 'abort', promptTokens: 6 });
    expect(o.done?.completionTokens).toBeGreaterThan(0);
    expect(logLines.join('\n')).not.toContain('shutdown:');
  });

  it('stops the worker when the step outlasts the allowance', async () => {
    const e = await start();
    const { outcome } = await longStep(e);
    await e.shutdown({ stepTimeoutMs: 500 });
    expect((await outcome).done).toMatchObject({ finishReason: 'abort', promptTokens: 0 });
    expect(logLines.join('\n')).toContain('shutdown: the step in flight did not end within 0.5 s');
    expect(e.health().condition).toBe('closed');
  });
});
