// Scheduler: continuous batching with a token budget per step and chunked prefill.
// It decides how many tokens each request computes in the next step; the CacheManager answers whether
// that fits. It never touches tensors or the model (tests run it without onnxruntime).
// Request lifecycle: see request-state.ts.
import type { CacheManager } from '../cache/cache-manager.ts';
import { exactKey, extendKey, PrefixKeyer } from '../cache/prefix-keys.ts';
import { QueueFullError, RequestRejectedError } from './errors.ts';
import type { FinishReason } from './types.ts';
import type { RequestState, SnapshotPoint } from './request-state.ts';

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
  /**
   * Whether a finished request folds and snapshots its generated tokens for the conversation's next
   * turn (default true). False for models that compute a token differently as a prompt token than as a
   * generated one (MoBA): the next turn's prompt must compute its reply as prompt tokens, as a fresh
   * request would, so only prompt snapshots are kept.
   */
  readonly snapshotsGeneratedTokens?: boolean;
  /**
   * Models with growing attention layers (full, MoBA): a prefill chunk of T tokens that starts at
   * position p makes each such layer a [H, T, ≈p + T] float32 score matrix (plus a mask and the
   * probabilities of that size), so T is cut until 4·H·T·(p + T) ≤ `bytes` (at least one token a step):
   * a prompt of a million tokens does not need gigabytes per step. Absent: no bound (attention only over
   * a window, whose scores are bounded by W).
   */
  readonly attentionScores?: { readonly bytes: number; readonly heads: number };
}

/**
 * The longest chunk starting at position p whose [heads, T, p + T] float32 scores fit in `bytes`
 * (at least 1): the largest T with 4·heads·T·(p + T) ≤ bytes.
 */
export function chunkTokensForScores(p: number, bytes: number, heads: number): number {
  const s = bytes / (4 * heads); // T·(p + T) ≤ s
  let t = Math.floor((-p + Math.sqrt(p * p + 4 * s)) / 2);
  while (t > 1 && t * (p + t) > s) t--; // rounding
  return Math.max(1, t);
}

/** A prefill chunk: positions [startPos, startPos + numTokens) of one request. */
export interface ScheduledChunk {
  readonly request: RequestState;
  readonly startPos: number;
  readonly numTokens: number;
}

/** What one step computes. Every scheduled position already has its pages. */
export interface SchedulerOutput {
  /**
   * Requests computing one token each (fed the token at position numComputedTokens): DECODING ones,
   * which sample the next token, and FOLDING ones, which only extend their state for a snapshot.
   */
  readonly decodes: readonly RequestState[];
  readonly prefills: readonly ScheduledChunk[];
  readonly numScheduledTokens: number;
  /** Warm-ups (prefillOnly) whose whole prompt was already cached: admitted, nothing to compute; finish them. */
  readonly warmedFromCache: readonly RequestState[];
}

/** Prompt pages hashed per step at most (≈ 4 ms of sha256 on one core), so a 4M-token prompt never stalls running streams. */
const PREPARE_PAGES_PER_STEP = 4096;

export class Scheduler {
  readonly config: SchedulerConfig;
  private readonly cache: CacheManager;
  /** FCFS queue of submitted (or preempted), not yet admitted requests. */
  private readonly waiting: RequestState[] = [];
  /** Admitted requests in admission order (prefilling, decoding or folding). */
  private readonly running: RequestState[] = [];
  /** Requests a client can still abort: waiting, prefilling or decoding (not folding). */
  private readonly byId = new Map<string, RequestState>();
  /** Called when a prefix read from disk ends: a request that waited for it may now be admitted. */
  private readonly onPrefetched: () => void;
  /** Preemptions since start (a request whose memory was taken back and that recomputes). */
  numPreemptions = 0;

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

  /** Prompt tokens of the waiting requests (at most maxQueue of them: a bounded sum). */
  get waitingPromptTokens(): number {
    let n = 0;
    for (const req of this.waiting) n += req.numPromptTokens;
    return n;
  }

  /** Requests admitted and not yet done (folding ones are done for their clients and not counted). */
  get numRunning(): number {
    return this.running.reduce((n, r) => n + (r.status === 'folding' ? 0 : 1), 0);
  }

  get hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /** Ids of every request a client can still abort (waiting or running). */
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
    const ids = req.promptTokenIds;
    for (let i = 0; i < n; i++) {
      const t = ids[i]!;
      if (t < 0 || t >= vocabSize) throw new RequestRejectedError(`prompt token id ${t} is outside the vocabulary [0, ${vocabSize})`, 'prompt');
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
    this.startKeys(req);
    req.status = 'waiting';
    this.waiting.push(req);
    this.byId.set(req.requestId, req);
  }

  /** Requests that want prompt logprobs compute every position, so they neither resume nor snapshot. */
  private usesPrefixCache(req: RequestState): boolean {
    return this.cache.prefix !== null && req.sampling.promptLogprobs === null;
  }

  /** A warm-up (prefillOnly) snapshots its whole prompt, so its keys cover every whole page. */
  private startKeys(req: RequestState): void {
    req.keyer = this.usesPrefixCache(req) ? new PrefixKeyer(req.promptTokenIds, this.cache.pageTokens, req.prefillOnly) : null;
  }

  /**
   * Hashes the prompt pages of waiting requests, FCFS, at most PREPARE_PAGES_PER_STEP per call; when a
   * request's keys are complete, starts reading a longer prefix from disk (admission waits for it).
   * Returns whether hashing work is left.
   */
  private prepareWaiting(): boolean {
    let pages = PREPARE_PAGES_PER_STEP;
    for (const req of this.waiting) {
      const keyer = req.keyer;
      if (keyer === null || keyer.done) continue;
      const before = keyer.keys.length;
      const done = keyer.advance(pages);
      pages -= keyer.keys.length - before;
      if (done) this.startPrefetch(req);
      if (pages <= 0) break;
    }
    return this.waiting.some((r) => r.keyer !== null && !r.keyer.done);
  }

  /**
   * A longer prefix on disk than in memory is read now, off the step loop; admission waits for it. A
   * read that fails or times out is a miss (null): admission goes on either way.
   */
  private startPrefetch(req: RequestState): void {
    const keys = req.keyer?.keys;
    if (keys === undefined || req.prefetched !== null) return;
    const read = this.cache.prefetchDiskPrefix(keys);
    if (read === null) return;
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

  /** Is there work that schedule() can advance without scheduling tokens (prompt hashing)? */
  get hasPreparation(): boolean {
    return this.waiting.some((r) => r.keyer !== null && !r.keyer.done);
  }

  schedule(nowMs = performance.now()): SchedulerOutput {
    // Core idea: every step spends a budget of `maxBatchedTokens` tokens.
    //  0. Waiting requests' prompt pages are hashed (prefix keys), a bounded amount per step.
    //  1. Every DECODING request gets one token (decodes first, so streams keep flowing); FOLDING ones
    //     (finished, extending their state for an exact snapshot) ride along.
    //  2. WAITING requests are admitted in FCFS order while the CacheManager can give a state slot,
    //     the window reservation and the first chunk's full-attention pages; the first one that does not
    //     fit stops admission (no overtaking, so a big request is not starved by small ones). A request
    //     whose keys are not hashed yet, or whose prefix snapshot is being read from disk, waits at the head.
    //  3. The budget left is shared among PREFILLING requests by water-filling: smallest need first,
    //     each gets min(prompt left, prefillChunkTokens, an equal share of what is left). A long prompt
    //     thus advances by a chunk per step, but a short prompt arriving meanwhile still gets its whole
    //     prompt in the next step instead of waiting for the long one to finish.
    // Pages for every scheduled position are allocated here. Window pages were reserved at admission;
    // full-attention pages are taken as needed, and when the pool is empty the newest running request is
    // preempted (freed, requeued first) so that older ones go on.
    this.prepareWaiting();
    const step = new StepPlan(this.config.maxBatchedTokens);
    const warmedFromCache: RequestState[] = [];
    for (const req of [...this.running]) {
      if (step.budget === 0) break;
      if ((req.status !== 'decoding' && req.status !== 'folding') || req.awaitingGrammar || !this.running.includes(req)) continue;
      if (this.allocate(req, req.numComputedTokens, 1, step) === 1) step.addDecode(req);
    }
    this.admitWaiting(nowMs, warmedFromCache);
    const prefilling = this.running.filter((r) => r.status === 'prefilling' && r.numPromptTokensLeft > 0);
    const grant = new Map<RequestState, number>();
    const bySmallestNeed = [...prefilling].sort((a, b) => this.prefillNeed(a) - this.prefillNeed(b));
    let budget = step.budget;
    for (let i = 0; i < bySmallestNeed.length && budget > 0; i++) {
      const req = bySmallestNeed[i]!;
      const share = Math.max(1, Math.floor(budget / (bySmallestNeed.length - i)));
      const numTokens = Math.min(this.prefillNeed(req), share);
      grant.set(req, numTokens);
      budget -= numTokens;
    }
    for (const req of prefilling) {
      const wanted = grant.get(req);
      if (wanted === undefined || req.status !== 'prefilling') continue; // preempted meanwhile
      const startPos = req.numComputedTokens;
      const numTokens = this.allocate(req, startPos, wanted, step);
      if (numTokens > 0) step.addPrefill({ request: req, startPos, numTokens });
    }
    return step.output(warmedFromCache);
  }

  /**
   * A choice of an `n > 1` request waits while the choice it forks from has not computed the prompt
   * yet: then it resumes from that one's snapshot (a token before the prompt's end) instead of
   * computing the prompt again. It does not hold up the requests behind it.
   */
  private waitsForFork(req: RequestState): boolean {
    if (req.forkOf === null || !this.usesPrefixCache(req)) return false;
    const leader = this.byId.get(req.forkOf);
    return leader !== undefined && (leader.status === 'waiting' || leader.status === 'prefilling');
  }

  /**
   * WAITING → PREFILLING, FCFS, while memory allows (step 2 of schedule). A warm-up whose whole prompt
   * is cached already (here, or read from another replica's file) goes to `warmedFromCache`.
   */
  private admitWaiting(nowMs: number, warmedFromCache: RequestState[]): void {
    let i = 0;
    while (i < this.waiting.length && this.numAdmitted < this.config.maxNumSeqs) {
      const req = this.waiting[i]!;
      if (this.waitsForFork(req)) {
        i++;
        continue;
      }
      if (req.prefetching || (req.keyer !== null && !req.keyer.done)) break; // FCFS: it is still being prepared
      const keys = req.keyer?.keys ?? null;
      // The cache never reads the disk here: only what was prefetched (when the keys were done) counts.
      // A warm-up may resume its whole prompt; others must compute at least its last token.
      const maxTokens = req.prefillOnly ? req.numPromptTokens : req.numPromptTokens - 1;
      const restored = this.cache.admit(req.seqId, {
        totalTokens: req.maxTotalTokens,
        firstChunkTokens: Math.min(this.config.prefillChunkTokens, req.prefillTarget),
        ...(keys !== null ? { prefix: { keys, tokens: req.promptTokenIds, maxTokens } } : {}),
        prefetched: req.prefetched,
      });
      if (restored === null) break;
      req.prefetched?.release();
      this.waiting.splice(i, 1);
      req.numComputedTokens = restored;
      if (req.numPreemptions === 0) req.numCachedTokens = restored;
      req.snapshotPoints = keys === null ? [] : this.snapshotPoints(req, keys, restored);
      if (keys !== null && keys.length > 0) req.lastPromptKey = { key: keys[keys.length - 1]!, numPages: keys.length };
      if (req.prefillOnly) req.warmKey = keys?.[keys.length - 1] ?? null;
      req.keyer = null;
      req.prefetched = null;
      req.status = req.numComputedTokens === req.prefillTarget && !req.prefillOnly ? 'decoding' : 'prefilling';
      req.admittedMs ??= nowMs;
      req.lastProgressMs = nowMs;
      this.running.push(req);
      if (req.prefillOnly && restored === req.numPromptTokens && req.warmKey !== null) {
        // Its whole prompt is cached already: make sure the snapshot has a file too, and let the engine finish it.
        this.cache.publishSnapshot(req.warmKey);
        warmedFromCache.push(req);
      }
    }
  }

  /** Admitted requests that still hold a slot, folding ones included. */
  private get numAdmitted(): number {
    return this.running.length;
  }

  /**
   * Where the prefill of a just admitted request snapshots its state: at the prompt's last whole page,
   * at the last whole page of its shared prefix (when the request names one), and one token before the
   * prompt's end (an exact snapshot: the same prompt again resumes from it) — each only past what was
   * restored. Chunks are cut there.
   */
  private snapshotPoints(req: RequestState, keys: readonly string[], restored: number): SnapshotPoint[] {
    const P = this.cache.pageTokens;
    if (req.prefillOnly) {
      // A warm-up snapshots its whole prompt (whole pages only) and nothing else.
      return keys.length > 0 && keys.length * P > restored ? [{ at: keys.length * P, key: keys[keys.length - 1]!, exact: null }] : [];
    }
    const points: SnapshotPoint[] = [];
    const pages = new Set([Math.min(Math.floor(req.sharedPrefixTokens / P), keys.length), keys.length]);
    for (const numPages of pages) if (numPages > 0) points.push({ at: numPages * P, key: keys[numPages - 1]!, exact: null });
    const last = req.numPromptTokens - 1;
    const q = Math.floor(last / P); // = keys.length
    if (last > 0 && last % P !== 0 && req.samplesAfterPrefill) {
      const baseKey = q === 0 ? '' : keys[q - 1]!;
      const tail = req.promptTokenIds.slice(q * P, last);
      points.push({ at: last, key: exactKey(baseKey, tail), exact: { baseKey, tail } });
    }
    return points.filter((p) => p.at > restored).sort((a, b) => a.at - b.at);
  }

  /**
   * Gets pages for positions [startPos, startPos + numTokens) of `req`. When a full-attention pool has
   * none left: drop folding requests, then preempt the newest running request admitted after `req`;
   * with none, a prefill takes a smaller chunk, and otherwise `req` itself is preempted (a FOLDING one
   * just finishes without its snapshot). Returns the tokens granted (0 = none this step).
   */
  private allocate(req: RequestState, startPos: number, numTokens: number, step: StepPlan): number {
    for (;;) {
      if (this.cache.append(req.seqId, startPos, numTokens)) return numTokens;
      const victim = this.victimFor(req);
      if (victim !== null) {
        step.remove(victim);
        this.evict(victim);
        continue;
      }
      if (req.status === 'prefilling' && numTokens > 1) {
        numTokens = Math.ceil(numTokens / 2);
        continue;
      }
      this.evict(req);
      return 0;
    }
  }

  /**
   * A folding request, else the newest running request admitted after `req`; null when `req` is the
   * newest. A request holding logits for its grammar mask (structured outputs) is not taken: its
   * sampled-but-not-yet-chosen token lives in the step runner.
   */
  private victimFor(req: RequestState): RequestState | null {
    const folding = this.running.find((r) => r.status === 'folding' && r !== req);
    if (folding !== undefined) return folding;
    for (let i = this.running.length - 1; i >= 0; i--) {
      const r = this.running[i]!;
      if (r === req) return null;
      if (!r.awaitingGrammar) return r;
    }
    return null;
  }

  /** Takes a running request's memory back: a folding one finishes now, others are preempted. */
  private evict(req: RequestState): void {
    if (req.status === 'folding') {
      this.retire(req, 'finished', performance.now());
      return;
    }
    this.preempt(req);
  }

  /**
   * PREEMPTED: frees everything the request holds and puts it first in the queue; when readmitted it
   * recomputes its prompt and generated tokens (resuming from a prefix snapshot when there is one).
   */
  private preempt(req: RequestState): void {
    const r = this.running.indexOf(req);
    if (r >= 0) this.running.splice(r, 1);
    this.cache.free(req.seqId);
    req.status = 'waiting';
    req.numComputedTokens = 0;
    req.numPreemptions++;
    this.numPreemptions++;
    req.snapshotPoints = [];
    if (req.samplesAfterPrefill) req.promptLogprobs = [];
    this.startKeys(req);
    this.waiting.unshift(req);
  }

  /** Tokens a prefilling request would take with an unlimited budget (a chunk never crosses a snapshot point). */
  private prefillNeed(req: RequestState): number {
    const next = req.snapshotPoints[0];
    const toSnapshot = next !== undefined && req.numComputedTokens < next.at ? next.at - req.numComputedTokens : Infinity;
    const scores = this.config.attentionScores;
    const scoreCap = scores === undefined ? Infinity : chunkTokensForScores(req.numComputedTokens, scores.bytes, scores.heads);
    return Math.min(req.numPromptTokensLeft, this.config.prefillChunkTokens, toSnapshot, scoreCap);
  }

  /**
   * Records that a scheduled chunk was computed (its states and keys/values are in the pools); at a
   * snapshot point the prefix is snapshotted; after the last prefill chunk the request decodes.
   */
  completePrefill(chunk: ScheduledChunk): void {
    const req = chunk.request;
    if (req.isFinished || req.status !== 'prefilling') return;
    req.numComputedTokens = chunk.startPos + chunk.numTokens;
    const point = req.snapshotPoints[0];
    if (point !== undefined && point.at === req.numComputedTokens) {
      this.cache.snapshot(req.seqId, point.key, point.at, point.exact, req.prefillOnly);
      req.snapshotPoints.shift();
    }
    if (req.numComputedTokens === req.prefillTarget) req.status = 'decoding';
  }

  /** Records that a decode (or fold) step computed the request's token at numComputedTokens. */
  completeDecode(req: RequestState): void {
    if (req.isFinished) return;
    req.numComputedTokens++;
    if (req.status === 'folding') {
      this.snapshotEnd(req);
      this.retire(req, 'finished', performance.now());
    }
  }

  /** An exact snapshot of everything the request computed: prompt + completion (+ stop token). */
  private snapshotEnd(req: RequestState): void {
    const P = this.cache.pageTokens;
    const s = req.numComputedTokens;
    const q = Math.floor(s / P);
    const from = req.lastPromptKey;
    const baseKey = q === 0 ? '' : extendKey(from.key, from.numPages, (i) => req.tokenAt(i), q, P);
    if (s % P === 0) {
      this.cache.snapshot(req.seqId, baseKey, s);
      return;
    }
    const tail = req.tokens(q * P, s).slice();
    this.cache.snapshot(req.seqId, exactKey(baseKey, tail), s, { baseKey, tail });
  }

  /**
   * FINISHED (stop, length, error). The client is done with it at once; with prefix caching a request
   * that ended normally first FOLDS (one more step feeds its last token, then its state is snapshotted
   * as the start of the conversation's next turn) and is freed after that.
   */
  finish(req: RequestState, reason: FinishReason, nowMs = performance.now()): void {
    if (req.isFinished) return;
    if (req.status === 'folding') {
      this.retire(req, 'finished', nowMs); // e.g. its fold step failed: no snapshot
      return;
    }
    req.finishReason = reason;
    const ended =
      (reason === 'stop' || reason === 'length') &&
      this.usesPrefixCache(req) &&
      (req.status === 'decoding' || req.status === 'prefilling') &&
      this.running.includes(req) &&
      (this.config.snapshotsGeneratedTokens !== false || req.numTokens === req.numPromptTokens);
    if (ended && req.numComputedTokens === req.numTokens) this.snapshotEnd(req); // nothing left to feed (a grammar that completed)
    if (!ended || req.numComputedTokens !== req.numTokens - 1) {
      this.retire(req, 'finished', nowMs);
      return;
    }
    req.status = 'folding';
    req.finishedMs = nowMs;
    this.byId.delete(req.requestId);
  }

  /** ABORTED from any state; returns the request, or undefined for an unknown / finished id. */
  abort(requestId: string, nowMs = performance.now()): RequestState | undefined {
    const req = this.byId.get(requestId);
    if (req === undefined || req.isFinished) return undefined;
    req.finishReason = 'abort';
    this.retire(req, 'aborted', nowMs);
    return req;
  }

  private retire(req: RequestState, status: 'finished' | 'aborted', nowMs: number): void {
    if (req.status !== 'folding') req.finishedMs = nowMs;
    req.status = status;
    const w = this.waiting.indexOf(req);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(req);
    if (r >= 0) this.running.splice(r, 1);
    if (this.byId.get(req.requestId) === req) this.byId.delete(req.requestId);
    this.cache.free(req.seqId);
    req.prefetched?.release(); // ended while waiting with a disk read in hand
    req.prefetched = null;
  }
}

/** What one schedule() call has planned so far, and its budget. */
class StepPlan {
  readonly decodes: RequestState[] = [];
  readonly prefills: ScheduledChunk[] = [];

  /** Tokens not yet planned. */
  budget: number;

  constructor(maxBatchedTokens: number) {
    this.budget = maxBatchedTokens;
  }

  addDecode(req: RequestState): void {
    this.decodes.push(req);
    this.budget--;
  }

  addPrefill(chunk: ScheduledChunk): void {
    this.prefills.push(chunk);
  }

  /** Takes a preempted request out of the plan (and its decode token out of the budget). */
  remove(req: RequestState): void {
    const d = this.decodes.indexOf(req);
    if (d >= 0) {
      this.decodes.splice(d, 1);
      this.budget++;
    }
    const p = this.prefills.findIndex((c) => c.request === req);
    if (p >= 0) this.prefills.splice(p, 1);
  }

  output(warmedFromCache: readonly RequestState[]): SchedulerOutput {
    const prefillTokens = this.prefills.reduce((n, c) => n + c.numTokens, 0);
    return { decodes: this.decodes, prefills: this.prefills, numScheduledTokens: this.decodes.length + prefillTokens, warmedFromCache };
  }
}
