// Scheduler: continuous batching with a token budget per step and chunked prefill.
// It decides how many tokens each request computes in the next step; the CacheManager answers whether
// that fits. It never touches tensors or the model (tests run it without onnxruntime).
// Request lifecycle: see request-state.ts.
import type { CacheManager } from '../cache/cache-manager.ts';
import { prefixKeys } from '../cache/prefix-cache.ts';
import { QueueFullError, RequestRejectedError } from './errors.ts';
import type { FinishReason } from './types.ts';
import type { RequestState } from './request-state.ts';

export interface SchedulerConfig {
  /** Most requests running (prefilling or decoding) at once. */
  readonly maxNumSeqs: number;
  /** Token budget of one step: decodes count 1 each, prefill chunks their length. */
  readonly maxBatchedTokens: number;
  /** Longest prefill chunk. */
  readonly prefillChunkTokens: number;
  /** Longest waiting queue; one more submission throws QueueFullError. */
  readonly maxQueue: number;
  /** prompt + max_tokens must not exceed this. */
  readonly maxModelLen: number;
  /** Token ids must be < vocabSize. */
  readonly vocabSize: number;
}

/** A prefill chunk: prompt positions [startPos, startPos + numTokens) of one request. */
export interface ScheduledChunk {
  readonly request: RequestState;
  readonly startPos: number;
  readonly numTokens: number;
}

/** What one step computes. Every scheduled position already has its pages. */
export interface SchedulerOutput {
  /** Requests decoding one token each (fed their last sampled token at position numComputedTokens). */
  readonly decodes: readonly RequestState[];
  readonly prefills: readonly ScheduledChunk[];
  readonly numScheduledTokens: number;
  /** Warm-ups (prefillOnly) whose whole prompt was already cached: admitted, nothing to compute; finish them. */
  readonly warmedFromCache: readonly RequestState[];
}

export class Scheduler {
  readonly config: SchedulerConfig;
  private readonly cache: CacheManager;
  /** FCFS queue of submitted, not yet admitted requests. */
  private readonly waiting: RequestState[] = [];
  /** Admitted requests in admission order (prefilling or decoding). */
  private readonly running: RequestState[] = [];
  private readonly byId = new Map<string, RequestState>();
  /** Called when a prefix read from disk ends: a request that waited for it may now be admitted. */
  private readonly onPrefetched: () => void;

  constructor(config: SchedulerConfig, cache: CacheManager, onPrefetched: () => void = () => {}) {
    if (config.prefillChunkTokens > config.maxBatchedTokens) {
      throw new RangeError(`prefillChunkTokens (${config.prefillChunkTokens}) must be ≤ maxBatchedTokens (${config.maxBatchedTokens})`);
    }
    if (config.prefillChunkTokens > cache.maxChunkTokens) {
      throw new RangeError(`prefillChunkTokens (${config.prefillChunkTokens}) exceeds the cache's maxChunkTokens (${cache.maxChunkTokens})`);
    }
    this.config = Object.freeze({ ...config });
    this.cache = cache;
    this.onPrefetched = onPrefetched;
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length;
  }

  get hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /** Ids of every request not yet finished (waiting or running). */
  requestIds(): string[] {
    return [...this.byId.keys()];
  }

  /**
   * Refuses what can never be served (RequestRejectedError) and what does not fit in the queue
   * (QueueFullError); otherwise queues the request as WAITING.
   */
  submit(req: RequestState): void {
    const { maxModelLen, vocabSize, maxQueue } = this.config;
    const n = req.numPromptTokens;
    if (this.byId.has(req.requestId)) throw new RequestRejectedError(`request id ${req.requestId} is already in use`, null);
    if (n === 0) throw new RequestRejectedError('the prompt is empty', 'prompt');
    for (const t of req.promptTokenIds) {
      if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
        throw new RequestRejectedError(`prompt token id ${t} is outside the vocabulary [0, ${vocabSize})`, 'prompt');
      }
    }
    if (!Number.isInteger(req.sampling.maxTokens) || req.sampling.maxTokens < 1) {
      throw new RequestRejectedError(`max_tokens must be ≥ 1, got ${req.sampling.maxTokens}`, 'max_tokens');
    }
    if (n >= maxModelLen) {
      throw new RequestRejectedError(
        `the prompt has ${n} tokens; this model's maximum context length is ${maxModelLen} tokens, including at least one generated token`,
        'prompt',
      );
    }
    if (n + req.sampling.maxTokens > maxModelLen) {
      throw new RequestRejectedError(
        `the prompt (${n} tokens) plus max_tokens (${req.sampling.maxTokens}) exceeds this model's maximum context length of ${maxModelLen} tokens`,
        'max_tokens',
      );
    }
    if (!this.cache.canEverFit(n + req.sampling.maxTokens)) {
      const cap = this.cache.maxTokensPerSequence;
      const param = this.cache.canEverFit(n + 1) ? 'max_tokens' : 'prompt';
      throw new RequestRejectedError(
        `the prompt (${n} tokens) plus max_tokens (${req.sampling.maxTokens}) needs more key/value memory than the whole cache holds (${cap} tokens for one full-attention sequence)`,
        param,
      );
    }
    if (this.waiting.length >= maxQueue) {
      throw new QueueFullError(`the waiting queue is full (${maxQueue} requests); retry later`);
    }
    if (this.cache.prefix !== null && req.sampling.promptLogprobs === null) {
      // Requests that want prompt logprobs compute every position, so they neither resume nor snapshot.
      // A warm-up (prefillOnly) snapshots its whole prompt, so its keys cover every whole page.
      req.prefixKeys = prefixKeys(req.promptTokenIds, this.cache.pageTokens, req.prefillOnly);
      // A longer prefix on disk than in memory is read now, off the step loop; admission waits for it.
      // A read that fails or times out is a miss (null): admission goes on either way.
      const read = this.cache.prefetchDiskPrefix(req.prefixKeys);
      if (read !== null) {
        req.prefetching = true;
        void read
          .catch(() => null)
          .then((prefetched) => {
            req.prefetching = false;
            if (req.isFinished) prefetched?.release(); // aborted while it waited
            else req.prefetched = prefetched;
            this.onPrefetched();
          });
      }
    }
    req.status = 'waiting';
    this.waiting.push(req);
    this.byId.set(req.requestId, req);
  }

  schedule(nowMs = performance.now()): SchedulerOutput {
    // Core idea: every step spends a budget of `maxBatchedTokens` tokens.
    //  1. Every DECODING request gets one token (decodes first, so streams keep flowing).
    //  2. WAITING requests are admitted in FCFS order while the CacheManager can reserve a state slot
    //     and their worst-case pages; the first one that does not fit stops admission (no overtaking,
    //     so a big request is not starved by small ones). Admission needs memory, not budget. A request
    //     whose prefix snapshot is being read from disk (started at submit) waits at the head until it is in.
    //  3. The budget left is shared among PREFILLING requests by water-filling: smallest need first,
    //     each gets min(prompt left, prefillChunkTokens, an equal share of what is left). A long prompt
    //     thus advances by a chunk per step, but a short prompt arriving meanwhile still gets its whole
    //     prompt in the next step instead of waiting for the long one to finish.
    // Pages for every scheduled position are allocated here; admission reserved them, so it cannot fail.
    let budget = this.config.maxBatchedTokens;
    const decodes: RequestState[] = [];
    const warmedFromCache: RequestState[] = [];
    for (const req of this.running) {
      if (budget === 0) break;
      if (req.status !== 'decoding') continue;
      this.cache.append(req.requestId, req.numComputedTokens, 1);
      decodes.push(req);
      budget--;
    }
    while (this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs) {
      const req = this.waiting[0]!;
      if (req.prefetching) break; // FCFS: its prefix is still being read from disk
      // The cache never reads the disk here: only what was prefetched (at submit) counts.
      const restored = this.cache.admit(req.requestId, req.maxTotalTokens, req.prefixKeys ?? undefined, req.prefetched);
      if (restored === null) break;
      req.prefetched?.release();
      this.waiting.shift();
      req.numComputedTokens = restored;
      req.numCachedTokens = restored;
      // Snapshot at the prompt's last whole page, and at the last whole page of its shared prefix when
      // the request names one (chunks are cut there), unless that prefix was restored.
      const keys = req.prefixKeys ?? [];
      const P = this.cache.pageTokens;
      const pages = new Set(req.prefillOnly ? [keys.length] : [Math.min(Math.floor(req.sharedPrefixTokens / P), keys.length), keys.length]);
      req.snapshotAt = [...pages].filter((n) => n > 0 && n * P > restored).sort((a, b) => a - b).map((n) => n * P);
      req.snapshotKeys = req.snapshotAt.map((at) => keys[at / P - 1]!);
      if (req.prefillOnly) req.warmKey = keys[keys.length - 1] ?? null;
      req.prefixKeys = null;
      req.prefetched = null;
      req.status = 'prefilling';
      req.admittedMs = nowMs;
      req.lastProgressMs = nowMs;
      this.running.push(req);
      if (req.prefillOnly && restored === req.numPromptTokens && req.warmKey !== null) {
        // Its whole prompt is cached already (here, or read from another replica's file): make sure
        // the snapshot has a file too, and let the engine finish it.
        this.cache.publishSnapshot(req.warmKey);
        warmedFromCache.push(req);
      }
    }
    const prefilling = this.running.filter((r) => r.status === 'prefilling' && r.numPromptTokensLeft > 0);
    const grant = new Map<RequestState, number>();
    const bySmallestNeed = [...prefilling].sort((a, b) => this.prefillNeed(a) - this.prefillNeed(b));
    for (let i = 0; i < bySmallestNeed.length && budget > 0; i++) {
      const req = bySmallestNeed[i]!;
      const share = Math.max(1, Math.floor(budget / (bySmallestNeed.length - i)));
      const numTokens = Math.min(this.prefillNeed(req), share);
      grant.set(req, numTokens);
      budget -= numTokens;
    }
    const prefills: ScheduledChunk[] = [];
    for (const req of prefilling) {
      const numTokens = grant.get(req);
      if (numTokens === undefined) continue;
      const startPos = req.numComputedTokens;
      this.cache.append(req.requestId, startPos, numTokens);
      prefills.push({ request: req, startPos, numTokens });
    }
    return { decodes, prefills, numScheduledTokens: this.config.maxBatchedTokens - budget, warmedFromCache };
  }

  /** Tokens a prefilling request would take with an unlimited budget (a chunk never crosses a snapshot point). */
  private prefillNeed(req: RequestState): number {
    const next = req.snapshotAt[0];
    const toSnapshot = next !== undefined && req.numComputedTokens < next ? next - req.numComputedTokens : Infinity;
    return Math.min(req.numPromptTokensLeft, this.config.prefillChunkTokens, toSnapshot);
  }

  /**
   * Records that a scheduled chunk was computed (its states and keys/values are in the pools); at
   * snapshotAt the prefix is snapshotted; after the last prompt chunk the request decodes.
   */
  completePrefill(chunk: ScheduledChunk): void {
    const req = chunk.request;
    if (req.isFinished) return;
    req.numComputedTokens = chunk.startPos + chunk.numTokens;
    if (req.snapshotAt[0] === req.numComputedTokens) {
      this.cache.snapshot(req.requestId, req.snapshotKeys[0]!, req.numComputedTokens, req.prefillOnly);
      req.snapshotAt.shift();
      req.snapshotKeys.shift();
    }
    if (req.numComputedTokens === req.numPromptTokens) req.status = 'decoding';
  }

  /** Records that a decode step computed the request's last sampled token. */
  completeDecode(req: RequestState): void {
    if (req.isFinished) return;
    req.numComputedTokens++;
  }

  /** FINISHED (stop, length, error): frees everything the request holds. */
  finish(req: RequestState, reason: FinishReason, nowMs = performance.now()): void {
    if (req.isFinished) return;
    req.finishReason = reason;
    this.remove(req, reason === 'abort' ? 'aborted' : 'finished', nowMs);
  }

  /** ABORTED from any state; returns the request, or undefined for an unknown / finished id. */
  abort(requestId: string, nowMs = performance.now()): RequestState | undefined {
    const req = this.byId.get(requestId);
    if (req === undefined || req.isFinished) return undefined;
    req.finishReason = 'abort';
    this.remove(req, 'aborted', nowMs);
    return req;
  }

  private remove(req: RequestState, status: 'finished' | 'aborted', nowMs: number): void {
    req.status = status;
    req.finishedMs = nowMs;
    const w = this.waiting.indexOf(req);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(req);
    if (r >= 0) this.running.splice(r, 1);
    this.byId.delete(req.requestId);
    this.cache.free(req.requestId);
    req.prefetched?.release(); // aborted while waiting with a disk read in hand
    req.prefetched = null;
  }
}
