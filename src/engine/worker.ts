// The inference worker (worker_threads entry): loads the checkpoint and the Model, owns the EngineCore
// and runs the step loop while there is work. onnxruntime's session.run blocks its thread for a whole
// step, so it must not run on the HTTP thread. Protocol: worker-protocol.ts.
import { basename, dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { EngineCore } from './engine-core.ts';
import { EngineError, RequestRejectedError } from './errors.ts';
import { parseModelConfig } from './model/config.ts';
import type { Checkpoint } from './model/checkpoint.ts';
import { openCheckpoint } from './model/hf-checkpoint.ts';
import { Model, type ModelLoadOptions } from './model/model.ts';
import { randomCheckpoint } from './model/random-checkpoint.ts';
import type { FromWorker, RoutedEvent, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';

const port = parentPort;
if (port === null) throw new Error('worker.ts must run in a worker thread');
const init = workerData as WorkerInit;

function post(msg: FromWorker): void {
  port!.postMessage(msg);
}

function wireError(err: unknown): WireError {
  if (err instanceof RequestRejectedError) return { name: err.name, message: err.message, param: err.param };
  if (err instanceof Error) return { name: err instanceof EngineError ? err.name : 'EngineError', message: err.message, param: null };
  return { name: 'EngineError', message: String(err), param: null };
}

let lastBuildLogMs = -Infinity;

async function loadModel(): Promise<Model> {
  let ckpt: Checkpoint;
  if (init.randomWeightsConfig !== undefined) {
    ckpt = randomCheckpoint(parseModelConfig(init.randomWeightsConfig), { seed: 0, gkLayout: 'lowrank' });
  } else {
    ckpt = openCheckpoint(init.modelDir);
  }
  const options: ModelLoadOptions = {
    ...(init.cacheDir !== undefined ? { cacheDir: init.cacheDir } : {}),
    ...(init.intraOpThreads !== undefined ? { intraOpThreads: init.intraOpThreads } : {}),
    ...(init.decodeIntraOpThreads !== undefined ? { decodeIntraOpThreads: init.decodeIntraOpThreads } : {}),
    // A GPU that is not usable fails in Model.load (DeviceUnavailableError → ModelLoadError at Engine.start).
    ...(init.device !== undefined ? { device: init.device } : {}),
    ...(init.weightDtype !== undefined ? { weightDtype: init.weightDtype } : {}),
    onProgress: (p) => {
      // At most one line every 2 s, plus the last one.
      const now = performance.now();
      if (p.tensorsDone < p.tensorsTotal && now - lastBuildLogMs < 2000) return;
      lastBuildLogMs = now;
      post({ type: 'log', message: `building model: ${p.tensorsDone}/${p.tensorsTotal} tensors, ${(p.bytesDone / 2 ** 20).toFixed(0)}/${(p.bytesTotal / 2 ** 20).toFixed(0)} MiB` });
    },
  };
  const model = await Model.load(ckpt, options);
  post({ type: 'log', message: model.summary });
  return model;
}

let pending: RoutedEvent[] = [];
let model: Model;
let core: EngineCore;

function flush(): void {
  const events = pending;
  pending = [];
  post({ type: 'events', events, stats: core.stats() });
}

let looping = false;
/** The step loop now running (or the last one, settled); shutdown waits for it. */
let currentLoop: Promise<void> = Promise.resolve();
/** Runs steps until no request is left; messages are handled between steps. */
async function loop(): Promise<void> {
  if (looping) return;
  looping = true;
  try {
    while (core.hasWork) {
      // Nothing schedulable (cannot happen with reservations, but never spin): wait for a message.
      if (!(await core.step())) break;
      flush();
      // Let submit/abort messages in between two steps.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    looping = false;
  }
}

function onMessage(msg: ToWorker): void {
  switch (msg.type) {
    case 'submit':
      try {
        core.submit(msg.request);
      } catch (err) {
        post({ type: 'rejected', requestId: msg.request.requestId, error: wireError(err) });
        return;
      }
      post({ type: 'accepted', requestId: msg.request.requestId, stats: core.stats() });
      if (!looping) currentLoop = loop().catch(fatal);
      return;
    case 'abort':
      core.abort(msg.requestId); // deferred to the end of a step in flight
      flush();
      return;
    case 'shutdown':
      core.abortAll();
      flush();
      // A step may be in flight (Model.run yields before its native call): let it end and release the
      // session before reporting closed, so the thread is never terminated inside onnxruntime.
      void currentLoop
        .catch(() => undefined)
        .then(() => core.flushSnapshots())
        .then(() => model.close())
        .finally(() => post({ type: 'closed' }));
      return;
  }
}

function fatal(err: unknown): void {
  post({ type: 'log', message: `engine loop failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}` });
  throw err;
}

try {
  model = await loadModel();
  core = new EngineCore(model, model.config, init, (requestId, event) => pending.push({ requestId, event }), {
    // The built-model folder names checkpoint, builder version and graph variant: disk snapshots are per build.
    modelTag: basename(dirname(model.modelPath)),
    log: (message) => post({ type: 'log', message }),
    wake: () => {
      if (!looping) currentLoop = loop().catch(fatal);
    },
  });
  port.on('message', onMessage);
  post({ type: 'ready', config: model.config, maxModelLen: core.maxModelLen, stats: core.stats() });
} catch (err) {
  post({ type: 'load_error', error: wireError(err) });
}
