// Engine end to end with real onnxruntime in the worker thread, on random tiny checkpoints written to disk:
// tokens against the float64 reference, batched == one at a time, abort frees everything, rejections,
// and a ≥256K-token prefill that does not stop another client's stream.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import { EngineUnavailableError, ModelLoadError, QueueFullError, RequestRejectedError } from '../src/engine/errors.ts';
import type { EngineStats, GenerateRequest, SamplingParams, TokenEvent } from '../src/engine/types.ts';
import { makeRandomTinyCheckpoint, type TinyCheckpoint, type TinyCheckpointOptions } from './helpers/checkpoint-writer.ts';
import { ReferenceSession } from './helpers/reference-forward.ts';
import { greedy } from './helpers/sampling.ts';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { IDENTITY_CACHE_FILE } from '../src/engine/model/weights-identity.ts';
import { collect } from './helpers/engine-events.ts';

const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-engine-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let nextId = 0;
function request(prompt: readonly number[], sampling: SamplingParams, reportProgress = false): GenerateRequest {
  return { requestId: `req-${nextId++}`, promptTokenIds: prompt, sampling, reportProgress };
}

function prompt(length: number, seed: number, vocab: number): number[] {
  return Array.from({ length }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % vocab);
}

function lastDone(events: readonly TokenEvent[]): Extract<TokenEvent, { type: 'done' }> {
  const e = events[events.length - 1];
  if (e?.type !== 'done') throw new Error('stream did not end with done');
  return e;
}

function expectIdle(stats: EngineStats): void {
  expect([stats.numRunning, stats.numWaiting, stats.kvPagesUsed, stats.stateSlotsUsed, stats.stateBytesInUse]).toEqual([0, 0, 0, 0, 0]);
}

/**
 * Liveness: an abort posted by a stream's early exit is applied by the worker shortly after, and a request
 * that ended normally frees its memory one step after its `done` (it folds its last token into an exact
 * prefix snapshot first).
 */
async function waitIdle(engine: Engine): Promise<void> {
  const busy = (s: EngineStats): boolean => s.numRunning + s.numWaiting + s.kvPagesUsed + s.stateSlotsUsed > 0;
  for (let i = 0; i < 200 && busy(engine.stats()); i++) await new Promise((r) => setTimeout(r, 25));
  expectIdle(engine.stats());
}

async function startEngine(name: string, ckptOpts: TinyCheckpointOptions, opts: Partial<EngineOptions>): Promise<{ engine: Engine; ckpt: TinyCheckpoint }> {
  const ckpt = makeRandomTinyCheckpoint(join(tmp, name), ckptOpts);
  const engine = await Engine.start({ modelDir: ckpt.dir, cacheDir: join(tmp, 'built'), intraOpThreads: 1, ...opts });
  return { engine, ckpt };
}

describe('Engine on a tiny hybrid model (W = 8, pages of 4 tokens)', () => {
  let engine: Engine;
  let ckpt: TinyCheckpoint;
  const V = 96;

  beforeAll(async () => {
    ({ engine, ckpt } = await startEngine('hybrid', { numLayers: 4, slidingWindow: 8, vocabSize: V, seed: 3 }, {
      pageTokens: 4, prefillChunkTokens: 16, maxBatchedTokens: 40, maxNumSeqs: 16,
    }));
  });
  afterAll(async () => engine.shutdown());
  afterEach(async () => waitIdle(engine));

  it('generates the float64 reference model\'s greedy tokens (chunked prefill, paged window)', async () => {
    const p = prompt(45, 1, V);
    const { tokens, events } = await collect(engine, request(p, greedy(12)));
    expect(tokens).toHaveLength(12);
    expect(lastDone(events)).toMatchObject({ finishReason: 'length', promptTokens: 45, completionTokens: 12 });
    // Teacher-forced reference: each engine token must be the reference argmax (or within 1e-3 of it).
    const ref = new ReferenceSession(openCheckpoint(ckpt.dir));
    let logits = new Float64Array(0);
    for (const t of p) logits = ref.step(t);
    for (const t of tokens) {
      const max = Math.max(...logits);
      expect(max - logits[t]!).toBeLessThan(1e-3);
      logits = ref.step(t);
    }
  });

  it('16 concurrent requests of mixed lengths give exactly the tokens they give one at a time', async () => {
    const reqs = Array.from({ length: 16 }, (_, i) => ({ p: prompt(1 + ((i * 37) % 120), i, V), max: 4 + ((i * 5) % 17) }));
    const alone: number[][] = [];
    for (const r of reqs) alone.push((await collect(engine, request(r.p, greedy(r.max)))).tokens);
    const together = await Promise.all(reqs.map((r) => collect(engine, request(r.p, greedy(r.max)))));
    expect(together.map((t) => t.tokens)).toEqual(alone);
    for (let i = 0; i < reqs.length; i++) expect(alone[i]).toHaveLength(reqs[i]!.max);
  });

  it('resumes from a prefix snapshot: cachedTokens > 0 and the same tokens as the reference', async () => {
    const doc = prompt(150, 50, V); // seed not used by other tests: no shared prefix
    const first = await collect(engine, request(doc, greedy(6)));
    expect(lastDone(first.events).cachedTokens).toBe(0);
    const again = await collect(engine, request(doc, greedy(6)));
    expect(lastDone(again.events).cachedTokens).toBe(149); // an exact snapshot one token before the end
    expect(again.tokens).toEqual(first.tokens);
    // The next turn of the conversation resumes where the previous one ended: the document and all 6 tokens.
    const turn = [...doc, ...first.tokens, ...prompt(37, 51, V)];
    const next = await collect(engine, request(turn, greedy(8)));
    expect(lastDone(next.events).cachedTokens).toBe(156);
    const ref = new ReferenceSession(openCheckpoint(ckpt.dir));
    let logits = new Float64Array(0);
    for (const t of turn) logits = ref.step(t);
    for (const t of next.tokens) {
      expect(Math.max(...logits) - logits[t]!).toBeLessThan(1e-3);
      logits = ref.step(t);
    }
    expect(engine.stats().prefixCacheBytes).toBeGreaterThan(0);
  });

  it('with a shared-prefix hint also snapshots the document: another question resumes from it', async () => {
    const doc = prompt(150, 60, V);
    const ask = (question: number[], hint?: number): GenerateRequest => ({
      ...request([...doc, ...question], greedy(3)),
      ...(hint !== undefined ? { sharedPrefixTokens: hint } : {}),
    });
    // Without the hint the only snapshot sits inside the first question (page 4·42 = 168 > 150).
    expect(lastDone((await collect(engine, ask(prompt(25, 61, V)))).events).cachedTokens).toBe(0);
    expect(lastDone((await collect(engine, ask(prompt(25, 62, V)))).events).cachedTokens).toBe(0);
    // With it, the document's last whole page (148) is snapshotted too.
    const doc2 = prompt(150, 63, V);
    const first = await collect(engine, { ...request([...doc2, ...prompt(25, 64, V)], greedy(3)), sharedPrefixTokens: 150 });
    expect(lastDone(first.events).cachedTokens).toBe(0);
    const other = await collect(engine, { ...request([...doc2, ...prompt(31, 65, V)], greedy(3)), sharedPrefixTokens: 150 });
    expect(lastDone(other.events).cachedTokens).toBe(148);
    // Resuming changes nothing: the same tokens as computing the whole prompt (the reference's argmax).
    const ref = new ReferenceSession(openCheckpoint(ckpt.dir));
    let logits = new Float64Array(0);
    for (const t of [...doc2, ...prompt(31, 65, V)]) logits = ref.step(t);
    for (const t of other.tokens) {
      expect(Math.max(...logits) - logits[t]!).toBeLessThan(1e-3);
      logits = ref.step(t);
    }
  });

  it('stops on a stop token without emitting it and counts it as generated', async () => {
    const p = prompt(20, 9, V);
    const { tokens } = await collect(engine, request(p, greedy(6)));
    const stopAt = tokens[3]!;
    const first = tokens.indexOf(stopAt);
    const { tokens: stopped, events } = await collect(engine, request(p, greedy(6, { stopTokenIds: [stopAt] })));
    expect(stopped).toEqual(tokens.slice(0, first));
    expect(lastDone(events)).toMatchObject({ finishReason: 'stop', stopTokenId: stopAt, completionTokens: first + 1 });
  });

  it('returns prompt logprobs that match the reference, before the first token', async () => {
    const p = prompt(30, 4, V);
    const { events } = await collect(engine, request(p, greedy(2, { promptLogprobs: 2, logprobs: 1 })));
    expect(events[0]?.type).toBe('prompt_logprobs');
    const entries = events[0]?.type === 'prompt_logprobs' ? events[0].entries : [];
    expect(entries).toHaveLength(30);
    expect(entries[0]).toBeNull();
    const ref = new ReferenceSession(openCheckpoint(ckpt.dir));
    for (let i = 0; i + 1 < p.length; i++) {
      const logits = ref.step(p[i]!);
      const m = Math.max(...logits);
      const lse = m + Math.log(logits.reduce((s, x) => s + Math.exp(x - m), 0));
      const e = entries[i + 1]!;
      expect(e.tokenId).toBe(p[i + 1]);
      expect(Math.abs(e.logprob - (logits[p[i + 1]!]! - lse))).toBeLessThan(1e-3);
      expect(e.top).toHaveLength(2);
    }
    const tok = events.find((e) => e.type === 'token');
    expect(tok?.type === 'token' && tok.logprob !== undefined && tok.top?.length === 1).toBe(true);
  });

  it('abort mid-stream (signal, early exit, abort()) ends with done/abort and frees everything', async () => {
    const ac = new AbortController();
    const events: TokenEvent[] = [];
    for await (const e of engine.generate(request(prompt(10, 5, V), greedy(10_000)), ac.signal)) {
      events.push(e);
      if (events.length === 3) ac.abort();
    }
    expect(lastDone(events).finishReason).toBe('abort');
    expect(events.filter((e) => e.type === 'token').length).toBeGreaterThanOrEqual(3);
    expectIdle(engine.stats()); // stats arrive with the done event

    // Leaving the loop early aborts the request.
    let n = 0;
    for await (const e of engine.generate(request(prompt(10, 6, V), greedy(10_000)))) if (e.type === 'token' && ++n === 2) break;
    await waitIdle(engine);

    // Abort by id while the prompt is still being prefilled (a long prompt: 1250 chunks; the abort
    // message is queued right behind the submission and handled after the first step).
    const long = request(prompt(20_000, 7, V), greedy(5), true);
    const seen: TokenEvent[] = [];
    const it = engine.generate(long);
    const first = it.next();
    engine.abort(long.requestId);
    for (let r = await first; !r.done; r = await it.next()) seen.push(r.value);
    expect(lastDone(seen).finishReason).toBe('abort');
    expect(seen.some((e) => e.type === 'token')).toBe(false);

    // A signal aborted before the call.
    const pre = new AbortController();
    pre.abort();
    const { events: ev } = await collect(engine, request(prompt(5, 8, V), greedy(50)), pre.signal);
    expect(lastDone(ev).finishReason).toBe('abort');
  });

  it('under random concurrent aborts, the survivors still get their one-at-a-time tokens and everything is freed', async () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const reqs = Array.from({ length: 24 }, (_, i) => ({
      p: prompt(1 + rand(300), 100 + i, V),
      max: 1 + rand(20),
      abortAfter: rand(3) === 0 ? rand(6) : null, // events before the abort, for a third of them
    }));
    const survivors = reqs.filter((r) => r.abortAfter === null);
    const alone = [];
    for (const r of survivors) alone.push((await collect(engine, request(r.p, greedy(r.max)))).tokens);
    const runs = reqs.map(async (r) => {
      const ac = new AbortController();
      const tokens: number[] = [];
      let events = 0;
      let last: TokenEvent | undefined;
      for await (const e of engine.generate(request(r.p, greedy(r.max), true), ac.signal)) {
        if (e.type === 'token') tokens.push(e.tokenId);
        if (r.abortAfter !== null && ++events > r.abortAfter) ac.abort();
        last = e;
      }
      return { tokens, last };
    });
    const results = await Promise.all(runs);
    expect(results.filter((_, i) => reqs[i]!.abortAfter === null).map((r) => r.tokens)).toEqual(alone);
    for (const r of results) expect(r.last?.type).toBe('done');
    await waitIdle(engine);
  });

  it('rejects what can never fit before the first event', async () => {
    const tooLong = engine.generate(request(prompt(10, 1, V), greedy(engine.maxModelLen)));
    await expect(tooLong.next()).rejects.toBeInstanceOf(RequestRejectedError);
    const badToken = engine.generate(request([1, 2, V], greedy(1)));
    await expect(badToken.next()).rejects.toThrow(/vocabulary/);
  });
});

describe('Engine on a full-attention model', () => {
  it('matches the reference and refuses what exceeds the whole pool', async () => {
    const V = 64;
    const { engine, ckpt } = await startEngine('full', { numLayers: 2, slidingWindow: null, vocabSize: V, headDim: 8, numHeads: 2 }, {
      pageTokens: 4, kvPages: 40, prefillChunkTokens: 16, maxBatchedTokens: 32,
    });
    try {
      expect(engine.maxModelLen).toBe(160); // 40 pages × 4 tokens
      const p = prompt(70, 60, V);
      const reqs = [p, prompt(20, 61, V), prompt(33, 62, V)].map((x) => collect(engine, request(x, greedy(10))));
      const tokens = (await Promise.all(reqs))[0]!.tokens;
      const ref = new ReferenceSession(openCheckpoint(ckpt.dir));
      let logits = new Float64Array(0);
      for (const t of p) logits = ref.step(t);
      for (const t of tokens) {
        expect(Math.max(...logits) - logits[t]!).toBeLessThan(1e-3);
        logits = ref.step(t);
      }
      await expect(engine.generate(request(prompt(150, 63, V), greedy(11))).next()).rejects.toBeInstanceOf(RequestRejectedError);
      await waitIdle(engine);
    } finally {
      await engine.shutdown();
    }
  });
});

describe('Engine on a full-attention model without max_tokens (lazy pages, preemption)', () => {
  const V = 64;
  const chatPrompts = Array.from({ length: 8 }, (_, i) => prompt(10 + i, 70 + i, V));

  it('8 chats that may each grow to the whole context all start at once', async () => {
    const { engine } = await startEngine('full-lazy', { numLayers: 2, slidingWindow: null, vocabSize: V, headDim: 8, numHeads: 2, seed: 5 }, {
      pageTokens: 4, kvPages: 200, prefillChunkTokens: 16, maxBatchedTokens: 128, maxNumSeqs: 8,
    });
    try {
      const order: string[] = [];
      const runs = chatPrompts.map(async (p, i) => {
        let first = true;
        // max_tokens: the rest of the context, as a chat without max_tokens gets.
        for await (const e of engine.generate(request(p, greedy(engine.maxModelLen - p.length)))) {
          if (e.type === 'token' && first) {
            order.push(`first-${i}`);
            first = false;
          }
          if (e.type === 'token' && order.filter((x) => x.startsWith('first')).length === 8) break; // enough: all started
          if (e.type === 'done') order.push(`done-${i}`);
        }
      });
      await Promise.all(runs);
      // Every chat got its first token before any chat ended: none waited for another's reservation.
      expect(order.slice(0, 8).every((x) => x.startsWith('first-'))).toBe(true);
      await waitIdle(engine);
    } finally {
      await engine.shutdown();
    }
  });

  // A full-attention gla_swa model, and Qwen3.5 (Gated DeltaNet layers keep a conv state and a
  // delta-rule state that a preempted request must rebuild exactly).
  const smallPools: { name: string; ckpt: TinyCheckpointOptions }[] = [
    { name: 'full attention', ckpt: { numLayers: 2, slidingWindow: null, vocabSize: V, headDim: 8, numHeads: 2, seed: 5 } },
    { name: 'Qwen3.5 (GDN + gated attention)', ckpt: { modelType: 'qwen3_5', numLayers: 4, vocabSize: V, seed: 5 } },
  ];
  it.each(smallPools)('a pool too small for all of them preempts, and every chat still gets its greedy tokens as alone ($name)', async ({ name, ckpt }) => {
    // 24 pages × 4 tokens = 96 tokens of KV; 8 chats of 10–17 + 24 tokens need ~300.
    const { engine } = await startEngine(`small-pool-${name.split(' ')[0]}`, ckpt, {
      pageTokens: 4, kvPages: 24, prefillChunkTokens: 16, maxBatchedTokens: 64, maxNumSeqs: 8, prefixCacheBytes: 0,
    });
    try {
      const alone: number[][] = [];
      for (const p of chatPrompts) alone.push((await collect(engine, request(p, greedy(24)))).tokens);
      expect(engine.stats().numPreemptions).toBe(0);
      const together = await Promise.all(chatPrompts.map((p) => collect(engine, request(p, greedy(24)))));
      expect(together.map((r) => r.tokens)).toEqual(alone);
      expect(engine.stats().numPreemptions).toBeGreaterThan(0);
      await waitIdle(engine);
    } finally {
      await engine.shutdown();
    }
  });
});

describe('Engine lifecycle', () => {
  it('rejects start with ModelLoadError for a directory without a checkpoint', async () => {
    await expect(Engine.start({ modelDir: join(tmp, 'nothing-here'), cacheDir: join(tmp, 'built') })).rejects.toBeInstanceOf(ModelLoadError);
  });

  it('answers EngineUnavailableError after shutdown, and shutdown ends open streams', async () => {
    const { engine } = await startEngine('lifecycle', { numLayers: 2, slidingWindow: 8, vocabSize: 64, headDim: 8, numHeads: 2 }, {});
    const open = collect(engine, request([1, 2, 3], greedy(100_000)));
    await new Promise((r) => setTimeout(r, 50));
    await engine.shutdown();
    expect(lastDone((await open).events).finishReason).toBe('abort');
    await expect(engine.generate(request([1], greedy(1))).next()).rejects.toBeInstanceOf(EngineUnavailableError);
    expectIdle(engine.stats());
  });
});

describe('Engine admission', () => {
  it('waits for a free slot, then answers QueueFullError when the queue is full', async () => {
    const { engine } = await startEngine('queue', { numLayers: 2, slidingWindow: 8, vocabSize: 64, headDim: 8, numHeads: 2 }, {
      maxNumSeqs: 1, maxQueue: 1, pageTokens: 4, prefillChunkTokens: 8, maxBatchedTokens: 16,
    });
    try {
      const running = engine.generate(request([1, 2, 3], greedy(400)));
      const first = await running.next(); // admitted and decoding
      expect(first.value?.type).toBe('token');
      const waiting = collect(engine, request([4, 5], greedy(3)));
      await new Promise((r) => setTimeout(r, 50)); // let the worker queue it
      const third = engine.generate(request([6], greedy(3)));
      await expect(third.next()).rejects.toBeInstanceOf(QueueFullError);
      await running.return(undefined); // client gone → abort → the waiting one runs
      const w = await waiting;
      expect(w.tokens).toHaveLength(3);
      await waitIdle(engine);
    } finally {
      await engine.shutdown();
    }
  });
});

describe('Engine during a ≥256K-token prefill', () => {
  it('keeps streaming tokens to another client while the long prompt is prefilled', async () => {
    const V = 64;
    const { engine } = await startEngine('long', { numLayers: 2, numHeads: 2, kvRatio: 1, headDim: 16, slidingWindow: 32, vocabSize: V }, {
      pageTokens: 16, prefillChunkTokens: 1024, maxBatchedTokens: 1024, maxNumSeqs: 4,
    });
    try {
      const LONG = 262_144;
      const longReq = request(prompt(LONG, 2, V), greedy(1), true);
      const longEvents: (TokenEvent & { at: number })[] = [];
      const started = new Promise<void>((resolveStarted) => {
        void (async () => {
          for await (const e of engine.generate(longReq)) {
            longEvents.push({ ...e, at: performance.now() });
            if (e.type === 'progress') resolveStarted();
          }
          resolveStarted();
        })();
      });
      await started; // first progress event: the long prefill is under way
      const shortTimes: number[] = [];
      for await (const e of engine.generate(request(prompt(20, 3, V), greedy(20)))) if (e.type === 'token') shortTimes.push(performance.now());
      expect(shortTimes).toHaveLength(20);
      while (longEvents[longEvents.length - 1]?.type !== 'done') await new Promise((r) => setTimeout(r, 20));
      const firstLongToken = longEvents.find((e) => e.type === 'token');
      expect(firstLongToken).toBeDefined();
      // All 20 short tokens arrived while the long prompt was still being prefilled.
      expect(shortTimes[19]!).toBeLessThan(firstLongToken!.at);
      const done = lastDone(longEvents);
      expect(done).toMatchObject({ finishReason: 'length', promptTokens: LONG, completionTokens: 1 });
      const progress = longEvents.filter((e) => e.type === 'progress');
      expect(progress.length).toBeGreaterThan(0);
      await waitIdle(engine);
    } finally {
      await engine.shutdown();
    }
  });
});

describe('Engine with int8 weights', () => {
  it('builds the int8 graph in the worker and generates from it', async () => {
    const cacheDir = join(tmp, 'built-int8');
    const ckpt = makeRandomTinyCheckpoint(join(tmp, 'int8'), { numLayers: 2, slidingWindow: 8, seed: 9 });
    const engine = await Engine.start({ modelDir: ckpt.dir, cacheDir, intraOpThreads: 1, weightDtype: 'int8' });
    try {
      expect(readdirSync(cacheDir).filter((d) => !d.includes('.tmp-') && d !== IDENTITY_CACHE_FILE)).toEqual([expect.stringMatching(/-int8$/)]);
      const { tokens, events } = await collect(engine, request(prompt(20, 4, ckpt.config.vocabSize), greedy(5)));
      expect(tokens).toHaveLength(5);
      expect(lastDone(events)).toMatchObject({ finishReason: 'length', completionTokens: 5 });
    } finally {
      await engine.shutdown();
    }
  });
});

describe('Engine with a decode session (--decode-threads)', () => {
  it('gives the same greedy tokens as one session, for 1 stream and for a batch', async () => {
    const ckpt = makeRandomTinyCheckpoint(join(tmp, 'decode-session'), { numLayers: 4, slidingWindow: 8, seed: 12 });
    const V = ckpt.config.vocabSize;
    const prompts = [prompt(30, 1, V), prompt(12, 2, V), prompt(45, 3, V), prompt(7, 4, V), prompt(20, 5, V), prompt(9, 6, V)];
    const run = async (opts: Partial<EngineOptions>): Promise<number[][]> => {
      const engine = await Engine.start({ modelDir: ckpt.dir, cacheDir: join(tmp, 'built'), intraOpThreads: 2, ...opts });
      try {
        const alone = (await collect(engine, request(prompts[0]!, greedy(10)))).tokens;
        // Six at once: decode steps of 6 tokens use the main session, the tail of ≤ 4 the decode session.
        const together = await Promise.all(prompts.map((p, i) => collect(engine, request(p, greedy(6 + i)))));
        return [alone, ...together.map((t) => t.tokens)];
      } finally {
        await engine.shutdown();
      }
    };
    const one = await run({});
    const two = await run({ decodeIntraOpThreads: 1 });
    expect(two).toEqual(one);
    expect(one[0]).toHaveLength(10);
  });
});
