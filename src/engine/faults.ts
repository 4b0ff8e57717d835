// Fault injection, for tests only. `EngineOptions.faults` (never set by the CLI, no flag, no
// environment variable) lists faults the inference worker plays when a step schedules a request with
// a given sampling seed: the seed is a field every client may send, so tests reach a fault through
// the real HTTP server and the openai client. Each kind stands for a class of real failures that the
// supervision (EngineCore.step, worker.ts, engine.ts) must contain:
//
//   kind                at        stands for                                 what must happen
//   throw-in-schedule   schedule  a bug in scheduling / page allocation       every request fails, the worker restarts
//   throw-in-execute    execute   onnxruntime or sampling throwing            the step's requests fail, the loop goes on
//   throw-in-complete   complete  a snapshot or bookkeeping after the run     that request fails, the loop goes on
//   exit                execute   process.exit inside the worker             readiness fails, in-flight fail, restart
//   uncaught            execute   an exception outside any step              the same
//   oom                 execute   the worker's JS heap running out           the same (Node ends only the worker)
//   hang                execute   a step that never returns (blocked thread) the step watchdog restarts the worker
//   delay               execute   a long step (a 7B prefill chunk)           shutdown waits for it
import type { RequestState } from './request-state.ts';

export type FaultKind = 'throw-in-schedule' | 'throw-in-execute' | 'throw-in-complete' | 'exit' | 'uncaught' | 'oom' | 'hang' | 'delay';

export interface InjectedFault {
  /** Played by a step that schedules a request with this sampling seed. */
  readonly seed: number;
  readonly kind: FaultKind;
  /** 'delay': how much longer the step takes. */
  readonly delayMs?: number;
}

/** Where in a step EngineCore calls the hook: after scheduling, before the model run, before completing a chunk. */
export type FaultPoint = 'schedule' | 'execute' | 'complete';

/** Called by EngineCore.step at each FaultPoint with the requests concerned; may throw, exit, block or delay. */
export type FaultHook = (point: FaultPoint, requests: readonly RequestState[]) => void | Promise<void>;

const POINT_OF: Readonly<Record<FaultKind, FaultPoint>> = {
  'throw-in-schedule': 'schedule',
  'throw-in-execute': 'execute',
  'throw-in-complete': 'complete',
  exit: 'execute',
  uncaught: 'execute',
  oom: 'execute',
  hang: 'execute',
  delay: 'execute',
};

/** Thrown by the injected throw-in-* faults. */
export class InjectedFaultError extends Error {
  override readonly name = 'InjectedFaultError';
}

/** The hook that plays `faults` (the worker installs it only when the list is not empty); logs each one it plays. */
export function faultHook(faults: readonly InjectedFault[], log: (message: string) => void): FaultHook {
  return (point, requests) => {
    for (const fault of faults) {
      if (POINT_OF[fault.kind] !== point || !requests.some((r) => r.sampling.seed === fault.seed)) continue;
      log(`playing injected fault ${fault.kind} (seed ${fault.seed})`);
      return play(fault);
    }
    return undefined;
  };
}

function play(fault: InjectedFault): void | Promise<void> {
  switch (fault.kind) {
    case 'throw-in-schedule':
    case 'throw-in-execute':
    case 'throw-in-complete':
      throw new InjectedFaultError(`injected fault: ${fault.kind} (seed ${fault.seed})`);
    case 'exit':
      // In a worker thread this ends the thread only, with this exit code.
      return process.exit(70);
    case 'uncaught':
      setImmediate(() => {
        throw new InjectedFaultError(`injected fault: uncaught (seed ${fault.seed})`);
      });
      return undefined;
    case 'oom': {
      // Holds ever more memory until V8 ends the thread (ERR_WORKER_OUT_OF_MEMORY); tests bound the
      // worker's heap (EngineOptions.workerHeapMb) so that this is quick.
      const held: number[][] = [];
      for (;;) held.push(new Array<number>(1 << 20).fill(held.length));
    }
    case 'hang':
      // Blocks the thread without spinning, as a native call that never returns would; only
      // Worker.terminate() ends it.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
      return undefined;
    case 'delay':
      return new Promise((resolve) => setTimeout(resolve, fault.delayMs ?? 0));
  }
}
