// RequestState: what the engine knows about one generation request while it lives in the worker.
//
// Lifecycle (the scheduler moves requests along; nothing else changes `status`):
//
//   submit ──► WAITING ──admit (slot, window reservation, maybe a prefix snapshot)──► PREFILLING
//     (prefix keys hashed         ▲                                                      │ chunk by chunk;
//      a bounded amount per step) │ preempted: everything freed,                         │ the first token is
//                                 │ requeued first, recomputes                          ▼ sampled after the last
//                                 └──────────────── (full-attention pool empty) ◄── DECODING (one token per step)
//                                                                                         │
//          any state ── abort ──► ABORTED                          stop token / max_tokens ▼
//                                                                   FINISHED ◄── FOLDING (prefix caching: one more
//                                                                                step feeds the last token, then an
//                                                                                exact snapshot of prompt + completion)
//
// FINISHED and ABORTED are terminal: the request's slot, pages and reservation are freed on entry. A
// FOLDING request has already reported `done`; it only finishes its snapshot (its id is free again).
//
// Token positions: the prompt is positions [0, n); generated tokens follow. After a preemption the
// request recomputes prompt + generated tokens but the last one (which the next decode step feeds).
import type { PrefetchedSnapshot } from '../cache/cache-manager.ts';
import type { PrefixKeyer } from '../cache/prefix-keys.ts';
import type { FinishReason, GenerateRequest, PromptLogprobEntry, SamplingParams } from './types.ts';

export type RequestStatus = 'waiting' | 'prefilling' | 'decoding' | 'folding' | 'finished' | 'aborted';

/** A point where the prefill stops to snapshot the state (chunks end there). */
export interface SnapshotPoint {
  /** Prefix length. */
  readonly at: number;
  readonly key: string;
  /** Exact (not page-aligned) snapshots: the key of the whole pages before `at` and the tokens after them. */
  readonly exact: { readonly baseKey: string; readonly tail: Int32Array } | null;
}

let nextSequenceNumber = 0;

export class RequestState {
  readonly requestId: string;
  /** Unique within the worker: names the sequence in the cache and the step runner (request ids may be reused once done). */
  readonly seqId: string;
  readonly promptTokenIds: Int32Array;
  readonly sampling: SamplingParams;
  readonly reportProgress: boolean;
  status: RequestStatus = 'waiting';
  /** Positions [0, numComputedTokens) are folded into the recurrent state / written to KV pages. */
  numComputedTokens = 0;
  /** Prompt tokens whose state came from a prefix cache (not computed for this request). */
  numCachedTokens = 0;
  /** Times this request was preempted (its memory freed, its tokens recomputed). */
  numPreemptions = 0;
  /** Whole-page prefix keys of the prompt, hashed while WAITING when prefix caching applies; dropped on admission (O(n/P)). */
  keyer: PrefixKeyer | null = null;
  /** The prompt's last whole-page key and its page count, kept after admission to name exact snapshots of prompt + completion. */
  lastPromptKey: { readonly key: string; readonly numPages: number } = { key: '', numPages: 0 };
  /** A prefix snapshot read from disk for this request while it waits (null: none, or not read yet). */
  prefetched: PrefetchedSnapshot | null = null;
  /** That read is still in flight: the request is not admitted before it ends. */
  prefetching = false;
  /** Prefill the prompt and snapshot it, sample nothing (GenerateRequest.prefillOnly). */
  readonly prefillOnly: boolean;
  /** A prefillOnly request's snapshot key (its whole prompt), set at admission. */
  warmKey: string | null = null;
  /** Hint: this many leading prompt tokens are likely shared by later prompts (GenerateRequest). */
  readonly sharedPrefixTokens: number;
  /** Another request with the same prompt whose prefill this one waits for (GenerateRequest.forkOf). */
  readonly forkOf: string | null;
  /** Where this prefill snapshots the state for later requests (ascending); chunks end there. */
  snapshotPoints: SnapshotPoint[] = [];
  readonly outputTokenIds: number[] = [];
  /** DECODING, but its last logits wait for the grammar's mask (step-runner.ts): not scheduled meanwhile. */
  awaitingGrammar = false;
  finishReason: FinishReason | null = null;
  stopTokenId: number | null = null;
  /** Prompt logprobs gathered chunk by chunk (entry 0 is null), when sampling.promptLogprobs !== null. */
  promptLogprobs: (PromptLogprobEntry | null)[] = [];
  // Timestamps (performance.now(), ms) for RequestTiming.
  readonly arrivalMs: number;
  admittedMs: number | null = null;
  firstTokenMs: number | null = null;
  finishedMs: number | null = null;
  /** Last time a `progress` event was sent. */
  lastProgressMs = 0;

  constructor(req: GenerateRequest, nowMs: number) {
    this.requestId = req.requestId;
    this.seqId = `${req.requestId}#${nextSequenceNumber++}`;
    this.promptTokenIds = req.promptTokenIds instanceof Int32Array ? req.promptTokenIds : Int32Array.from(req.promptTokenIds);
    this.sampling = req.sampling;
    this.reportProgress = req.reportProgress;
    this.sharedPrefixTokens = req.sharedPrefixTokens ?? 0;
    this.forkOf = req.forkOf ?? null;
    this.prefillOnly = req.prefillOnly === true;
    this.arrivalMs = nowMs;
  }

  get numPromptTokens(): number {
    return this.promptTokenIds.length;
  }

  /** Most positions this request can ever occupy: prompt + max new tokens. */
  get maxTotalTokens(): number {
    return this.promptTokenIds.length + this.sampling.maxTokens;
  }

  /**
   * Positions the prefill phase computes: the prompt, or after a preemption the prompt and every
   * generated token but the last (the next decode step feeds that one).
   */
  get prefillTarget(): number {
    return this.outputTokenIds.length === 0 ? this.promptTokenIds.length : this.promptTokenIds.length + this.outputTokenIds.length - 1;
  }

  get numPromptTokensLeft(): number {
    return this.prefillTarget - this.numComputedTokens;
  }

  /** The prefill's last chunk samples the first token (not when it recomputes after a preemption). */
  get samplesAfterPrefill(): boolean {
    return this.outputTokenIds.length === 0;
  }

  get isFinished(): boolean {
    return this.status === 'finished' || this.status === 'aborted';
  }

  /** Token at position i: the prompt, then the generated tokens, then the stop token (if one ended it). */
  tokenAt(i: number): number {
    const n = this.promptTokenIds.length;
    if (i < n) return this.promptTokenIds[i]!;
    const out = this.outputTokenIds[i - n];
    if (out !== undefined) return out;
    if (i - n === this.outputTokenIds.length && this.stopTokenId !== null) return this.stopTokenId;
    throw new RangeError(`request ${this.requestId}: no token at position ${i}`);
  }

  /** Tokens at positions [start, end). */
  tokens(start: number, end: number): Int32Array {
    const n = this.promptTokenIds.length;
    if (end <= n) return this.promptTokenIds.subarray(start, end);
    const out = new Int32Array(end - start);
    for (let i = start; i < end; i++) out[i - start] = this.tokenAt(i);
    return out;
  }

  /** Number of tokens the request has seen: prompt + generated (+ the stop token). */
  get numTokens(): number {
    return this.promptTokenIds.length + this.outputTokenIds.length + (this.stopTokenId !== null ? 1 : 0);
  }

  /** The token a decode (or fold) step feeds: the one at position numComputedTokens. */
  get lastTokenId(): number {
    return this.tokenAt(this.numComputedTokens);
  }
}
