// Messages between the main-thread Engine (engine.ts) and the inference worker (worker.ts).
// Everything here crosses postMessage, so it is structured-clone data only (Maps are fine; no classes).
import type { EngineOptions } from './engine.ts';
import type { ModelConfig } from './model/config.ts';
import type { EngineStats, PrefixCacheDeletion, PrefixCacheEntryInfo, SubmitRequest, TokenEvent } from './types.ts';
import type { WireEvent } from './wire-events.ts';

/** What the worker needs to start (the Engine's options); passed as `workerData`. */
export interface WorkerInit extends EngineOptions {
  /** A Float64Array[1] the worker sets to Date.now() while a step runs and to 0 between steps. */
  readonly stepClock: SharedArrayBuffer;
}

export type ToWorker =
  | { readonly type: 'submit'; readonly request: SubmitRequest }
  | { readonly type: 'abort'; readonly requestId: string }
  /** Abort everything; answer `stopped` once no step runs, then `closed` once snapshots are written and the model released. */
  | { readonly type: 'shutdown' }
  /** A prefix-cache call (list, delete); answered by `prefix_cache_reply` with the same id. */
  | { readonly type: 'prefix_cache'; readonly id: number; readonly call: PrefixCacheCall };

/** The prefix-cache API's calls into the worker (the prefix cache and the snapshot folder live there). */
export type PrefixCacheCall = { readonly op: 'list'; readonly limit: number } | { readonly op: 'delete'; readonly key: string };

export type PrefixCacheReply =
  | { readonly op: 'list'; readonly entries: readonly PrefixCacheEntryInfo[] }
  | { readonly op: 'delete'; readonly deleted: PrefixCacheDeletion }
  | { readonly op: 'error'; readonly message: string };

/** A rejected submission: the error class name (errors.ts), its message and param. */
export interface WireError {
  readonly name: string;
  readonly message: string;
  readonly param: string | null;
}

export interface RoutedEvent {
  readonly requestId: string;
  readonly event: TokenEvent;
}

/** A RoutedEvent as it crosses (prompt logprobs packed in typed arrays: wire-events.ts). */
export interface WireRoutedEvent {
  readonly requestId: string;
  readonly event: WireEvent;
}

export type FromWorker =
  | { readonly type: 'ready'; readonly config: ModelConfig; readonly maxModelLen: number; readonly stats: EngineStats }
  | { readonly type: 'load_error'; readonly error: WireError }
  | { readonly type: 'log'; readonly message: string }
  | { readonly type: 'accepted'; readonly requestId: string; readonly stats: EngineStats }
  | { readonly type: 'rejected'; readonly requestId: string; readonly error: WireError }
  /** Events of one step (or of an abort), in order, with the stats right after them. */
  | { readonly type: 'events'; readonly events: readonly WireRoutedEvent[]; readonly stats: EngineStats }
  | { readonly type: 'stopped' }
  | { readonly type: 'closed' }
  /** Something escaped a step (the core cannot be trusted): the worker exits right after this. */
  | { readonly type: 'fatal'; readonly message: string }
  | { readonly type: 'prefix_cache_reply'; readonly id: number; readonly reply: PrefixCacheReply };
