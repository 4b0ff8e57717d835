// When to restart a failed inference worker, and when to give up. Pure bookkeeping over failure
// times (no timers, no threads), so it is tested on its own.
//
// Failures are counted in a sliding window of `windowMs`. The k-th failure in the window is followed
// by a restart after min(initialBackoffMs · 2^(k−1), maxBackoffMs): a crash that repeats at once
// does not spin the machine reloading the model. Failure number maxRestarts + 1 within the window
// means the engine cannot recover in this process: give up (liveness then fails, and the
// orchestrator restarts the whole process, which may land on a healthy node).
export interface RestartPolicyOptions {
  /** Restarts allowed within windowMs; one more failure gives up. 0 = never restart. */
  readonly maxRestarts: number;
  readonly windowMs: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
}

export type RestartDecision =
  | { readonly action: 'restart'; readonly delayMs: number; readonly failuresInWindow: number }
  | { readonly action: 'give-up'; readonly failuresInWindow: number };

export const RESTART_DEFAULTS: RestartPolicyOptions = Object.freeze({
  maxRestarts: 5,
  windowMs: 10 * 60_000,
  initialBackoffMs: 1000,
  maxBackoffMs: 30_000,
});

export class RestartPolicy {
  readonly options: RestartPolicyOptions;
  /** Times (ms) of the failures still inside the window, oldest first. */
  private failures: number[] = [];

  constructor(options: Partial<RestartPolicyOptions> = {}) {
    this.options = Object.freeze({ ...RESTART_DEFAULTS, ...options });
  }

  /** Records a failure (a worker lost, or a restart that did not load) at nowMs and decides what follows. */
  onFailure(nowMs: number): RestartDecision {
    const { maxRestarts, windowMs, initialBackoffMs, maxBackoffMs } = this.options;
    this.failures = this.failures.filter((t) => t > nowMs - windowMs);
    this.failures.push(nowMs);
    const k = this.failures.length;
    if (k > maxRestarts) return { action: 'give-up', failuresInWindow: k };
    return { action: 'restart', delayMs: Math.min(initialBackoffMs * 2 ** (k - 1), maxBackoffMs), failuresInWindow: k };
  }
}
