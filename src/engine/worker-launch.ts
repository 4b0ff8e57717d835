// Starting an inference worker (worker.ts) and waiting for its model, for the Engine (engine.ts), which
// does so once at start and again for every restart. Also the mapping of the worker's wire errors
// back to the engine's error classes.
import type { Worker } from 'node:worker_threads';
import { EngineError, EngineUnavailableError, ModelLoadError, QueueFullError, RequestRejectedError } from './errors.ts';
import type { EngineLog, EngineOptions } from './engine.ts';
import { spawnTsWorker } from './ts-worker.ts';
import type { FromWorker, WireError, WorkerInit } from './worker-protocol.ts';

export function toError(e: WireError): EngineError {
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

/** One worker thread and what the main thread shares with it. */
export interface WorkerRun {
  readonly worker: Worker;
  /** [0]: Date.now() when the worker's step in flight began, 0 between steps. */
  readonly stepClock: Float64Array;
}

export type ReadyMessage = Extract<FromWorker, { type: 'ready' }>;

/** Starts worker.ts (a TypeScript entry: see ts-worker.ts) and waits for its model; rejects with ModelLoadError. */
export async function launch(opts: EngineOptions, onLog: EngineLog, onSpawn: (worker: Worker) => void = () => {}): Promise<{ run: WorkerRun; ready: ReadyMessage }> {
  const stepClock = new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT);
  const init: WorkerInit = { ...opts, stepClock };
  const worker = spawnTsWorker(new URL('./worker.ts', import.meta.url), {
    workerData: init,
    ...(opts.workerHeapMb !== undefined ? { resourceLimits: { maxOldGenerationSizeMb: opts.workerHeapMb } } : {}),
  });
  onSpawn(worker);
  const ready = await new Promise<ReadyMessage>((resolve, reject) => {
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
  return { run: { worker, stepClock: new Float64Array(stepClock) }, ready };
}
