// What a per-sequence sampler (../sampler.ts) needs from a grammar: where it stands for the next
// token, the mask of allowed tokens, and the token chosen. The grammar-client's RemoteMatcher is the
// implementation (the matcher itself lives in the grammar worker).

/**
 *   ready    the mask for the next token is known
 *   pending  it is still being computed (the grammar worker is busy compiling another grammar)
 *   complete the grammar has ended the text (it needs no stop token)
 *   failed   the grammar cannot go on (a token was refused, or no token fits), or the worker is gone
 */
export type ConstraintState = 'ready' | 'pending' | 'complete' | 'failed';

export interface TokenConstraint {
  /**
   * Where the grammar stands for the next token. Waits up to `waitMs` for a mask that is being
   * computed, but never for a compile: then it answers 'pending' at once.
   */
  poll(waitMs: number): ConstraintState;
  /** Sets the logits [V] of tokens the grammar forbids next to −∞ (only after poll() gave 'ready'). */
  applyMask(logits: Float32Array): void;
  /** The token chosen; the mask for the one after it is computed in the background. */
  accept(tokenId: number): void;
  /** Frees the matcher (idempotent). */
  close(): void;
}
