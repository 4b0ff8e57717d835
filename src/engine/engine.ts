// Engine: the main-thread face of the inference worker, used by the HTTP server. It starts the worker
// (model load, step loop: worker.ts), turns each request's events into an AsyncIterable, and keeps the
// latest stats. Nothing here blocks: every heavy thing happens in the worker.
import type { Worker } from 'node:worker_threads';
import {
  EngineError,
  EngineUnavailableError,
  ModelLoadError,
  QueueFullError,
  RequestRejectedError,
} from './errors.ts';
import type { ModelConfig } from './model/config.ts';
import type { WeightDtype } from './model/onnx/graph-builder.ts';
import { spawnTsWorker } from './ts-worker.ts';
import type { EngineStats, SubmitRequest, TokenEvent } from './types.ts';
import type { EngineCoreOptions } from './engine-core.ts';
import type { FromWorker, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';

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
}

const ZERO_STATS: EngineStats = Object.freeze({
  numRunning: 0,
  numWaiting: 0,
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

/** How long shutdown waits for the worker to abort everything before terminating it. */
const SHUTDOWN_GRACE_MS = 5000;
/** With prefix snapshots on disk, also the time to write the ones held in memory. */
const SHUTDOWN_PERSIST_MS = 60_000;

function toError(e: WireError): EngineError {
  switch (e.name) {
    case 'RequestRejectedError':
      return new RequestRejectedError(e.message, e.param);
    case 'QueueFullError':
      return new QueueFullError(e.message);
    case 'EngineUnavailableError':
      return new EngineUnavailableError(e.message);
    case 'ModelLoadError':
      return new ModelLoadError(e.message);
    default:
      return new EngineError(e.message);
  }
}

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

/** Starts worker.ts (a TypeScript entry: see ts-worker.ts). */
function spawnWorker(init: WorkerInit): Worker {
  return spawnTsWorker(new URL('./worker.ts', import.meta.url), { workerData: init });
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

export class Engine {
  readonly config: ModelConfig;
  readonly maxModelLen: number;
  private readonly worker: Worker;
  private readonly streams = new Map<string, EventStream>();
  private latestStats: EngineStats;
  private state: 'ready' | 'closing' | 'closed' | 'failed' = 'ready';
  private failure: string | null = null;
  private closedSignal: (() => void) | null = null;
  /** Prefix snapshots go to disk on shutdown: give the worker time to write them. */
  private readonly persistsSnapshots: boolean;

  private constructor(worker: Worker, ready: Extract<FromWorker, { type: 'ready' }>, onLog: (msg: string) => void, persistsSnapshots: boolean) {
    this.worker = worker;
    this.persistsSnapshots = persistsSnapshots;
    this.config = ready.config;
    this.maxModelLen = ready.maxModelLen;
    this.latestStats = ready.stats;
    worker.on('message', (msg: FromWorker) => this.onMessage(msg, onLog));
    worker.on('error', (err) => this.fail(`inference worker crashed: ${err.message}`));
    worker.on('exit', (code) => {
      if (this.state === 'ready' || this.state === 'closing') this.fail(`inference worker exited (code ${code})`);
      this.closedSignal?.();
    });
  }

  /** Starts the worker; resolves when the model is loaded (rejects with ModelLoadError otherwise). */
  static async start(opts: EngineOptions, onLog: (msg: string) => void = () => undefined): Promise<Engine> {
    const init: WorkerInit = { ...opts };
    const worker = spawnWorker(init);
    const ready = await new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
      const onMessage = (msg: FromWorker): void => {
        if (msg.type === 'log') onLog(msg.message);
        else if (msg.type === 'ready') done(() => resolve(msg));
        else if (msg.type === 'load_error') done(() => reject(msg.error.name === 'ModelLoadError' ? toError(msg.error) : new ModelLoadError(msg.error.message)));
      };
      const onError = (err: Error): void => done(() => reject(new ModelLoadError(`inference worker failed to start: ${err.message}`)));
      const onExit = (code: number): void => done(() => reject(new ModelLoadError(`inference worker exited during load (code ${code})`)));
      const done = (settle: () => void): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        settle();
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).catch(async (err: unknown) => {
      await worker.terminate();
      throw err;
    });
    return new Engine(worker, ready, onLog, opts.prefixCacheDir !== undefined);
  }

  /**
   * Streams the events of one request, ending with `done`. Throws (on the first pull, before any
   * event) RequestRejectedError, QueueFullError or EngineUnavailableError. Aborting `signal`, or
   * leaving the loop early, aborts the request and frees everything it holds.
   *
   * Prompt ids given as an Int32Array cross to the worker as one memcpy (~3 ms for 3.5 M ids) instead
   * of element by element (a number[] of 3.5 M ids: 0.04-0.2 s of this thread, bench/tokenize.ts).
   * They are copied, not transferred: the caller still reads them (n > 1 choices, echo, usage).
   */
  async *generate(req: SubmitRequest, signal?: AbortSignal): AsyncGenerator<TokenEvent, void, undefined> {
    if (this.state !== 'ready') throw new EngineUnavailableError(this.failure ?? 'the engine is shutting down');
    if (this.streams.has(req.requestId)) throw new RequestRejectedError(`request id ${req.requestId} is already in use`, null);
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

  /** Latest counters from the worker; updated before the events of each step are delivered. */
  stats(): EngineStats {
    return this.latestStats;
  }

  /** Aborts every request, waits for their `done` events, and terminates the worker. */
  async shutdown(): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'ready') {
      this.state = 'closing';
      const closed = new Promise<void>((resolve) => (this.closedSignal = resolve));
      this.post({ type: 'shutdown' });
      const graceMs = this.persistsSnapshots ? SHUTDOWN_GRACE_MS + SHUTDOWN_PERSIST_MS : SHUTDOWN_GRACE_MS;
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, graceMs).unref())]);
    }
    this.state = 'closed';
    this.endAllStreams(doneEvent('abort'));
    this.latestStats = ZERO_STATS;
    await this.worker.terminate();
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }

  private onMessage(msg: FromWorker, onLog: (msg: string) => void): void {
    switch (msg.type) {
      case 'log':
        onLog(msg.message);
        return;
      case 'accepted':
        this.latestStats = msg.stats;
        this.streams.get(msg.requestId)?.accept();
        return;
      case 'rejected':
        this.streams.get(msg.requestId)?.reject(toError(msg.error));
        return;
      case 'events':
        this.latestStats = msg.stats;
        for (const { requestId, event } of msg.events) this.streams.get(requestId)?.push(event);
        return;
      case 'closed':
        this.closedSignal?.();
        return;
      case 'ready':
      case 'load_error':
        return;
    }
  }

  private fail(message: string): void {
    if (this.state === 'closed' || this.state === 'failed') return;
    this.state = 'failed';
    this.failure = message;
    const err = new EngineUnavailableError(message);
    for (const s of this.streams.values()) s.reject(err);
    this.endAllStreams(doneEvent('error', message));
    this.latestStats = ZERO_STATS;
  }

  private endAllStreams(event: TokenEvent): void {
    for (const s of this.streams.values()) s.push(event);
  }
}
