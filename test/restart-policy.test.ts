// RestartPolicy: backoff doubling within the window, the window sliding, and giving up.
import { describe, expect, it } from 'vitest';
import { RestartPolicy } from '../src/engine/restart-policy.ts';

describe('RestartPolicy', () => {
  const opts = { maxRestarts: 3, windowMs: 60_000, initialBackoffMs: 1000, maxBackoffMs: 3000 };

  it('doubles the backoff with each failure in the window, up to the maximum, then gives up', () => {
    const p = new RestartPolicy(opts);
    expect(p.onFailure(0)).toEqual({ action: 'restart', delayMs: 1000, failuresInWindow: 1 });
    expect(p.onFailure(10_000)).toEqual({ action: 'restart', delayMs: 2000, failuresInWindow: 2 });
    expect(p.onFailure(20_000)).toEqual({ action: 'restart', delayMs: 3000, failuresInWindow: 3 });
    expect(p.onFailure(30_000)).toEqual({ action: 'give-up', failuresInWindow: 4 });
  });

  it('forgets failures older than the window', () => {
    const p = new RestartPolicy(opts);
    p.onFailure(0);
    p.onFailure(1000);
    p.onFailure(2000);
    // 0 and 1000 have left the window [1001, 61_000]: two failures in it, not four.
    expect(p.onFailure(61_000)).toEqual({ action: 'restart', delayMs: 2000, failuresInWindow: 2 });
    expect(p.onFailure(200_000)).toEqual({ action: 'restart', delayMs: 1000, failuresInWindow: 1 });
  });

  it('maxRestarts 0 gives up at the first failure', () => {
    expect(new RestartPolicy({ ...opts, maxRestarts: 0 }).onFailure(5)).toEqual({ action: 'give-up', failuresInWindow: 1 });
  });
});
