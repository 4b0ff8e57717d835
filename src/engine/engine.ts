// Engine: the main-thread face of the inference worker, used by the HTTP server. It starts the worker
// (model load, step loop: worker.ts), turns each request's events into an AsyncIterable, keeps the
// latest stats, and supervises the worker. Nothing here blocks: every heavy thing happens in the worker.
//
// Supervision. One Engine object lives as long as the server; workers come and go beneath it:
//
//   ready ──worker lost──▶ restarting ──new worker loaded──▶ ready
//     │    (exit, crash,      │  └──load failed──▶ (counts as another loss)
//     │     out of memory,    └──too many losses in the window──▶ failed   (liveness fails)
//     │     fatal, hung step)
//     └──shutdown()──▶ closing ──▶ closed
//
// A lost worker fails every request it held at once (streams end with an error, submissions not yet
// accepted are refused as unavailable); while restarting, generate() refuses with
// EngineUnavailableError. The new worker reloads the model from the built-graph cache. When to
// restart and when to give up: restart-policy.ts. A step that runs longer than stepTimeoutMs is taken
// for a hung worker (the worker writes the start of each step into shared memory, read here).
import type { Worker } from 'node:worker_threads';
import { EngineError, EngineUnavailableError, RequestRejectedError } from './errors.ts';
import type { InjectedFault } from './faults.ts';
import type { ModelConfig } from './model/config.ts';
import type { WeightDtype } from './model/onnx/graph-builder.ts';
import { RestartPolicy, RESTART_DEFAULTS } from './restart-policy.ts';
import type { EngineHealth, EngineStats, PrefixCacheDeletion, PrefixCacheEntryInfo, SubmitRequest, TokenEvent } from './types.ts';
import type { EngineCoreOptions } from './engine-core.ts';
import { launch, toError, type ReadyMessage, type WorkerRun } from './worker-launch.ts';
import type { FromWorker, PrefixCacheCall, PrefixCacheReply, ToWorker } from './worker-protocol.ts';
import { unpackEvent } from './wire-events.ts';

/** How the Engine reacts to a lost worker (see the diagram above). */
export interface SupervisionOptions {
  /** Restarts allowed within restartWindowMs before the engine gives up (default 5; 0 = never restart). */
  readonly maxRestarts?: number;
  /** Default 10 minutes. */
  readonly restartWindowMs?: number;
  /** Delay before the first restart in the window; doubles with each further failure (default 1 s, at most 30 s). */
  readonly initialBackoffMs?: number;
  /** A step running longer than this means the worker hangs: it is stopped and restarted (default 10 minutes; 0 = never). */
  readonly stepTimeoutMs?: number;
}

export interface EngineOptions extends EngineCoreOptions {
  readonly modelDir: string;
  readonly cacheDir?: string;
  readonly intraOpThreads?: number;
  /**
   * Threads of a second onnxruntime session over the decode graph for decode steps of 1–4 streams, or
   * unset for one session, or 'auto' (Model.load's decodeIntraOpThreads: a second copy of the weights).
   */
  readonly decodeIntraOpThreads?: number | 'auto';
  readonly device?: 'cpu' | 'webgpu' | 'cuda';
  /** Storage of weight matrices (Model.load's weightDtype; default float32 on cpu, float16 on GPUs; or 'auto'). */
  readonly weightDtype?: WeightDtype | 'auto';
  /** Random weights with this raw config.json object instead of reading modelDir (benchmarks). */
  readonly randomWeightsConfig?: Record<string, unknown>;
  /** Compiled grammars the grammar worker keeps for structured outputs (LRU; default 64). */
  readonly grammarCacheEntries?: number;
  readonly supervision?: SupervisionOptions;
  /** TESTS ONLY: faults the worker plays (faults.ts). The CLI never sets this. */
  readonly faults?: readonly InjectedFault[];
  /** Bound of the worker's JS heap in MiB (Worker resourceLimits; default Node's). Tests set it small for the 'oom' fault. */
  readonly workerHeapMb?: number;
  /**
   * Longest prompt whose logprobs a request may ask for (default DEFAULT_MAX_PROMPT_LOGPROBS_TOKENS):
   * every prompt token's entry, with its alternatives, is kept until the first token.
   */
  readonly maxPromptLogprobsTokens?: number;
}

export const DEFAULT_MAX_PROMPT_LOGPROBS_TOKENS = 4096;

export interface EngineShutdownOptions {
  /**
   * How long to wait for the step in flight to end (a 7B prefill chunk takes ~12 s on a CPU) before
   * the worker is stopped regardless. Default 30 s. Writing prefix snapshots afterwards has its own allowance.
   */
  readonly stepTimeoutMs?: number;
}

export type EngineLogLevel = 'info' | 'warn' | 'error';
export type EngineLog = (message: string, level?: EngineLogLevel) => void;

const ZERO_STATS: EngineStats = Object.freeze({
  numRunning: 0,
  numWaiting: 0,
  waitingPromptTokens: 0,
  kvPagesUsed: 0,
  kvPagesTotal: 0,
  stateSlotsUsed: 0,
  stateSlotsTotal: 0,
  stateBytesInUse: 0,
  prefixCacheBytes: 0,
  spikeZeros: 0,
  numPreemptions: 0,
  spikeValues: 0,
});

const DEFAULT_SHUTDOWN_STEP_MS = 30_000;
/** After the last step: releasing the model. */
const SHUTDOWN_CLOSE_MS = 5000;
/** With prefix snapshots on disk, also the time to write the ones held in memory. */
const SHUTDOWN_PERSIST_MS = 60_000;
const DEFAULT_STEP_TIMEOUT_MS = 10 * 60_000;
/** A lost worker's thread must end before a new one starts (its memory); one that does not is stuck in native code. */
const RETIRE_TIMEOUT_MS = 10_000;

/** Events of one request, buffered until the consumer pulls them. */
class EventStream {
  private readonly events: TokenEvent[] = [];
  private waiter: (() => void) | null = null;
  readonly accepted: Promise<void>;
  accept!: () => void;
  reject!: (err: Error) => void;

  constructor() {
    this.accepted = new Promise<void>((resolve, reject) => {
      this.accept = resolve;
      this.reject = reject;
    });
    this.accepted.catch(() => undefined); // observed by generate(); avoid unhandled rejections
  }

  push(event: TokenEvent): void {
    this.events.push(event);
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async next(): Promise<TokenEvent> {
    while (this.events.length === 0) await new Promise<void>((resolve) => (this.waiter = resolve));
    return this.events.shift()!;
  }
}

function doneEvent(finishReason: 'abort' | 'error', errorMessage?: string): TokenEvent {
  return {
    type: 'done',
    finishReason,
    stopTokenId: null,
    promptTokens: 0,
    completionTokens: 0,
    cachedTokens: 0,
    ...(errorMessage !== undefined ? { errorMessage } : {}),
    timing: { queueSeconds: 0, prefillSeconds: 0, decodeSeconds: 0 },
  };
}


/** Resolves true when `p` settles within `ms`, false otherwise. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
    timer.unref();
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A promise with its resolve function. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

type State = 'ready' | 'restarting' | 'failed' | 'closing' | 'closed';

export class Engine {
  readonly config: ModelConfig;
  readonly maxModelLen: number;
  private readonly opts: EngineOptions;
  private readonly onLog: EngineLog;
  private readonly policy: RestartPolicy;
  private readonly stepTimeoutMs: number;
  /** The worker serving now, or the last one lost while restarting / failed. */
  private current: WorkerRun;
  /** A replacement worker still loading its model (shutdown stops it). */
  private loading: Worker | null = null;
  private readonly streams = new Map<string, EventStream>();
  private latestStats: EngineStats;
  private state: State = 'ready';
  private lastFailure: string | null = null;
  private numRestarts = 0;
  private restartTimer: NodeJS.Timeout | null = null;
  private readonly watchdog: NodeJS.Timeout | null;
  private shutdownDone: Promise<void> | null = null;
  /** Worker replies during shutdown (also resolved when the worker is lost meanwhile). */
  private stopped = signal();
  private closed = signal();
  /** Prefix-cache calls waiting for the worker's reply, by id (failed when the worker is lost or shut down). */
  private readonly prefixCalls = new Map<number, { resolve: (r: PrefixCacheReply) => void; reject: (err: Error) => void }>();
  private nextPrefixCallId = 1;
  private readonly maxPromptLogprobsTokens: number;

  private constructor(opts: EngineOptions, onLog: EngineLog, run: WorkerRun, ready: ReadyMessage) {
    this.opts = opts;
    this.onLog = onLog;
    this.maxPromptLogprobsTokens = opts.maxPromptLogprobsTokens ?? DEFAULT_MAX_PROMPT_LOGPROBS_TOKENS;
    const sup = opts.supervision ?? {};
    this.policy = new RestartPolicy({
      ...(sup.maxRestarts !== undefined ? { maxRestarts: sup.maxRestarts } : {}),
      ...(sup.restartWindowMs !== undefined ? { windowMs: sup.restartWindowMs } : {}),
      ...(sup.initialBackoffMs !== undefined ? { initialBackoffMs: sup.initialBackoffMs, maxBackoffMs: Math.max(sup.initialBackoffMs, RESTART_DEFAULTS.maxBackoffMs) } : {}),
    });
    this.stepTimeoutMs = sup.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
    this.config = ready.config;
    this.maxModelLen = ready.maxModelLen;
    this.latestStats = ready.stats;
    this.current = run;
    this.attach(run);
    this.watchdog = this.stepTimeoutMs > 0 ? setInterval(() => this.checkStep(), Math.min(1000, this.stepTimeoutMs / 4)) : null;
    this.watchdog?.unref();
  }

  /** Starts the worker; resolves when the model is loaded (rejects with ModelLoadError otherwise). */
  static async start(opts: EngineOptions, onLog: EngineLog = () => undefined): Promise<Engine> {
    const { run, ready } = await launch(opts, onLog);
    return new Engine(opts, onLog, run, ready);
  }

  /**
   * Streams the events of one request, ending with `done`. Throws (on the first pull, before any
   * event) RequestRejectedError, QueueFullError or EngineUnavailableError. Aborting `signal`, or
   * leaving the loop early, aborts the request and frees everything it holds. A worker lost
   * meanwhile ends the stream with `done` (finishReason 'error').
   *
   * Prompt ids given as an Int32Array cross to the worker as one memcpy (~3 ms for 3.5 M ids) instead
   * of element by element (a number[] of 3.5 M ids: 0.04-0.2 s of this thread, bench/tokenize.ts).
   * They are copied, not transferred: the caller still reads them (n > 1 choices, echo, usage).
   */
  async *generate(req: SubmitRequest, signal?: AbortSignal): AsyncGenerator<TokenEvent, void, undefined> {
    if (this.state !== 'ready') throw new EngineUnavailableError(this.unavailableMessage());
    if (this.streams.has(req.requestId)) throw new RequestRejectedError(`request id ${req.requestId} is already in use`, null);
    if (req.sampling.promptLogprobs !== null && req.promptTokenIds.length > this.maxPromptLogprobsTokens) {
      throw new RequestRejectedError(`prompt logprobs are limited to prompts of ${this.maxPromptLogprobsTokens} tokens; this one has ${req.promptTokenIds.length}`, 'logprobs');
    }
    const stream = new EventStream();
    this.streams.set(req.requestId, stream);
    let accepted = false;
    let finished = false;
    const onAbort = (): void => this.abort(req.requestId);
    try {
      this.post({ type: 'submit', request: req });
      await stream.accepted;
      accepted = true;
      if (signal !== undefined) {
        if (signal.aborted) this.abort(req.requestId);
        else signal.addEventListener('abort', onAbort, { once: true });
      }
      for (;;) {
        const event = await stream.next();
        if (event.type === 'done') finished = true;
        yield event;
        if (finished) return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (accepted && !finished) this.abort(req.requestId);
      this.streams.delete(req.requestId);
    }
  }

  /** Aborts a request in any state; its stream ends with `done` (finishReason 'abort'). */
  abort(requestId: string): void {
    if (this.state === 'ready' || this.state === 'closing') this.post({ type: 'abort', requestId });
  }

  /** The `limit` most recently used prefix snapshots, in memory and in the snapshot folder. */
  async listPrefixCache(limit: number): Promise<PrefixCacheEntryInfo[]> {
    const r = await this.prefixCacheCall({ op: 'list', limit });
    if (r.op !== 'list') throw new EngineError(r.op === 'error' ? r.message : 'unexpected reply');
    return [...r.entries];
  }

  /** Deletes a prefix snapshot (by its key) from memory and from the snapshot folder. */
  async deletePrefixCache(key: string): Promise<PrefixCacheDeletion> {
    const r = await this.prefixCacheCall({ op: 'delete', key });
    if (r.op !== 'delete') throw new EngineError(r.op === 'error' ? r.message : 'unexpected reply');
    return r.deleted;
  }

  private prefixCacheCall(call: PrefixCacheCall): Promise<PrefixCacheReply> {
    if (this.state !== 'ready') return Promise.reject(new EngineUnavailableError(this.unavailableMessage()));
    const id = this.nextPrefixCallId++;
    return new Promise((resolve, reject) => {
      this.prefixCalls.set(id, { resolve, reject });
      this.post({ type: 'prefix_cache', id, call });
    });
  }

  /** Latest counters from the worker; updated before the events of each step are delivered. Zero while no worker serves. */
  stats(): EngineStats {
    return this.latestStats;
  }

  health(): EngineHealth {
    const condition = this.state === 'closing' ? 'closed' : this.state;
    return { condition, restarts: this.numRestarts, lastFailure: this.lastFailure };
  }

  /**
   * Aborts every request, waits for the step in flight to end (up to stepTimeoutMs) and for the worker
   * to write its prefix snapshots and release the model, then ends the worker. Idempotent.
   */
  shutdown(opts: EngineShutdownOptions = {}): Promise<void> {
    this.shutdownDone ??= this.close(opts.stepTimeoutMs ?? DEFAULT_SHUTDOWN_STEP_MS);
    return this.shutdownDone;
  }

  private async close(stepTimeoutMs: number): Promise<void> {
    const wasServing = this.state === 'ready';
    this.state = 'closing';
    if (this.watchdog !== null) clearInterval(this.watchdog);
    if (this.restartTimer !== null) clearTimeout(this.restartTimer);
    if (wasServing) {
      this.post({ type: 'shutdown' });
      if (!(await within(this.stopped.promise, stepTimeoutMs))) {
        this.onLog(`shutdown: the step in flight did not end within ${stepTimeoutMs / 1000} s; stopping the inference worker`, 'warn');
      } else {
        const closeMs = this.opts.prefixCacheDir !== undefined ? SHUTDOWN_CLOSE_MS + SHUTDOWN_PERSIST_MS : SHUTDOWN_CLOSE_MS;
        if (!(await within(this.closed.promise, closeMs))) {
          this.onLog(`shutdown: the inference worker did not write its prefix snapshots and release the model within ${closeMs / 1000} s; stopping it`, 'warn');
        }
      }
    }
    this.state = 'closed';
    this.rejectPrefixCalls('the engine is shutting down');
    this.endAllStreams(doneEvent('abort'));
    this.latestStats = ZERO_STATS;
    await Promise.all([this.current.worker.terminate(), this.loading?.terminate()]);
  }

  private post(msg: ToWorker): void {
    this.current.worker.postMessage(msg);
  }

  /** Routes a worker's messages and its end to this Engine while it is the current one. */
  private attach(run: WorkerRun): void {
    this.current = run;
    run.worker.on('message', (msg: FromWorker) => {
      // Once a worker is lost, only its log lines still count (its requests have been failed).
      if (this.current === run && (msg.type === 'log' || this.state === 'ready' || this.state === 'closing')) this.onMessage(msg);
    });
    run.worker.on('error', (err: Error) => {
      if (this.current === run) this.lost(`the inference worker crashed: ${err.stack ?? err.message}`);
    });
    run.worker.on('exit', (code: number) => {
      if (this.current === run) this.lost(`the inference worker exited (code ${code})`);
    });
  }

  private onMessage(msg: FromWorker): void {
    switch (msg.type) {
      case 'log':
        this.onLog(msg.message);
        return;
      case 'accepted': {
        this.latestStats = msg.stats;
        const stream = this.streams.get(msg.requestId);
        // Nobody waits any more (the caller left while the request's grammar compiled): stop it.
        if (stream === undefined) this.abort(msg.requestId);
        else stream.accept();
        return;
      }
      case 'rejected':
        this.streams.get(msg.requestId)?.reject(toError(msg.error));
        return;
      case 'events':
        this.latestStats = msg.stats;
        for (const { requestId, event } of msg.events) this.streams.get(requestId)?.push(unpackEvent(event));
        return;
      case 'stopped':
        this.stopped.resolve();
        return;
      case 'closed':
        this.closed.resolve();
        return;
      case 'fatal':
        this.lost(msg.message);
        return;
      case 'prefix_cache_reply': {
        const call = this.prefixCalls.get(msg.id);
        this.prefixCalls.delete(msg.id);
        call?.resolve(msg.reply);
        return;
      }
      case 'ready':
      case 'load_error':
        return;
    }
  }

  /** Watchdog tick: a step that has run for longer than stepTimeoutMs means a hung worker. */
  private checkStep(): void {
    const startedMs = this.current.stepClock[0] ?? 0;
    if (this.state !== 'ready' || startedMs === 0) return;
    const runningMs = Date.now() - startedMs;
    if (runningMs > this.stepTimeoutMs) {
      this.lost(`a step has run for ${(runningMs / 1000).toFixed(1)} s, over the step timeout of ${this.stepTimeoutMs / 1000} s: the inference worker hangs`);
    }
  }

  /**
   * The current worker is gone or cannot be trusted: fail what it held, then restart it or give up.
   * Called once per worker (later reports of the same worker find the state changed).
   */
  private lost(reason: string): void {
    if (this.state === 'closed') return;
    if (this.state === 'closing') {
      // Shutdown waits for these replies; a worker that died meanwhile will not send them.
      this.stopped.resolve();
      this.closed.resolve();
      this.endAllStreams(doneEvent('error', reason));
      return;
    }
    if (this.state !== 'ready') return;
    this.state = 'restarting';
    this.lastFailure = reason;
    this.onLog(reason, 'error');
    this.failAllStreams(reason);
    this.latestStats = ZERO_STATS;
    this.scheduleRestart();
  }

  /** Asks the policy what follows a failure: a restart after a backoff, or giving up. */
  private scheduleRestart(): void {
    const decision = this.policy.onFailure(Date.now());
    const { maxRestarts, windowMs } = this.policy.options;
    if (decision.action === 'give-up') {
      this.giveUp(`the inference engine failed ${decision.failuresInWindow} times within ${windowMs / 1000} s (at most ${maxRestarts} restarts allowed); not restarting it, liveness now fails`);
      return;
    }
    this.onLog(`restarting the inference worker in ${(decision.delayMs / 1000).toFixed(1)} s (failure ${decision.failuresInWindow} of at most ${maxRestarts + 1} within ${windowMs / 1000} s)`, 'warn');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      void this.restart();
    }, decision.delayMs);
  }

  private giveUp(message: string): void {
    this.state = 'failed';
    this.onLog(message, 'error');
    void this.current.worker.terminate();
  }

  private async restart(): Promise<void> {
    // The old thread must be gone first: its onnxruntime sessions hold the model's memory. A thread
    // blocked inside native code cannot be stopped; then only a new process helps.
    if (!(await within(this.current.worker.terminate(), RETIRE_TIMEOUT_MS))) {
      if (this.state === 'restarting') this.giveUp(`the lost inference worker did not stop within ${RETIRE_TIMEOUT_MS / 1000} s (blocked in native code?); liveness now fails`);
      return;
    }
    if (this.state !== 'restarting') return;
    this.numRestarts++;
    try {
      const { run, ready } = await launch(this.opts, this.onLog, (worker) => (this.loading = worker));
      this.loading = null;
      if (this.state !== 'restarting') {
        await run.worker.terminate(); // shut down while it loaded
        return;
      }
      this.latestStats = ready.stats;
      this.attach(run);
      this.state = 'ready';
      this.onLog(`the inference worker was restarted (restart ${this.numRestarts}); ready`, 'warn');
    } catch (err) {
      this.loading = null;
      if (this.state !== 'restarting') return;
      this.lastFailure = `restart ${this.numRestarts} failed: ${(err as Error).message}`;
      this.onLog(this.lastFailure, 'error');
      this.scheduleRestart();
    }
  }

  private unavailableMessage(): string {
    switch (this.state) {
      case 'restarting':
        return 'the inference engine is restarting after a failure; retry shortly';
      case 'failed':
        return 'the inference engine failed and could not be restarted';
      default:
        return 'the engine is shutting down';
    }
  }

  /** Submissions not yet accepted are refused as unavailable; accepted streams end with an error. */
  private failAllStreams(reason: string): void {
    const err = new EngineUnavailableError(this.unavailableMessage());
    for (const s of this.streams.values()) s.reject(err);
    this.rejectPrefixCalls(reason);
    this.endAllStreams(doneEvent('error', reason));
  }

  private rejectPrefixCalls(message: string): void {
    for (const call of this.prefixCalls.values()) call.reject(new EngineUnavailableError(message));
    this.prefixCalls.clear();
  }

  private endAllStreams(event: TokenEvent): void {
    for (const s of this.streams.values()) s.push(event);
  }
}
