// Token events crossing from the inference worker: prompt logprobs travel as transferred typed arrays
// and come back equal to what the engine emitted (null entries, empty and full top lists, exact
// float64 logprobs); other events cross unchanged.
import { describe, expect, it } from 'vitest';
import { packEvent, unpackEvent } from '../src/engine/wire-events.ts';
import type { PromptLogprobEntry, TokenEvent } from '../src/engine/types.ts';

/** What postMessage does to a value and its transfer list. */
function cross<T>(value: T, transfer: ArrayBuffer[]): T {
  return structuredClone(value, { transfer });
}

describe('wire events', () => {
  it('prompt logprobs cross as arrays and are rebuilt exactly', () => {
    const entries: (PromptLogprobEntry | null)[] = [null];
    for (let i = 1; i < 300; i++) {
      const top = Array.from({ length: i % 5 === 0 ? 0 : (i % 21) }, (_, j) => ({ tokenId: (i * 31 + j) % 1000, logprob: -Math.PI * j - 1 / i }));
      entries.push({ tokenId: i * 7, logprob: -1 / (i + 0.123456789), top });
    }
    const event: TokenEvent = { type: 'prompt_logprobs', entries };
    const transfer: ArrayBuffer[] = [];
    const wire = packEvent(event, transfer);
    expect(wire.type).toBe('prompt_logprobs_packed');
    expect(transfer).toHaveLength(6);
    const arrived = cross(wire, transfer);
    expect(transfer.every((b) => b.byteLength === 0)).toBe(true); // moved, not copied
    expect(unpackEvent(arrived)).toEqual(event);
  });

  it('other events cross as they are, with nothing to transfer', () => {
    const event: TokenEvent = { type: 'token', tokenId: 5, logprob: -0.5, top: [{ tokenId: 5, logprob: -0.5 }] } as TokenEvent;
    const transfer: ArrayBuffer[] = [];
    expect(unpackEvent(cross(packEvent(event, transfer), transfer))).toEqual(event);
    expect(transfer).toEqual([]);
  });
});
