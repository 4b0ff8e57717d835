// What the inference worker (grammar-client.ts) and the grammar worker (grammar-worker.ts) share.
//
// Commands go by postMessage (the tokens of one step in one message); masks come back through shared
// memory, so the step loop reads them without waiting for a message:
//
//   control  Int32Array [3]:  PROGRESS  bumped (and notified) after every mask and when a compile starts
//                             COMPILING 1 while the grammar worker checks or compiles a grammar
//                             MATCHERS  matchers alive
//   matcher  Int32Array [2 + ⌈V/32⌉]:  SEQ     tokens accepted when the mask below was computed (−1: none yet)
//                                      STATUS  READY | COMPLETE (grammar finished) | FAILED
//                                      MASK    bit t of word t>>5 set ⇔ token t allowed next
// The worker writes MASK and STATUS, then stores SEQ, then bumps PROGRESS: a reader that sees the SEQ
// it expects reads a whole mask.
import type { GrammarConstraint } from '../types.ts';

export const CONTROL_PROGRESS = 0;
export const CONTROL_COMPILING = 1;
export const CONTROL_MATCHERS = 2;
export const CONTROL_INTS = 3;

export const MATCHER_SEQ = 0;
export const MATCHER_STATUS = 1;
export const MATCHER_MASK = 2;

export const STATUS_READY = 0;
export const STATUS_COMPLETE = 1;
export const STATUS_FAILED = 2;

/** Int32 words of a matcher's shared area for a vocabulary of `vocabSize` ids. */
export function matcherInts(vocabSize: number): number {
  return MATCHER_MASK + Math.ceil(vocabSize / 32);
}

export interface GrammarWorkerInit {
  readonly modelDir: string;
  /** Width of the model's logits (may exceed the tokenizer's vocabulary). */
  readonly vocabSize: number;
  readonly eosTokenIds: readonly number[];
  /** Compiled grammars kept (LRU). */
  readonly cacheEntries: number;
  readonly control: SharedArrayBuffer;
}

export type ToGrammarWorker =
  | {
      readonly type: 'open';
      readonly id: number;
      readonly constraint: GrammarConstraint;
      /** The request's stop ids (empty: the grammar ends the request by itself once complete). */
      readonly stopTokenIds: readonly number[];
      readonly shared: SharedArrayBuffer;
    }
  /** The tokens sampled in one step, one per matcher (pairs id, tokenId), sent together. */
  | { readonly type: 'accept'; readonly accepted: Int32Array }
  | { readonly type: 'close'; readonly id: number };

export type FromGrammarWorker =
  | { readonly type: 'opened'; readonly id: number; readonly compileMs: number; readonly cached: boolean }
  | { readonly type: 'open_failed'; readonly id: number; readonly message: string }
  | { readonly type: 'init_failed'; readonly message: string }
  | { readonly type: 'log'; readonly message: string };
