// Whether the server can take generation requests right now, and which ones are in flight.
//
//   loading ──engine ready──▶ ready ──SIGTERM / close──▶ draining
//      └──load failed──▶ failed
//
// Within `ready`, the engine supervises its inference worker (src/engine/engine.ts): while a lost
// worker is restarted it is `restarting`, and when it gave up it is `failed`. Two probes follow:
//   ready (GET /health): phase ready and engine ready. Takes the pod out of the load balancer.
//   live (GET /health/live): false only when the engine gave up (or the model never loaded), so an
//     orchestrator restarts the process; true while loading, draining and restarting (a drain or a
//     restart must not be cut short).
// Every generation request registers an AbortController here for its whole life, so a drain can
// wait for them (whenIdle) or abort the rest (abortAll).
import { UnavailableError } from './errors.ts';
import type { EnginePort } from './ports.ts';

export type ServingPhase = 'loading' | 'ready' | 'draining' | 'failed';

export class ServingState {
  #phase: ServingPhase = 'loading';
  #engine: EnginePort | null = null;
  #drainStartedMs: number | null = null;
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

  /** Readiness: new generation requests would be served now. */
  get ready(): boolean {
    return this.#phase === 'ready' && this.#engine !== null && this.#engine.health().condition === 'ready';
  }

  /** Liveness: false only when nothing in this process can bring serving back. */
  get live(): boolean {
    return this.#phase !== 'failed' && this.#engine?.health().condition !== 'failed';
  }

  /** performance.now() when the drain began, or null. */
  get drainStartedMs(): number | null {
    return this.#drainStartedMs;
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

  /** The engine for a new request; 503 while loading, draining, restarting, or after a failure. */
  requireEngine(): EnginePort {
    if (this.ready && this.#engine !== null) return this.#engine;
    throw this.unavailable();
  }

  unavailable(): UnavailableError {
    switch (this.#phase) {
      case 'loading':
        return new UnavailableError('the model is still loading; retry shortly', 'model_loading');
      case 'draining':
        return new UnavailableError('the server is shutting down', 'draining');
      case 'failed':
        return new UnavailableError('the model failed to load', 'model_load_failed');
      case 'ready':
        return this.#engine?.health().condition === 'restarting'
          ? new UnavailableError('the inference engine is restarting after a failure; retry shortly', 'engine_restarting')
          : new UnavailableError('the inference engine failed and could not be restarted', 'engine_failed');
    }
  }

  beginDrain(): void {
    this.#phase = 'draining';
    this.#drainStartedMs ??= performance.now();
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
