// EngineCore: the step loop's state in one object — Scheduler + CacheManager + StepRunner — turning
// scheduled steps into TokenEvents. It lives in the worker thread (worker.ts) but knows nothing about
// threads: submit/abort/step are plain calls, events go to a callback.
import { join } from 'node:path';
import { CacheManager, type CacheSpec, type SnapshotFolderOptions } from '../cache/cache-manager.ts';
import { RequestRejectedError } from './errors.ts';
import { isGrowingKind, type ModelConfig } from './model/config.ts';
import { kvGroupSpecs, stateTensorSpecs } from './model/layer-plan.ts';
import { RequestState } from './request-state.ts';
import { Scheduler } from './scheduler.ts';
import type { TokenConstraint } from './grammar/token-constraint.ts';
import { StepRunner, type ForwardModel, type SampledResult } from './step-runner.ts';
import type { EngineStats, FinishReason, GenerateRequest, PrefixCacheDeletion, PrefixCacheEntryInfo, TokenEvent } from './types.ts';
import type { FaultHook } from './faults.ts';

export interface EngineCoreOptions {
  /** State slots (recurrent state of every layer) = most requests running at once (default 64). */
  readonly maxNumSeqs?: number;
  /** KV page pool size in bytes (default: enough for maxNumSeqs SWA sequences; 1 GiB for full attention). */
  readonly kvCacheBytes?: number;
  /** KV pool size in pages (wins over kvCacheBytes). */
  readonly kvPages?: number;
  /** Tokens per KV page (default 64). */
  readonly pageTokens?: number;
  /** Token budget of one step (default 2048). */
  readonly maxBatchedTokens?: number;
  /** Longest prefill chunk (default 256). */
  readonly prefillChunkTokens?: number;
  /**
   * Bytes of one growing attention layer's score matrix a prefill chunk may make (4·H·T·(p + T) at
   * start p; models with full or MoBA layers): longer chunks are cut (default 256 MiB; Scheduler).
   */
  readonly maxAttentionScoreBytes?: number;
  /** Longest waiting queue before QueueFullError (default 1024). */
  readonly maxQueue?: number;
  /** prompt + max_tokens limit (default 2^24 for SWA/GLA models; the pool's capacity for full attention). */
  readonly maxModelLen?: number;
  /** Byte bound of prefix snapshots (recurrent states + window pages), LRU; 0 = off (default 512 MiB). */
  readonly prefixCacheBytes?: number;
  /**
   * Folder for prefix snapshots on disk, which several servers may share (../cache/snapshot-store.ts);
   * unset = memory only. Each model build and page size gets its own subfolder (EngineCoreEnv.modelTag),
   * and every file names its model, so snapshots are only ever restored into the model that wrote them.
   */
  readonly prefixCacheDir?: string;
  /** Byte bound of that folder, LRU, enforced by every server on it (default 16 GiB). */
  readonly prefixCacheDiskBytes?: number;
  /** Snapshots of at least this many tokens are written to the folder as soon as they are taken (default 4096). */
  readonly prefixShareMinTokens?: number;
  /** A snapshot read from the folder that takes longer is a miss (default 30 s). */
  readonly prefixCacheReadTimeoutSeconds?: number;
}

/** What the engine core gets from its host beyond options. */
export interface EngineCoreEnv {
  /** Names the model build (e.g. its built-model folder); prefix snapshots on disk are kept per tag. */
  readonly modelTag: string;
  readonly log: (message: string) => void;
  /** Called when work that was waiting (a prefix read from disk) can go on: run steps again. */
  readonly wake?: () => void;
  /** Grammar matchers alive in the grammar worker, null before it started (stats only). */
  readonly grammarMatchers?: () => number | null;
  /** Tests only: plays injected faults at points of each step (faults.ts). */
  readonly faultHook?: FaultHook;
  /** Called when events or stats changed outside a step (a disk write ended): post them. */
  readonly notify?: () => void;
}

export const ENGINE_DEFAULTS = Object.freeze({
  maxNumSeqs: 64,
  pageTokens: 64,
  maxBatchedTokens: 2048,
  // SWA costs each query W + T keys, so short chunks are cheaper per token; 256 measured best at
  // the reference size on CPU (bench/throughput.ts), and it keeps decode steps short during long prefills.
  prefillChunkTokens: 256,
  // At 8 heads a 256-token chunk stays whole up to ~32K of context; at 32 heads up to ~8K.
  maxAttentionScoreBytes: 256 * 2 ** 20,
  maxQueue: 1024,
  prefixCacheBytes: 512 * 2 ** 20,
  prefixCacheDiskBytes: 16 * 2 ** 30,
  // A reference-size snapshot is 2 MiB, a SpikingBrain-7B one ~228 MiB, whatever the prefix length;
  // below a few thousand tokens recomputing is cheaper than publishing (the rest spill on eviction).
  prefixShareMinTokens: 4096,
  prefixCacheReadTimeoutSeconds: 30,
  /** Context limit of models without full attention (GLA state and window are constant-size). */
  maxModelLenLinear: 1 << 24,
});

/** The snapshot folder of this model build and page size. */
function snapshotFolder(opts: EngineCoreOptions, dir: string, env: EngineCoreEnv): SnapshotFolderOptions {
  const pageTokens = opts.pageTokens ?? ENGINE_DEFAULTS.pageTokens;
  return {
    dir: join(dir, `${env.modelTag}-p${pageTokens}`),
    maxBytes: opts.prefixCacheDiskBytes ?? ENGINE_DEFAULTS.prefixCacheDiskBytes,
    modelIdentity: env.modelTag,
    shareMinTokens: opts.prefixShareMinTokens ?? ENGINE_DEFAULTS.prefixShareMinTokens,
    readTimeoutMs: 1000 * (opts.prefixCacheReadTimeoutSeconds ?? ENGINE_DEFAULTS.prefixCacheReadTimeoutSeconds),
    log: env.log,
    ...(env.notify !== undefined ? { onActivity: env.notify } : {}),
  };
}

/** Minimum interval between two `progress` events of one request. */
const PROGRESS_INTERVAL_MS = 250;
/** Model runs that failed one after the other before the model itself is taken for broken (step() throws). */
const MAX_CONSECUTIVE_FAILED_RUNS = 3;

export type EventSink = (requestId: string, event: TokenEvent) => void;

export class EngineCore {
  readonly config: ModelConfig;
  readonly maxModelLen: number;
  readonly cache: CacheManager;
  private readonly scheduler: Scheduler;
  private readonly runner: StepRunner;
  private readonly emit: EventSink;
  private readonly faultHook: FaultHook | undefined;
  private stepping = false;
  private consecutiveFailedRuns = 0;
  private readonly notify: () => void;
  /** Aborts that arrived while a step was in flight; applied when it ends. */
  private readonly pendingAborts = new Set<string>();
  private readonly grammarMatchers: () => number | null;

  constructor(model: ForwardModel, config: ModelConfig, opts: EngineCoreOptions, emit: EventSink, env: EngineCoreEnv = { modelTag: 'model', log: () => {} }) {
    this.config = config;
    this.emit = emit;
    this.grammarMatchers = env.grammarMatchers ?? (() => null);
    this.faultHook = env.faultHook;
    const maxNumSeqs = opts.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs;
    const maxBatchedTokens = opts.maxBatchedTokens ?? ENGINE_DEFAULTS.maxBatchedTokens;
    const prefillChunkTokens = Math.min(opts.prefillChunkTokens ?? ENGINE_DEFAULTS.prefillChunkTokens, maxBatchedTokens);
    const spec: CacheSpec = {
      stateFloats: stateTensorSpecs(config).map((s) => s.floats),
      kvGroups: kvGroupSpecs(config),
    };
    this.cache = new CacheManager(spec, {
      maxNumSeqs,
      maxChunkTokens: prefillChunkTokens,
      pageTokens: opts.pageTokens ?? ENGINE_DEFAULTS.pageTokens,
      ...(opts.kvPages !== undefined ? { kvPages: opts.kvPages } : {}),
      ...(opts.kvCacheBytes !== undefined ? { kvCacheBytes: opts.kvCacheBytes } : {}),
      prefixCacheBytes: opts.prefixCacheBytes ?? ENGINE_DEFAULTS.prefixCacheBytes,
      ...(opts.prefixCacheDir !== undefined ? { snapshotFolder: snapshotFolder(opts, opts.prefixCacheDir, env) } : {}),
    });
    if (this.cache.store !== null) env.log(`prefix snapshots on disk: ${this.cache.store.dir}`);
    this.notify = env.notify ?? (() => {});
    const fullAttention = spec.kvGroups.some((g) => g.kind === 'full');
    this.maxModelLen =
      opts.maxModelLen ??
      (fullAttention
        ? Math.min(this.cache.maxTokensPerSequence, config.maxPositionEmbeddings ?? Infinity)
        : ENGINE_DEFAULTS.maxModelLenLinear);
    this.scheduler = new Scheduler(
      {
        maxNumSeqs,
        maxBatchedTokens,
        prefillChunkTokens,
        maxQueue: opts.maxQueue ?? ENGINE_DEFAULTS.maxQueue,
        maxModelLen: this.maxModelLen,
        vocabSize: config.vocabSize,
        // MoBA: a prompt token selects chunks, a generated one attends densely (StepRunner).
        snapshotsGeneratedTokens: !config.layerKinds.includes('moba'),
        ...(config.layerKinds.some(isGrowingKind)
          ? { attentionScores: { bytes: opts.maxAttentionScoreBytes ?? ENGINE_DEFAULTS.maxAttentionScoreBytes, heads: config.numHeads } }
          : {}),
      },
      this.cache,
      env.wake,
    );
    this.runner = new StepRunner(model, config, this.cache);
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /** Preemptions since start (full-attention pool ran out; the request recomputed). */
  get numPreemptions(): number {
    return this.scheduler.numPreemptions;
  }

  /**
   * Queues a request; throws RequestRejectedError / QueueFullError. A constrained request brings its
   * grammar matcher, which is closed when the request ends (or here, when it is refused).
   */
  submit(req: GenerateRequest, constraint?: TokenConstraint): void {
    if (req.prefillOnly === true) {
      // A warm-up computes the prompt's whole pages only: that is where its snapshot is taken.
      const P = this.cache.pageTokens;
      if (this.cache.prefix === null) throw new RequestRejectedError('the prefix cache is off (--prefix-cache-bytes 0): there is nothing to warm', null);
      const numTokens = Math.floor(req.promptTokenIds.length / P) * P;
      if (numTokens === 0) throw new RequestRejectedError(`the prompt has ${req.promptTokenIds.length} tokens; a snapshot needs at least one page (${P} tokens)`, 'prompt');
      if (req.sampling.promptLogprobs !== null) throw new RequestRejectedError('a warm-up computes no prompt logprobs', null);
      req = { ...req, promptTokenIds: req.promptTokenIds.slice(0, numTokens) };
    }
    const state = new RequestState(req, performance.now());
    try {
      this.scheduler.submit(state);
    } catch (err) {
      constraint?.close();
      throw err;
    }
    if (constraint !== undefined) this.runner.constrain(state.seqId, constraint);
  }

  /** Constrained requests whose next token waits for the grammar worker (nothing else to run: wait for it). */
  get numAwaitingGrammar(): number {
    return this.runner.numAwaitingGrammar;
  }

  /** The `limit` most recently used prefix snapshots (memory and disk). */
  listPrefixCache(limit: number): Promise<PrefixCacheEntryInfo[]> {
    return this.cache.listSnapshots(limit);
  }

  /** Deletes a prefix snapshot from memory and disk. */
  deletePrefixCache(key: string): Promise<PrefixCacheDeletion> {
    return this.cache.deleteSnapshot(key);
  }

  /** Aborts a request in any state (deferred to the end of a step in flight). Unknown ids are ignored. */
  abort(requestId: string): void {
    if (this.stepping) {
      this.pendingAborts.add(requestId);
      return;
    }
    const req = this.scheduler.abort(requestId);
    if (req !== undefined) this.finished(req);
  }

  /** Writes the prefix snapshots held in memory to disk, when there is a disk store, and waits (shutdown). */
  async flushSnapshots(): Promise<void> {
    await this.cache.persistSnapshots();
  }

  abortAll(): void {
    for (const id of this.scheduler.requestIds()) this.abort(id);
  }

  /**
   * One scheduled step: schedule, run the model, turn sampled tokens into events. False = nothing to
   * run and nothing to prepare (wait for a message or a disk read).
   * Failures are contained where their damage is known: a model run that throws fails the step's
   * requests, completing one request's chunk that throws fails that request, and the step goes on.
   * Anything else that throws escapes (scheduling, or failing and freeing a request): the queues and
   * page tables may be half-updated, so the caller must fail every request and start a new core
   * (worker.ts exits; the Engine restarts it). So does a model that fails MAX_CONSECUTIVE_FAILED_RUNS runs.
   */
  async step(): Promise<boolean> {
    if (this.stepping) throw new Error('EngineCore.step is not reentrant');
    // Constrained tokens whose grammar mask arrived since the last step go first: their sequences
    // decode in this step.
    const late = this.runner.sampleHeld();
    this.emitSampled(late, performance.now());
    const out = this.scheduler.schedule(performance.now());
    for (const req of out.warmedFromCache) this.finish(req, 'length'); // nothing left to compute
    if (out.numScheduledTokens === 0) return late.length > 0 || out.warmedFromCache.length > 0 || this.scheduler.hasPreparation;
    const stepRequests = [...out.decodes, ...out.prefills.map((c) => c.request)];
    this.faultHook?.('schedule', stepRequests);
    this.stepping = true;
    let sampled: SampledResult[];
    try {
      await this.faultHook?.('execute', stepRequests);
      sampled = await this.runner.execute(out);
      this.consecutiveFailedRuns = 0;
    } catch (err) {
      const message = errorText(err);
      this.stepping = false;
      for (const req of stepRequests) this.finish(req, 'error', message);
      this.applyPendingAborts();
      if (++this.consecutiveFailedRuns >= MAX_CONSECUTIVE_FAILED_RUNS) {
        throw new Error(`${this.consecutiveFailedRuns} model runs in a row failed; the last: ${message}`);
      }
      return true;
    }
    this.stepping = false;
    const now = performance.now();
    for (const req of out.decodes) this.scheduler.completeDecode(req);
    for (const chunk of out.prefills) {
      const req = chunk.request;
      try {
        this.faultHook?.('complete', [req]);
        this.scheduler.completePrefill(chunk);
      } catch (err) {
        this.finish(req, 'error', errorText(err));
        continue;
      }
      if (req.reportProgress && req.status === 'prefilling' && now - req.lastProgressMs >= PROGRESS_INTERVAL_MS) {
        req.lastProgressMs = now;
        this.emit(req.requestId, {
          type: 'progress',
          processedTokens: req.numComputedTokens,
          totalTokens: req.prefillTarget,
          cachedTokens: req.numCachedTokens,
        });
      }
    }
    this.emitSampled(sampled, now);
    this.applyPendingAborts();
    return true;
  }

  /** Turns sampled tokens into events: stop tokens and a complete grammar finish, max_tokens too. */
  private emitSampled(sampled: readonly SampledResult[], now: number): void {
    for (const result of sampled) {
      const req = result.request;
      if (req.isFinished) continue;
      if (req.firstTokenMs === null) {
        req.firstTokenMs = now;
        if (req.sampling.promptLogprobs !== null) this.emit(req.requestId, { type: 'prompt_logprobs', entries: req.promptLogprobs });
      }
      if (req.prefillOnly) {
        this.finish(req, 'length'); // a warm-up ends with its prompt; the sampled token is dropped
        continue;
      }
      if ('grammarEnd' in result) {
        // A complete grammar ends the text like a stop token would; one that cannot go on is an error.
        if (result.grammarEnd === 'complete') this.finish(req, 'stop');
        else this.finish(req, 'error', 'the grammar admits no further token');
        continue;
      }
      const token = result.token;
      if (this.runner.isStopToken(req, token.tokenId)) {
        req.stopTokenId = token.tokenId;
        this.finish(req, 'stop');
        continue;
      }
      req.outputTokenIds.push(token.tokenId);
      this.emit(req.requestId, {
        type: 'token',
        tokenId: token.tokenId,
        ...(token.logprob !== undefined ? { logprob: token.logprob } : {}),
        ...(token.top !== undefined ? { top: token.top } : {}),
      });
      if (req.outputTokenIds.length >= req.sampling.maxTokens) this.finish(req, 'length');
    }
  }

  private applyPendingAborts(): void {
    const ids = [...this.pendingAborts];
    this.pendingAborts.clear();
    for (const id of ids) this.abort(id);
  }

  private finish(req: RequestState, reason: FinishReason, errorMessage?: string): void {
    const reported = req.status === 'folding'; // its client already has its `done`
    this.scheduler.finish(req, reason);
    if (!reported) this.finished(req, errorMessage);
  }

  /** Emits `done` for a request that just left the scheduler (its memory is already free). */
  private finished(req: RequestState, errorMessage?: string): void {
    this.runner.forget(req.seqId);
    const end = req.finishedMs ?? performance.now();
    const admitted = req.admittedMs ?? end;
    const firstToken = req.firstTokenMs ?? end;
    const done: TokenEvent = {
      type: 'done',
      finishReason: req.finishReason ?? 'abort',
      stopTokenId: req.stopTokenId,
      promptTokens: req.numPromptTokens,
      // The stop token counts as generated (as in vLLM's usage), though it is not emitted.
      completionTokens: req.outputTokenIds.length + (req.stopTokenId !== null ? 1 : 0),
      cachedTokens: req.numCachedTokens,
      ...(errorMessage !== undefined ? { errorMessage } : {}),
      timing: {
        queueSeconds: (admitted - req.arrivalMs) / 1000,
        prefillSeconds: (firstToken - admitted) / 1000,
        decodeSeconds: (end - firstToken) / 1000,
      },
    };
    // A warm-up that stored its snapshot answers once the snapshot is on disk too (another replica
    // can use it as soon as the caller hears back); its memory is already free.
    const key = req.prefillOnly && req.finishReason === 'length' ? req.warmKey : null;
    if (key === null || !this.cache.hasSnapshot(key)) {
      this.emit(req.requestId, done);
      return;
    }
    const withSnapshot = (): TokenEvent => ({ ...done, snapshot: { key, onDisk: this.cache.isOnDisk(key) } });
    const written = this.cache.whenWritten(key);
    if (written === null) {
      this.emit(req.requestId, withSnapshot());
      return;
    }
    void written.then(() => {
      this.emit(req.requestId, withSnapshot());
      this.notify();
    });
  }

  stats(): EngineStats {
    const u = this.cache.usage();
    const matchers = this.grammarMatchers();
    const disk = this.cache.diskStats();
    const waitingPromptTokens = this.scheduler.waitingPromptTokens;
    return {
      numRunning: this.scheduler.numRunning,
      numWaiting: this.scheduler.numWaiting,
      waitingPromptTokens,
      kvPagesUsed: u.pagesUsed,
      kvPagesTotal: u.pagesTotal,
      stateSlotsUsed: u.slotsUsed,
      stateSlotsTotal: u.slotsTotal,
      stateBytesInUse: u.stateBytesInUse,
      prefixCacheBytes: u.prefixCacheBytes,
      spikeZeros: this.runner.spikeZeros,
      numPreemptions: this.scheduler.numPreemptions,
      spikeValues: this.runner.spikeValues,
      ...(matchers !== null ? { grammarMatchers: matchers } : {}),
      ...(disk !== null ? { prefixStore: disk } : {}),
    };
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
