// Whether the server can take generation requests right now, and which ones are in flight.
//
//   loading ──engine ready──▶ ready ──SIGTERM / close──▶ draining
//      └──load failed──▶ failed
//
// /health answers 200 only in `ready`. Every generation request registers an AbortController
// here for its whole life, so a drain can wait for them (whenIdle) or abort the rest (abortAll).
import { UnavailableError } from './errors.ts';
import type { EnginePort } from './ports.ts';

export type ServingPhase = 'loading' | 'ready' | 'draining' | 'failed';

export class ServingState {
  #phase: ServingPhase = 'loading';
  #engine: EnginePort | null = null;
  readonly #inflight = new Set<AbortController>();
  #idleWaiters: (() => void)[] = [];

  get phase(): ServingPhase {
    return this.#phase;
  }

  /** The engine if loaded (also while draining, for stats); null otherwise. */
  get loadedEngine(): EnginePort | null {
    return this.#engine;
  }

  get numInflight(): number {
    return this.#inflight.size;
  }

  /** Follows an engine that is still starting; the phase becomes ready or failed. */
  attach(engine: EnginePort | Promise<EnginePort>, onFailure: (err: unknown) => void): void {
    Promise.resolve(engine).then(
      (e) => {
        this.#engine = e;
        if (this.#phase === 'loading') this.#phase = 'ready';
      },
      (err: unknown) => {
        if (this.#phase === 'loading') this.#phase = 'failed';
        onFailure(err);
      },
    );
  }

  /** The engine for a new request; 503 while loading, draining or after a failed load. */
  requireEngine(): EnginePort {
    if (this.#phase === 'ready' && this.#engine !== null) return this.#engine;
    throw this.unavailable();
  }

  unavailable(): UnavailableError {
    switch (this.#phase) {
      case 'loading':
        return new UnavailableError('the model is still loading; retry shortly', 'model_loading');
      case 'draining':
        return new UnavailableError('the server is shutting down', 'draining');
      default:
        return new UnavailableError('the model failed to load', 'model_load_failed');
    }
  }

  beginDrain(): void {
    this.#phase = 'draining';
  }

  /** Registers a request; call the returned function exactly once when it is over. */
  track(controller: AbortController): () => void {
    this.#inflight.add(controller);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inflight.delete(controller);
      if (this.#inflight.size === 0) {
        const waiters = this.#idleWaiters;
        this.#idleWaiters = [];
        for (const w of waiters) w();
      }
    };
  }

  /** Resolves once no request is in flight. */
  whenIdle(): Promise<void> {
    if (this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Aborts every in-flight request (their streams end with a "shutting down" error). */
  abortAll(): void {
    for (const c of this.#inflight) c.abort(this.unavailable());
  }
}
