// Scheduler with a real CacheManager, without onnxruntime: the model's part of a step is simulated
// (every scheduled chunk completes; a request "samples" token 1 after its prompt and after each decode).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CacheManager, type CacheSpec } from '../src/cache/cache-manager.ts';
import { chunkTokensForScores, Scheduler, type SchedulerConfig, type SchedulerOutput } from '../src/engine/scheduler.ts';
import { RequestState } from '../src/engine/request-state.ts';
import { QueueFullError, RequestRejectedError } from '../src/engine/errors.ts';
import { samplingParams } from './helpers/sampling.ts';

const SWA: CacheSpec = { stateFloats: [4, 4], kvGroups: [{ kind: 'window', numLayers: 2, numKvHeads: 1, headDim: 2, windowTokens: 64 }] };
const FULL: CacheSpec = { stateFloats: [4, 4], kvGroups: [{ kind: 'full', numLayers: 2, numKvHeads: 1, headDim: 2, windowTokens: null }] };

let nextId = 0;
function request(promptTokens: number, maxTokens: number): RequestState {
  const prompt = Array.from({ length: promptTokens }, (_, i) => i % 100);
  return new RequestState({ requestId: `r${nextId++}`, promptTokenIds: prompt, sampling: samplingParams({ maxTokens }), reportProgress: false }, 0);
}

function make(cfg: Partial<SchedulerConfig> = {}, spec: CacheSpec = SWA, kvPages?: number, prefixCacheBytes?: number): { s: Scheduler; cache: CacheManager } {
  const config: SchedulerConfig = {
    maxNumSeqs: 8, maxBatchedTokens: 64, prefillChunkTokens: 32, maxQueue: 16, maxModelLen: 100_000, vocabSize: 100, ...cfg,
  };
  const cache = new CacheManager(spec, {
    maxNumSeqs: config.maxNumSeqs,
    maxChunkTokens: config.prefillChunkTokens,
    pageTokens: 16,
    ...(kvPages !== undefined ? { kvPages } : {}),
    ...(prefixCacheBytes !== undefined ? { prefixCacheBytes } : {}),
  });
  return { s: new Scheduler(config, cache), cache };
}

/**
 * Plays the model: completes every scheduled chunk and "samples" a token — `next(req)`, default 1 — after
 * each decode and after a prefill that ends the prompt (not after a recompute); finishes at max_tokens.
 */
function completeStep(s: Scheduler, out: SchedulerOutput, next: (req: RequestState) => number = () => 1): void {
  for (const req of out.decodes) {
    const folding = req.status === 'folding';
    s.completeDecode(req);
    if (folding) continue;
    req.outputTokenIds.push(next(req));
    if (req.outputTokenIds.length >= req.sampling.maxTokens) s.finish(req, 'length');
  }
  for (const chunk of out.prefills) {
    const req = chunk.request;
    const samples = chunk.startPos + chunk.numTokens === req.prefillTarget && req.samplesAfterPrefill;
    s.completePrefill(chunk);
    if (samples) {
      req.outputTokenIds.push(next(req));
      if (req.outputTokenIds.length >= req.sampling.maxTokens) s.finish(req, 'length');
    }
  }
}

describe('Scheduler', () => {
  // Window attention with and without prefix caching; full attention in a pool that holds ~2 of the
  // longest requests, so that requests are preempted, recomputed, and resume from snapshots.
  const workloads: { name: string; spec: CacheSpec; kvPages?: number; prefixCacheBytes?: number }[] = [
    { name: 'window', spec: SWA },
    { name: 'window + prefix cache', spec: SWA, prefixCacheBytes: 1 << 20 },
    { name: 'full attention, small pool + prefix cache', spec: FULL, kvPages: 48, prefixCacheBytes: 1 << 16 },
  ];
  it.each(workloads)('respects the budget, serves decodes before prefills, and frees everything (random workloads: $name)', ({ spec, kvPages, prefixCacheBytes }) => {
    let preemptions = 0;
    fc.assert(
      fc.property(
        fc.array(fc.record({ prompt: fc.integer({ min: 1, max: 300 }), max: fc.integer({ min: 1, max: 20 }), at: fc.nat(30) }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 8, max: 64 }),
        fc.integer({ min: 1, max: 8 }),
        (reqs, budget, chunkDiv) => {
          const chunk = Math.max(1, Math.floor(budget / chunkDiv));
          const { s, cache } = make({ maxBatchedTokens: budget, prefillChunkTokens: chunk, maxNumSeqs: 6, maxQueue: 100 }, spec, kvPages, prefixCacheBytes);
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
            // Decodes first: a decoding request (not preempted) is skipped only when one-token rows used the budget.
            const stillDecoding = decodingBefore.filter((r) => r.status === 'decoding');
            if (out.decodes.filter((r) => r.status === 'decoding').length < stillDecoding.length) {
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
          preemptions += s.numPreemptions;
        },
      ),
      { numRuns: 100 },
    );
    if (kvPages !== undefined) expect(preemptions).toBeGreaterThan(0); // the small pool did preempt
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

  it('full attention: prefill chunks shrink with the context so that one layer\'s scores stay within the byte bound', () => {
    const heads = 4;
    const bytes = 4 * heads * 16 * 1024; // T·(p + T) ≤ 16,384: 32 tokens near the start, 1 from ~16K on
    const { s } = make({ maxBatchedTokens: 64, prefillChunkTokens: 32, maxModelLen: 1 << 20, attentionScores: { bytes, heads } }, FULL, 4096);
    const long = request(20_000, 1);
    s.submit(long);
    const sizes: number[] = [];
    while (long.status !== 'finished') {
      const out = s.schedule();
      for (const c of out.prefills) {
        // Within the bound, unless one token is already over it (a step still computes one).
        if (c.numTokens > 1) expect(4 * heads * c.numTokens * (c.startPos + c.numTokens), `chunk at ${c.startPos}`).toBeLessThanOrEqual(bytes);
        // The longest that fits: one more token would not (or the chunk is whole, or the prompt's end).
        const whole = c.numTokens === 32 || c.startPos + c.numTokens === long.prefillTarget;
        if (!whole && c.numTokens > 1) expect(4 * heads * (c.numTokens + 1) * (c.startPos + c.numTokens + 1)).toBeGreaterThan(bytes);
        sizes.push(c.numTokens);
      }
      completeStep(s, out);
    }
    expect(sizes[0]).toBe(32);
    expect(sizes[sizes.length - 1]).toBe(1); // at 20K one token a step, and the prompt still finishes
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(20_000);
  });

  it('chunkTokensForScores is the largest T with 4·heads·T·(p + T) ≤ bytes, at least 1', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1 << 24 }), fc.integer({ min: 1024, max: 2 ** 34 }), fc.integer({ min: 1, max: 128 }), (p, bytes, heads) => {
        const t = chunkTokensForScores(p, bytes, heads);
        const fits = (n: number): boolean => 4 * heads * n * (p + n) <= bytes;
        expect(t).toBeGreaterThanOrEqual(1);
        if (t > 1) expect(fits(t)).toBe(true);
        expect(fits(t + 1)).toBe(false);
      }),
    );
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

  it('cuts chunks at the prompt\'s last whole page and a token before its end, snapshots there, and resumes the next request from it', () => {
    const { s, cache } = make({ maxNumSeqs: 4, maxBatchedTokens: 64, prefillChunkTokens: 32 }, SWA, undefined, 1 << 20);
    const a = request(100, 2); // whole pages before the last token: 6 → snapshots at 96 and (exact) 99
    s.submit(a);
    const chunks: number[] = [];
    while (a.status === 'prefilling' || a.status === 'waiting') {
      const out = s.schedule();
      chunks.push(...out.prefills.map((c) => c.numTokens));
      completeStep(s, out);
    }
    expect(chunks).toEqual([32, 32, 32, 3, 1]);
    expect(cache.prefix!.size).toBe(2);
    const b = request(100, 2); // same tokens
    s.submit(b);
    const out = s.schedule();
    expect(b.numCachedTokens).toBe(99);
    expect(out.prefills.find((c) => c.request === b)).toMatchObject({ startPos: 99, numTokens: 1 });
    completeStep(s, out);
    while (s.hasWork) completeStep(s, s.schedule());
    // a ended after 2 tokens; its last token was folded in: an exact snapshot of all 102 tokens.
    expect(a.status).toBe('finished');
    expect(a.numComputedTokens).toBe(102);
    const next = new RequestState({ requestId: 'turn2', promptTokenIds: [...a.promptTokenIds, ...a.outputTokenIds, 5, 6], sampling: samplingParams({ maxTokens: 1 }), reportProgress: false }, 0);
    s.submit(next);
    while (next.status === 'waiting') completeStep(s, s.schedule());
    expect(next.numCachedTokens).toBe(102);
    while (s.hasWork) completeStep(s, s.schedule());
    expect(cache.usage().pagesUsed).toBe(0);
    expect(cache.usage().slotsUsed).toBe(0);
  });

  it('choices of one request (forkOf) wait for the first one\'s prompt and resume from its snapshot; they hold up nobody', () => {
    const { s, cache } = make({ maxNumSeqs: 8, maxBatchedTokens: 64, prefillChunkTokens: 32 }, SWA, undefined, 1 << 20);
    const tokens = Array.from({ length: 200 }, (_, i) => (i * 7) % 100);
    const choice = (i: number): RequestState =>
      new RequestState({ requestId: `n${i}`, promptTokenIds: tokens, sampling: samplingParams({ maxTokens: 3 }), reportProgress: false, ...(i > 0 ? { forkOf: 'n0' } : {}) }, 0);
    const choices = [0, 1, 2, 3].map(choice);
    for (const c of choices) s.submit(c);
    const other = request(20, 2);
    s.submit(other);
    let computed = 0;
    let otherAdmittedAtStep = -1;
    for (let step = 0; s.hasWork; step++) {
      const out = s.schedule();
      if (other.status !== 'waiting' && otherAdmittedAtStep < 0) otherAdmittedAtStep = step;
      computed += out.prefills.filter((c) => choices.includes(c.request)).reduce((n, c) => n + c.numTokens, 0);
      if (choices[0]!.status === 'prefilling') expect(choices.slice(1).every((c) => c.status === 'waiting')).toBe(true);
      completeStep(s, out);
    }
    expect(otherAdmittedAtStep).toBe(0); // not held up by the waiting choices
    expect(choices.map((c) => c.numCachedTokens)).toEqual([0, 199, 199, 199]);
    expect(computed).toBe(200 + 3); // the prompt once, then one token per other choice
    expect(choices.every((c) => c.outputTokenIds.length === 3)).toBe(true);
    expect(cache.usage().slotsUsed).toBe(0);
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

  it('full attention: requests that together exceed the pool run at once; the newest is preempted, recomputes and gives the same tokens', () => {
    // 10 pages of 16 tokens; each request may grow to 70 tokens (5 pages): three do not fit together.
    const { s, cache } = make({ maxModelLen: 100_000, maxBatchedTokens: 32, prefillChunkTokens: 16 }, FULL, 10);
    // The "model": the next token is a function of the request's tokens so far (as greedy decoding is).
    const next = (req: RequestState): number => {
      let h = 7;
      for (let i = 0; i < req.numPromptTokens; i++) h = (h * 31 + req.promptTokenIds[i]!) % 97;
      for (const t of req.outputTokenIds) h = (h * 31 + t) % 97;
      return h;
    };
    const alone = [40, 41, 42].map((n) => {
      const r = request(n, 30);
      const solo = make({ maxModelLen: 100_000, maxBatchedTokens: 32, prefillChunkTokens: 16 }, FULL, 10).s;
      solo.submit(r);
      while (solo.hasWork) completeStep(solo, solo.schedule(), next);
      return r.outputTokenIds;
    });
    const reqs = [40, 41, 42].map((n) => request(n, 30));
    for (const r of reqs) s.submit(r);
    let concurrent = 0;
    for (let step = 0; s.hasWork && step < 10_000; step++) {
      const out = s.schedule();
      concurrent = Math.max(concurrent, new Set([...out.decodes, ...out.prefills.map((c) => c.request)]).size);
      // Every scheduled position has its page, and no page is held twice.
      const pages = reqs.flatMap((r) => cache.tableOf(r.seqId)?.pages ?? []);
      expect(new Set(pages).size).toBe(pages.length);
      completeStep(s, out, next);
    }
    expect(concurrent).toBe(3); // all three ran in one step at some point (no reservation of prompt + max_tokens)
    expect(s.numPreemptions).toBeGreaterThan(0);
    expect(reqs.some((r) => r.numPreemptions > 0)).toBe(true);
    expect(reqs.map((r) => r.status)).toEqual(['finished', 'finished', 'finished']);
    expect(reqs.map((r) => r.outputTokenIds)).toEqual(alone);
    const u = cache.usage();
    expect([u.pagesUsed, u.slotsUsed, u.pagesReserved]).toEqual([0, 0, 0]);
  });

  it('full attention: 8 chats without max_tokens (up to the context) are admitted together', () => {
    const { s } = make({ maxModelLen: 1024, maxNumSeqs: 8 }, FULL, 64); // 1,024 tokens of KV in all
    const chats = Array.from({ length: 8 }, () => request(20, 1024 - 20));
    for (const r of chats) s.submit(r);
    const out = s.schedule();
    expect(new Set(out.prefills.map((c) => c.request)).size).toBe(8);
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
