// EngineCore: the step loop's state in one object — Scheduler + CacheManager + StepRunner — turning
// scheduled steps into TokenEvents. It lives in the worker thread (worker.ts) but knows nothing about
// threads: submit/abort/step are plain calls, events go to a callback.
import { join } from 'node:path';
import { CacheManager, type CacheSpec } from '../cache/cache-manager.ts';
import { SnapshotStore } from '../cache/snapshot-store.ts';
import type { ModelConfig } from './model/config.ts';
import { RequestState } from './request-state.ts';
import { Scheduler } from './scheduler.ts';
import { StepRunner, type ForwardModel, type SampledResult } from './step-runner.ts';
import type { EngineStats, FinishReason, GenerateRequest, TokenEvent } from './types.ts';

export interface EngineCoreOptions {
  /** GLA state slots = most requests running at once (default 64). */
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
  /** Longest waiting queue before QueueFullError (default 1024). */
  readonly maxQueue?: number;
  /** prompt + max_tokens limit (default 2^24 for SWA/GLA models; the pool's capacity for full attention). */
  readonly maxModelLen?: number;
  /** Byte bound of prefix snapshots (GLA state + window pages), LRU; 0 = off (default 512 MiB). */
  readonly prefixCacheBytes?: number;
  /**
   * Folder for prefix snapshots on disk (../cache/snapshot-store.ts); unset = memory only. Each model
   * build and page size gets its own subfolder (EngineCoreEnv.modelTag), so snapshots are only ever
   * restored into the model that wrote them.
   */
  readonly prefixCacheDir?: string;
  /** Byte bound of that folder, LRU (default 16 GiB). */
  readonly prefixCacheDiskBytes?: number;
}

/** What the engine core gets from its host beyond options. */
export interface EngineCoreEnv {
  /** Names the model build (e.g. its built-model folder); prefix snapshots on disk are kept per tag. */
  readonly modelTag: string;
  readonly log: (message: string) => void;
  /** Called when work that was waiting (a prefix read from disk) can go on: run steps again. */
  readonly wake?: () => void;
}

export const ENGINE_DEFAULTS = Object.freeze({
  maxNumSeqs: 64,
  pageTokens: 64,
  maxBatchedTokens: 2048,
  // SWA costs each query W + T keys, so short chunks are cheaper per token; 256 measured best at
  // the reference size on CPU (bench/throughput.ts), and it keeps decode steps short during long prefills.
  prefillChunkTokens: 256,
  maxQueue: 1024,
  prefixCacheBytes: 512 * 2 ** 20,
  prefixCacheDiskBytes: 16 * 2 ** 30,
  /** Context limit of models without full attention (GLA state and window are constant-size). */
  maxModelLenLinear: 1 << 24,
});

/** The on-disk snapshot folder of this model build and page size. */
function snapshotStore(spec: CacheSpec, opts: EngineCoreOptions, dir: string, env: EngineCoreEnv): SnapshotStore {
  const pageTokens = opts.pageTokens ?? ENGINE_DEFAULTS.pageTokens;
  const layout = {
    stateLengths: Array.from({ length: spec.numGlaLayers }, () => spec.numKvHeads * spec.headDim * spec.headDim),
    floatsPerPage: spec.numAttnLayers * 2 * spec.numKvHeads * pageTokens * spec.headDim,
  };
  const store = new SnapshotStore(join(dir, `${env.modelTag}-p${pageTokens}`), opts.prefixCacheDiskBytes ?? ENGINE_DEFAULTS.prefixCacheDiskBytes, layout, env.log);
  env.log(`prefix snapshots on disk: ${store.dir} (${store.size} found, ${(store.bytes / 2 ** 20).toFixed(0)} MiB)`);
  return store;
}

/** Minimum interval between two `progress` events of one request. */
const PROGRESS_INTERVAL_MS = 250;

export type EventSink = (requestId: string, event: TokenEvent) => void;

export class EngineCore {
  readonly config: ModelConfig;
  readonly maxModelLen: number;
  readonly cache: CacheManager;
  private readonly scheduler: Scheduler;
  private readonly runner: StepRunner;
  private readonly emit: EventSink;
  private stepping = false;
  /** Aborts that arrived while a step was in flight; applied when it ends. */
  private readonly pendingAborts = new Set<string>();
  /** Every request submitted and not yet finished (for stats: the prompt tokens still waiting). */
  private readonly live = new Map<string, RequestState>();

  constructor(model: ForwardModel, config: ModelConfig, opts: EngineCoreOptions, emit: EventSink, env: EngineCoreEnv = { modelTag: 'model', log: () => {} }) {
    this.config = config;
    this.emit = emit;
    const maxNumSeqs = opts.maxNumSeqs ?? ENGINE_DEFAULTS.maxNumSeqs;
    const maxBatchedTokens = opts.maxBatchedTokens ?? ENGINE_DEFAULTS.maxBatchedTokens;
    const prefillChunkTokens = Math.min(opts.prefillChunkTokens ?? ENGINE_DEFAULTS.prefillChunkTokens, maxBatchedTokens);
    const numGlaLayers = config.layerKinds.filter((k) => k === 'gla').length;
    const spec: CacheSpec = {
      numAttnLayers: config.layerKinds.length - numGlaLayers,
      numGlaLayers,
      numKvHeads: config.numKvHeads,
      headDim: config.headDim,
      windowTokens: config.slidingWindow,
    };
    this.cache = new CacheManager(spec, {
      maxNumSeqs,
      maxChunkTokens: prefillChunkTokens,
      pageTokens: opts.pageTokens ?? ENGINE_DEFAULTS.pageTokens,
      ...(opts.kvPages !== undefined ? { kvPages: opts.kvPages } : {}),
      ...(opts.kvCacheBytes !== undefined ? { kvCacheBytes: opts.kvCacheBytes } : {}),
      prefixCacheBytes: opts.prefixCacheBytes ?? ENGINE_DEFAULTS.prefixCacheBytes,
      ...(opts.prefixCacheDir !== undefined ? { snapshotStore: snapshotStore(spec, opts, opts.prefixCacheDir, env) } : {}),
    });
    const fullAttention = spec.numAttnLayers > 0 && spec.windowTokens === null;
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
      },
      this.cache,
      env.wake,
    );
    this.runner = new StepRunner(model, config, this.cache);
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /** Queues a request; throws RequestRejectedError / QueueFullError. */
  submit(req: GenerateRequest): void {
    const state = new RequestState(req, performance.now());
    this.scheduler.submit(state);
    this.live.set(state.requestId, state);
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

  /** One scheduled step: schedule, run the model, turn sampled tokens into events. False = nothing to run. */
  async step(): Promise<boolean> {
    if (this.stepping) throw new Error('EngineCore.step is not reentrant');
    const out = this.scheduler.schedule(performance.now());
    if (out.numScheduledTokens === 0) return false;
    this.stepping = true;
    let sampled: SampledResult[];
    try {
      sampled = await this.runner.execute(out);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.stepping = false;
      for (const req of [...out.decodes, ...out.prefills.map((c) => c.request)]) this.finish(req, 'error', message);
      this.applyPendingAborts();
      return true;
    }
    this.stepping = false;
    const now = performance.now();
    for (const req of out.decodes) this.scheduler.completeDecode(req);
    for (const chunk of out.prefills) {
      this.scheduler.completePrefill(chunk);
      const req = chunk.request;
      if (req.reportProgress && req.status === 'prefilling' && now - req.lastProgressMs >= PROGRESS_INTERVAL_MS) {
        req.lastProgressMs = now;
        this.emit(req.requestId, {
          type: 'progress',
          processedTokens: req.numComputedTokens,
          totalTokens: req.numPromptTokens,
          cachedTokens: req.numCachedTokens,
        });
      }
    }
    for (const { request: req, token } of sampled) {
      if (req.isFinished) continue;
      if (req.firstTokenMs === null) {
        req.firstTokenMs = now;
        if (req.sampling.promptLogprobs !== null) this.emit(req.requestId, { type: 'prompt_logprobs', entries: req.promptLogprobs });
      }
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
    this.applyPendingAborts();
    return true;
  }

  private applyPendingAborts(): void {
    const ids = [...this.pendingAborts];
    this.pendingAborts.clear();
    for (const id of ids) this.abort(id);
  }

  private finish(req: RequestState, reason: FinishReason, errorMessage?: string): void {
    this.scheduler.finish(req, reason);
    this.finished(req, errorMessage);
  }

  /** Emits `done` for a request that just left the scheduler (its memory is already free). */
  private finished(req: RequestState, errorMessage?: string): void {
    this.live.delete(req.requestId);
    this.runner.forget(req.requestId);
    const end = req.finishedMs ?? performance.now();
    const admitted = req.admittedMs ?? end;
    const firstToken = req.firstTokenMs ?? end;
    this.emit(req.requestId, {
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
    });
  }

  stats(): EngineStats {
    const u = this.cache.usage();
    let waitingPromptTokens = 0;
    for (const req of this.live.values()) if (req.status === 'waiting') waitingPromptTokens += req.numPromptTokens;
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
      spikeValues: this.runner.spikeValues,
    };
  }
}
