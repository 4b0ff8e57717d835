// RequestState: what the engine knows about one generation request while it lives in the worker.
//
// Lifecycle (the scheduler moves requests along; nothing else changes `status`):
//
//   submit ──► WAITING ──admit (slot + page reservation)──► PREFILLING ──last prompt chunk──► DECODING
//                 │                                            │  (one chunk per step,           │ (one token
//                 │                                            │   first token sampled           │  per step)
//                 │                                            │   after the last chunk)         │
//                 │                                            ▼                                 ▼
//                 └─────────────── abort ───────────────► ABORTED           FINISHED ◄── stop token / max_tokens
//                                                         (any state)        (or prompt done and the first
//                                                                              sampled token already ends it)
//
// FINISHED and ABORTED are terminal: the request's slot, pages and reservation are freed on entry.
import type { PrefetchedSnapshot } from '../cache/cache-manager.ts';
import type { FinishReason, GenerateRequest, PromptLogprobEntry, SamplingParams } from './types.ts';

export type RequestStatus = 'waiting' | 'prefilling' | 'decoding' | 'finished' | 'aborted';

export class RequestState {
  readonly requestId: string;
  readonly promptTokenIds: readonly number[];
  readonly sampling: SamplingParams;
  readonly reportProgress: boolean;
  status: RequestStatus = 'waiting';
  /** Positions [0, numComputedTokens) are folded into the GLA state / written to KV pages. */
  numComputedTokens = 0;
  /** Prompt tokens whose state came from a prefix cache (not computed for this request). */
  numCachedTokens = 0;
  /** prefixKeys() of the prompt while WAITING, when prefix caching applies; dropped on admission (O(n/P)). */
  prefixKeys: readonly string[] | null = null;
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
  /** Prefix lengths (ascending, page multiples) at which the state is snapshotted for later requests; chunks end there. */
  snapshotAt: number[] = [];
  /** Keys of those snapshots (prefixKeys of those lengths). */
  snapshotKeys: string[] = [];
  readonly outputTokenIds: number[] = [];
  finishReason: FinishReason | null = null;
  stopTokenId: number | null = null;
  /** Prompt logprobs gathered chunk by chunk (entry 0 is null), when sampling.promptLogprobs !== null. */
  readonly promptLogprobs: (PromptLogprobEntry | null)[] = [];
  // Timestamps (performance.now(), ms) for RequestTiming.
  readonly arrivalMs: number;
  admittedMs: number | null = null;
  firstTokenMs: number | null = null;
  finishedMs: number | null = null;
  /** Last time a `progress` event was sent. */
  lastProgressMs = 0;

  constructor(req: GenerateRequest, nowMs: number) {
    this.requestId = req.requestId;
    this.promptTokenIds = req.promptTokenIds;
    this.sampling = req.sampling;
    this.reportProgress = req.reportProgress;
    this.sharedPrefixTokens = req.sharedPrefixTokens ?? 0;
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

  get numPromptTokensLeft(): number {
    return this.promptTokenIds.length - this.numComputedTokens;
  }

  get isFinished(): boolean {
    return this.status === 'finished' || this.status === 'aborted';
  }

  /** The token a decode step feeds: the last sampled one, at position numComputedTokens. */
  get lastTokenId(): number {
    const t = this.outputTokenIds[this.outputTokenIds.length - 1];
    if (t === undefined) throw new Error(`request ${this.requestId} has no sampled token to decode from`);
    return t;
  }
}
