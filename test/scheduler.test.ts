// Scheduler with a real CacheManager, without onnxruntime: the model's part of a step is simulated
// (every scheduled chunk completes; a request "samples" token 1 after its prompt and after each decode).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CacheManager, type CacheSpec } from '../src/cache/cache-manager.ts';
import { Scheduler, type SchedulerConfig, type SchedulerOutput } from '../src/engine/scheduler.ts';
import { RequestState } from '../src/engine/request-state.ts';
import { QueueFullError, RequestRejectedError } from '../src/engine/errors.ts';
import { samplingParams } from './helpers/sampling.ts';

const SWA: CacheSpec = { numAttnLayers: 2, numGlaLayers: 2, numKvHeads: 1, headDim: 2, windowTokens: 64 };
const FULL: CacheSpec = { ...SWA, windowTokens: null };

let nextId = 0;
function request(promptTokens: number, maxTokens: number): RequestState {
  const prompt = Array.from({ length: promptTokens }, (_, i) => i % 100);
  return new RequestState({ requestId: `r${nextId++}`, promptTokenIds: prompt, sampling: samplingParams({ maxTokens }), reportProgress: false }, 0);
}

function make(cfg: Partial<SchedulerConfig> = {}, spec: CacheSpec = SWA, kvPages?: number): { s: Scheduler; cache: CacheManager } {
  const config: SchedulerConfig = {
    maxNumSeqs: 8, maxBatchedTokens: 64, prefillChunkTokens: 32, maxQueue: 16, maxModelLen: 100_000, vocabSize: 100, ...cfg,
  };
  const cache = new CacheManager(spec, {
    maxNumSeqs: config.maxNumSeqs, maxChunkTokens: config.prefillChunkTokens, pageTokens: 16, ...(kvPages !== undefined ? { kvPages } : {}),
  });
  return { s: new Scheduler(config, cache), cache };
}

/** Plays the model: completes every scheduled chunk and samples token 1; finishes at max_tokens. */
function completeStep(s: Scheduler, out: SchedulerOutput): void {
  for (const req of out.decodes) {
    s.completeDecode(req);
    req.outputTokenIds.push(1);
    if (req.outputTokenIds.length >= req.sampling.maxTokens) s.finish(req, 'length');
  }
  for (const chunk of out.prefills) {
    s.completePrefill(chunk);
    const req = chunk.request;
    if (req.status === 'decoding') {
      req.outputTokenIds.push(1);
      if (req.outputTokenIds.length >= req.sampling.maxTokens) s.finish(req, 'length');
    }
  }
}

describe('Scheduler', () => {
  it('respects the budget, serves decodes before prefills, and frees everything (random workloads)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ prompt: fc.integer({ min: 1, max: 300 }), max: fc.integer({ min: 1, max: 20 }), at: fc.nat(30) }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 8, max: 64 }),
        fc.integer({ min: 1, max: 8 }),
        (reqs, budget, chunkDiv) => {
          const chunk = Math.max(1, Math.floor(budget / chunkDiv));
          const { s, cache } = make({ maxBatchedTokens: budget, prefillChunkTokens: chunk, maxNumSeqs: 6, maxQueue: 100 });
          const all = reqs.map((r) => ({ ...r, state: request(r.prompt, r.max) }));
          for (let step = 0; step < 5000 && (s.hasWork || all.some((r) => r.state.status === 'waiting' && r.at >= step)); step++) {
            for (const r of all) if (r.at === step) s.submit(r.state);
            const decodingBefore = all.filter((r) => r.state.status === 'decoding').map((r) => r.state);
            const out = s.schedule();
            const used = out.decodes.length + out.prefills.reduce((n, c) => n + c.numTokens, 0);
            expect(used).toBe(out.numScheduledTokens);
            expect(used).toBeLessThanOrEqual(budget);
            for (const c of out.prefills) {
              expect(c.numTokens).toBeGreaterThan(0);
              expect(c.numTokens).toBeLessThanOrEqual(chunk);
              expect(c.startPos).toBe(c.request.numComputedTokens);
            }
            // Decodes first: a decoding request is skipped only when decodes alone used the budget.
            if (out.decodes.length < decodingBefore.length) {
              expect(out.decodes.length).toBe(budget);
              expect(out.prefills).toHaveLength(0);
            }
            expect(s.numRunning).toBeLessThanOrEqual(6);
            completeStep(s, out);
          }
          expect(s.hasWork).toBe(false);
          for (const r of all) {
            expect(r.state.status).toBe('finished');
            expect(r.state.outputTokenIds).toHaveLength(r.max);
          }
          const u = cache.usage();
          expect([u.pagesUsed, u.slotsUsed, u.pagesReserved]).toEqual([0, 0, 0]);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('chunks a long prompt while short requests keep decoding every step', () => {
    const { s } = make({ maxBatchedTokens: 64, prefillChunkTokens: 32 });
    const shorts = [request(5, 1000), request(7, 1000)];
    for (const r of shorts) s.submit(r);
    completeStep(s, s.schedule()); // both prefilled in one step, first tokens sampled
    expect(shorts.every((r) => r.status === 'decoding')).toBe(true);
    const long = request(10_000, 1);
    s.submit(long);
    let steps = 0;
    while (long.status !== 'finished') {
      const out = s.schedule();
      expect(out.decodes).toEqual(shorts); // every step: both short streams get their token
      expect(out.prefills).toHaveLength(1);
      expect(out.prefills[0]!.numTokens).toBeLessThanOrEqual(32);
      completeStep(s, out);
      steps++;
    }
    expect(steps).toBe(Math.ceil(10_000 / 32));
    expect(shorts.every((r) => r.outputTokenIds.length === steps + 1)).toBe(true);
  });

  it('a short prompt arriving during a long prefill that fills the budget is served in the next step', () => {
    const { s } = make({ maxBatchedTokens: 64, prefillChunkTokens: 64 });
    const long = request(50_000, 1);
    s.submit(long);
    completeStep(s, s.schedule());
    expect(long.numComputedTokens).toBe(64);
    const short = request(10, 3);
    s.submit(short);
    const out = s.schedule();
    expect(out.prefills.map((c) => [c.request, c.numTokens])).toEqual([[long, 54], [short, 10]]);
    completeStep(s, out);
    expect(short.status).toBe('decoding');
    const next = s.schedule();
    expect(next.decodes).toEqual([short]);
    expect(next.prefills).toEqual([{ request: long, startPos: 118, numTokens: 63 }]);
  });

  it('cuts chunks at the prompt\'s last whole page, snapshots there, and resumes the next request from it', () => {
    const config: SchedulerConfig = { maxNumSeqs: 4, maxBatchedTokens: 64, prefillChunkTokens: 32, maxQueue: 16, maxModelLen: 100_000, vocabSize: 100 };
    const cache = new CacheManager(SWA, { maxNumSeqs: 4, maxChunkTokens: 32, pageTokens: 16, prefixCacheBytes: 1 << 20 });
    const s = new Scheduler(config, cache);
    const a = request(100, 2); // whole pages before the last token: 6 → snapshot at 96
    s.submit(a);
    const chunks: number[] = [];
    while (a.status === 'prefilling' || a.status === 'waiting') {
      const out = s.schedule();
      chunks.push(...out.prefills.map((c) => c.numTokens));
      completeStep(s, out);
    }
    expect(chunks).toEqual([32, 32, 32, 4]);
    expect(cache.prefix!.size).toBe(1);
    const b = request(100, 2); // same tokens
    s.submit(b);
    const out = s.schedule();
    expect(b.numCachedTokens).toBe(96);
    expect(out.prefills.find((c) => c.request === b)).toMatchObject({ startPos: 96, numTokens: 4 });
    completeStep(s, out);
    while (s.hasWork) completeStep(s, s.schedule());
    expect(cache.usage().pagesUsed).toBe(0);
  });

  it('throws QueueFullError when the waiting queue is full', () => {
    const { s } = make({ maxQueue: 3 });
    for (let i = 0; i < 3; i++) s.submit(request(10, 5));
    expect(() => s.submit(request(10, 5))).toThrow(QueueFullError);
    s.schedule(); // admits the queued ones
    expect(s.numWaiting).toBe(0);
    expect(() => s.submit(request(10, 5))).not.toThrow();
  });

  it('refuses what can never fit with RequestRejectedError naming the parameter', () => {
    const { s } = make({ maxModelLen: 1000 });
    const rejected = (r: RequestState): RequestRejectedError => {
      try {
        s.submit(r);
      } catch (err) {
        expect(err).toBeInstanceOf(RequestRejectedError);
        return err as RequestRejectedError;
      }
      throw new Error('not rejected');
    };
    expect(rejected(request(1000, 1)).param).toBe('prompt');
    expect(rejected(request(900, 101)).param).toBe('max_tokens');
    expect(rejected(request(0, 1)).param).toBe('prompt');
    expect(() => s.submit(request(900, 100))).not.toThrow(); // exactly maxModelLen
    const bad = new RequestState({ requestId: 'bad', promptTokenIds: [5, 100], sampling: samplingParams({ maxTokens: 1 }), reportProgress: false }, 0);
    expect(rejected(bad).message).toMatch(/outside the vocabulary/);

    // Full attention: 8 pages of 16 tokens = 128 tokens for one sequence.
    const f = make({ maxModelLen: 100_000 }, FULL, 8).s;
    expect(() => f.submit(request(200, 1))).toThrow(/whole cache/);
    let err: unknown;
    try {
      f.submit(request(100, 50));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RequestRejectedError);
    expect((err as RequestRejectedError).param).toBe('max_tokens');
    expect(() => f.submit(request(100, 28))).not.toThrow();
  });

  it('keeps a request that does not fit now waiting (FCFS) until memory frees', () => {
    const { s, cache } = make({ maxModelLen: 100_000 }, FULL, 8); // 128 tokens of KV in all
    const a = request(80, 10);
    const b = request(60, 10); // 70 tokens: 5 pages, only 2 left while a holds 6
    const c = request(5, 5);
    s.submit(a);
    s.submit(b);
    s.submit(c);
    let out = s.schedule();
    expect(out.prefills.map((p) => p.request)).toEqual([a]);
    expect(b.status).toBe('waiting');
    expect(c.status).toBe('waiting'); // no overtaking
    while (a.status !== 'finished') {
      completeStep(s, out);
      out = s.schedule();
    }
    expect(out.prefills.map((p) => p.request)).toContain(b);
    s.abort(b.requestId);
    s.abort(c.requestId);
    expect(cache.usage().pagesUsed).toBe(0);
    expect(cache.usage().slotsUsed).toBe(0);
  });

  it('abort frees a request in any state', () => {
    const { s, cache } = make(); // 8 sequences at a time
    const prefilling = request(500, 5);
    const decoding = request(3, 50);
    s.submit(decoding);
    completeStep(s, s.schedule());
    s.submit(prefilling);
    completeStep(s, s.schedule());
    expect(prefilling.status).toBe('prefilling');
    expect(decoding.status).toBe('decoding');
    // Six more fill the 8 running sequences, so the next one has to wait.
    for (let i = 0; i < 6; i++) s.submit(request(10, 5));
    const waiting = request(10, 5);
    s.submit(waiting);
    completeStep(s, s.schedule());
    expect([s.numRunning, s.numWaiting, waiting.status]).toEqual([8, 1, 'waiting']);

    expect(s.abort(waiting.requestId)?.status).toBe('aborted');
    expect(s.numWaiting).toBe(0);
    expect(s.abort(prefilling.requestId)?.status).toBe('aborted');
    expect(s.abort(decoding.requestId)?.finishReason).toBe('abort');
    expect(s.abort(decoding.requestId)).toBeUndefined(); // already gone
    expect(s.abort('no-such-request')).toBeUndefined();
    expect(s.requestIds()).not.toContain(waiting.requestId);
    while (s.hasWork) completeStep(s, s.schedule());
    // The aborted waiting request was never admitted, so it never ran.
    expect([waiting.status, waiting.numComputedTokens, waiting.outputTokenIds.length]).toEqual(['aborted', 0, 0]);
    const u = cache.usage();
    expect([u.pagesUsed, u.slotsUsed, u.pagesReserved]).toEqual([0, 0, 0]);
  });
});
