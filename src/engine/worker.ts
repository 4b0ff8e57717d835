// The inference worker (worker_threads entry): loads the checkpoint and the Model, owns the EngineCore
// and runs the step loop while there is work. onnxruntime's session.run blocks its thread for a whole
// step, so it must not run on the HTTP thread. Protocol: worker-protocol.ts.
//
// Failures: EngineCore.step contains what it can (a failed model run fails its step's requests). What
// escapes a step leaves the core in a state nobody can trust, so the worker reports `fatal` and exits;
// the Engine on the main thread fails every request in flight and starts a new worker (engine.ts). The
// start time of the step in flight is kept in shared memory (stepClock), so the main thread sees a
// step that never returns even while this thread is blocked.
import { basename, dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { EngineCore } from './engine-core.ts';
import { EngineError, EngineUnavailableError, RequestRejectedError } from './errors.ts';
import { faultHook } from './faults.ts';
import { GrammarClient, type RemoteMatcher } from './grammar/grammar-client.ts';
import { parseModelConfig } from './model/config.ts';
import type { Checkpoint } from './model/checkpoint.ts';
import { openCheckpoint, skippedSummary } from './model/hf-checkpoint.ts';
import { Model, type ModelLoadOptions } from './model/model.ts';
import { randomCheckpoint } from './model/random-checkpoint.ts';
import { stopTokenIdsOf } from './sampler.ts';
import type { GenerateRequest } from './types.ts';
import type { FromWorker, PrefixCacheReply, RoutedEvent, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';
import { packEvent } from './wire-events.ts';

const port = parentPort;
if (port === null) throw new Error('worker.ts must run in a worker thread');
const init = workerData as WorkerInit;
/** [0]: Date.now() when the step in flight began; 0 between steps. Read by the Engine's step watchdog. */
const stepClock = new Float64Array(init.stepClock);

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
    const opened = openCheckpoint(init.modelDir);
    const skipped = skippedSummary(opened.skipped);
    if (skipped !== null) post({ type: 'log', message: skipped });
    ckpt = opened;
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
let grammar: GrammarClient;
let shuttingDown = false;

/** Default bound of the grammar worker's compiled-grammar cache (EngineOptions.grammarCacheEntries). */
const GRAMMAR_CACHE_ENTRIES = 64;
/** How long a step loop with only grammar-held sequences sleeps before looking again. */
const GRAMMAR_WAIT_MS = 1000;

function flush(): void {
  const transfer: ArrayBuffer[] = [];
  const events = pending.map(({ requestId, event }) => ({ requestId, event: packEvent(event, transfer) }));
  pending = [];
  port!.postMessage({ type: 'events', events, stats: core.stats() } satisfies FromWorker, transfer);
}

let flushScheduled = false;
/** Events or stats that changed between steps (a disk write ended): post them soon, once. */
function scheduleFlush(): void {
  if (flushScheduled) return;
  flushScheduled = true;
  setImmediate(() => {
    flushScheduled = false;
    if (!looping) flush(); // a running loop posts after its step
  });
}

/** The prefix-cache API's calls (list, delete), answered between steps. */
function onPrefixCacheCall(msg: Extract<ToWorker, { type: 'prefix_cache' }>): void {
  const reply = (r: PrefixCacheReply): void => post({ type: 'prefix_cache_reply', id: msg.id, reply: r });
  const call = msg.call;
  const work: Promise<PrefixCacheReply> =
    call.op === 'list'
      ? core.listPrefixCache(call.limit).then((entries) => ({ op: 'list', entries }))
      : core.deletePrefixCache(call.key).then((deleted) => ({ op: 'delete', deleted }));
  void work.then(reply, (err: unknown) => reply({ op: 'error', message: err instanceof Error ? err.message : String(err) }));
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
      let ran: boolean;
      stepClock[0] = Date.now();
      try {
        ran = await core.step();
      } finally {
        stepClock[0] = 0;
      }
      if (!ran) {
        // Only sequences waiting for a grammar mask (the grammar worker compiles): wait for its progress.
        if (core.numAwaitingGrammar > 0) {
          await grammar.whenProgress(GRAMMAR_WAIT_MS);
          continue;
        }
        // Nothing to run or prepare (a disk read is pending, or nothing is left): wait for a message.
        break;
      }
      flush();
      // Let submit/abort messages in between two steps.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    looping = false;
  }
}

/** Queues a request (with its grammar matcher, when constrained) and answers accepted or rejected. */
function submit(request: GenerateRequest, matcher?: RemoteMatcher): void {
  try {
    core.submit(request, matcher);
  } catch (err) {
    post({ type: 'rejected', requestId: request.requestId, error: wireError(err) });
    return;
  }
  post({ type: 'accepted', requestId: request.requestId, stats: core.stats() });
  startLoop();
}

function onMessage(msg: ToWorker): void {
  switch (msg.type) {
    case 'submit': {
      const request = msg.request;
      if (request.constraint === undefined) {
        submit(request);
        return;
      }
      // The grammar compiles in the grammar worker first (a bad one is rejected: a 400 before any event).
      grammar.open(request.constraint, stopTokenIdsOf(request.sampling, model.config.eosTokenIds)).then(
        (matcher) => {
          if (!shuttingDown) return submit(request, matcher);
          matcher.close();
          post({ type: 'rejected', requestId: request.requestId, error: wireError(new EngineUnavailableError('the engine is shutting down')) });
        },
        (err: unknown) => post({ type: 'rejected', requestId: request.requestId, error: wireError(err) }),
      );
      return;
    }
    case 'abort':
      core.abort(msg.requestId); // deferred to the end of a step in flight
      flush();
      return;
    case 'prefix_cache':
      onPrefixCacheCall(msg);
      return;
    case 'shutdown':
      shuttingDown = true;
      core.abortAll();
      flush();
      // A step may be in flight (Model.run yields before its native call): let it end, however long
      // it takes (the Engine bounds the wait), and release the session before reporting closed, so the
      // thread is never terminated inside onnxruntime.
      void currentLoop
        .catch(() => undefined)
        .then(() => post({ type: 'stopped' }))
        .then(() => core.flushSnapshots())
        .then(() => model.close())
        .then(() => grammar.close())
        .finally(() => post({ type: 'closed' }));
      return;
  }
}

function startLoop(): void {
  if (!looping) currentLoop = loop().catch(fatal);
}

/**
 * Something escaped a step: report why and end this thread. The events of the broken step are not
 * sent: the Engine fails every request of this worker with this message.
 */
function fatal(err: unknown): void {
  post({ type: 'fatal', message: `the engine loop failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}` });
  process.exit(1);
}

try {
  model = await loadModel();
  grammar = new GrammarClient({
    modelDir: init.modelDir,
    vocabSize: model.config.vocabSize,
    eosTokenIds: model.config.eosTokenIds,
    cacheEntries: init.grammarCacheEntries ?? GRAMMAR_CACHE_ENTRIES,
    log: (message) => post({ type: 'log', message }),
  });
  core = new EngineCore(model, model.config, init, (requestId, event) => pending.push({ requestId, event }), {
    grammarMatchers: () => grammar.numMatchers,
    // The built-model folder names checkpoint, builder version and graph variant: disk snapshots are per build.
    modelTag: basename(dirname(model.modelPath)),
    log: (message) => post({ type: 'log', message }),
    wake: startLoop,
    notify: scheduleFlush,
    ...(init.faults !== undefined && init.faults.length > 0 ? { faultHook: faultHook(init.faults, (message) => post({ type: 'log', message })) } : {}),
  });
  port.on('message', onMessage);
  post({ type: 'ready', config: model.config, maxModelLen: core.maxModelLen, stats: core.stats() });
} catch (err) {
  post({ type: 'load_error', error: wireError(err) });
}
