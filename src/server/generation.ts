// One generation request as the routes see it: submits n engine requests (ids `${id}-${i}`, seeds
// seed+i), turns each one's token ids into text (IncrementalDetokenizer) cut at stop strings
// (StopStringMatcher → engine.abort, finish 'stop'), and merges the n streams into one ordered
// stream of GenerationEvents. Wire formats (chat chunk, completion choice) are the routes' job.
//
// Life of an HTTP generation request:
//
//   parse + validate ─▶ prepare (template, tokenize, sampling) ─▶ submit n engine requests
//        │ 400/404/503                                               │ 429/400 before any event
//        ▼                                                           ▼
//   error envelope ◀──────────────────────────────────── first event (or one keep-alive interval)
//                                                                    │ commit 200 (SSE) / collect
//                                                                    ▼
//   streaming ──done per choice──▶ finished (finish_reason stop|length, usage, [DONE])
//       ├─ stop string matched ─▶ engine.abort(choice) ─▶ finish_reason 'stop'
//       ├─ client gone ─▶ signal aborts every choice ─▶ engine frees everything; nothing written
//       ├─ drain deadline ─▶ abortAll ─▶ 503 error event + [DONE]
//       └─ engine error ─▶ logged; 500 error event + [DONE] (or a 500 before the stream began)
//
// Errors: an engine error before the first event (queue full, rejected, unavailable) is thrown from
// the first next(); a stream that ends in 'error' throws a GenerationFailedError; one ended by a
// drain throws the drain's 503. Leaving the loop early (client gone) aborts every choice, and the
// iterator's return() resolves only once every engine stream has ended, so its resources are free.
import { setMaxListeners } from 'node:events';
import { IncrementalDetokenizer, StopStringMatcher } from '../engine/detokenizer.ts';
import type { GrammarConstraint, PromptLogprobEntry, PromptTokenIds, SamplingParams, TokenEvent, TopLogprob, WarmedSnapshot } from '../engine/types.ts';
import { ApiError, UnavailableError } from './errors.ts';
import type { EnginePort, MetricsPort, TokenizerPort } from './ports.ts';
import { PrefillEta } from './prefill-eta.ts';

export interface GenerationSpec {
  readonly requestId: string;
  readonly promptTokenIds: PromptTokenIds;
  readonly sampling: SamplingParams;
  /** Number of independent choices (1..16). */
  readonly n: number;
  readonly stop: readonly string[];
  readonly skipSpecialTokens: boolean;
  readonly reportProgress: boolean;
  /** Leading prompt tokens later prompts are likely to share (GenerateRequest.sharedPrefixTokens). */
  readonly sharedPrefixTokens?: number;
  /** Structured outputs: every choice's text follows this grammar. */
  readonly constraint?: GrammarConstraint;
  /** Prefill and snapshot the prompt, generate nothing (GenerateRequest.prefillOnly: the prefix-cache warm API). */
  readonly prefillOnly?: boolean;
  /** Called once every choice has been handed to the engine (the admission ticket is released then). */
  readonly onSubmitted?: () => void;
}

export interface GeneratedToken {
  readonly tokenId: number;
  readonly logprob?: number;
  readonly top?: readonly TopLogprob[];
}

export type FinishReasonOut = 'stop' | 'length';

export type GenerationEvent =
  | {
      readonly type: 'progress';
      readonly processedTokens: number;
      readonly totalTokens: number;
      readonly cachedTokens: number;
      /** Since the request was submitted (queue wait included). */
      readonly elapsedSeconds: number;
      /** Seconds the prefill still needs at the rate observed so far; null until there is a rate (PrefillEta). */
      readonly etaSeconds: number | null;
    }
  | { readonly type: 'prompt_logprobs'; readonly index: number; readonly entries: readonly (PromptLogprobEntry | null)[] }
  /** New text of one choice, and the tokens that produced it (text may lag tokens near a stop string). */
  | { readonly type: 'delta'; readonly index: number; readonly text: string; readonly tokens: readonly GeneratedToken[] }
  | {
      readonly type: 'finish';
      readonly index: number;
      readonly finishReason: FinishReasonOut;
      readonly promptTokens: number;
      readonly completionTokens: number;
      readonly cachedTokens: number;
      /** A warm-up's stored snapshot (prefillOnly). */
      readonly snapshot?: WarmedSnapshot;
    };

/** The engine ended a stream with finishReason 'error'; the message is for the log only. */
class GenerationFailedError extends Error {
  override readonly name = 'GenerationFailedError';
}

export interface GenerationDeps {
  readonly engine: EnginePort;
  readonly tokenizer: TokenizerPort;
  readonly metrics: MetricsPort;
}

type Item = { readonly kind: 'event'; readonly event: GenerationEvent } | { readonly kind: 'error'; readonly error: unknown };

/** A FIFO that an async consumer can await. */
class ItemQueue {
  readonly #items: Item[] = [];
  #wake: (() => void) | null = null;

  push(item: Item): void {
    this.#items.push(item);
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  async shift(): Promise<Item> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) return item;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
}

/** Engine request ids of the n choices of one HTTP request. */
function choiceRequestIds(requestId: string, n: number): string[] {
  return n === 1 ? [requestId] : Array.from({ length: n }, (_, i) => `${requestId}-${i}`);
}

/**
 * Runs the generation. `signal` is the request's lifetime (client gone, or a drain's abortAll);
 * its reason, when an ApiError, is what a drained stream throws.
 */
export async function* runGeneration(deps: GenerationDeps, spec: GenerationSpec, signal: AbortSignal): AsyncGenerator<GenerationEvent> {
  const { engine } = deps;
  const ids = choiceRequestIds(spec.requestId, spec.n);
  const internal = new AbortController();
  const choiceSignal = AbortSignal.any([signal, internal.signal]);
  // Each choice's engine stream listens on it: n (≤ 16) listeners are expected, not a leak.
  setMaxListeners(Math.max(10, 2 * spec.n), choiceSignal);
  const queue = new ItemQueue();
  const startedAt = performance.now();
  const finished = new Set<number>();

  const pump = async (index: number, requestId: string): Promise<void> => {
    const tracker = deps.metrics.trackRequest();
    const detok = new IncrementalDetokenizer(deps.tokenizer, { skipSpecialTokens: spec.skipSpecialTokens });
    const matcher = spec.stop.length > 0 ? new StopStringMatcher([...spec.stop]) : null;
    let stoppedByString = false;
    let numTokens = 0;
    const eta = new PrefillEta();
    const seed = spec.sampling.seed;
    const sampling: SamplingParams = spec.n > 1 && seed !== null ? { ...spec.sampling, seed: seed + index } : spec.sampling;
    const emitText = (text: string, tokens: readonly GeneratedToken[]): void => {
      if (text !== '' || tokens.length > 0) queue.push({ kind: 'event', event: { type: 'delta', index, text, tokens } });
    };
    try {
      const stream = engine.generate(
        {
          requestId,
          promptTokenIds: spec.promptTokenIds,
          sampling,
          reportProgress: spec.reportProgress && index === 0,
          ...(spec.sharedPrefixTokens !== undefined ? { sharedPrefixTokens: spec.sharedPrefixTokens } : {}),
          // Choices after the first resume from the first one's prefill: the prompt is computed once.
          ...(index > 0 ? { forkOf: ids[0]! } : {}),
          ...(spec.constraint !== undefined ? { constraint: spec.constraint } : {}),
          ...(spec.prefillOnly === true ? { prefillOnly: true } : {}),
        },
        choiceSignal,
      );
      for await (const ev of stream as AsyncIterable<TokenEvent>) {
        if (ev.type === 'done') {
          // A stop string ends the request as 'stop' at the tokens streamed, whatever the engine saw after.
          tracker.onEvent(stoppedByString ? { ...ev, finishReason: 'stop', completionTokens: numTokens } : ev);
          finished.add(index);
          let reason: FinishReasonOut;
          let completionTokens = ev.completionTokens;
          if (stoppedByString) {
            reason = 'stop';
            completionTokens = numTokens;
          } else if (ev.finishReason === 'stop' || ev.finishReason === 'length') {
            reason = ev.finishReason;
            let tail = detok.flush();
            if (matcher !== null) {
              const r = matcher.push(tail);
              tail = r.emit;
              if (r.stopped) reason = 'stop';
              else tail += matcher.flush();
            }
            emitText(tail, []);
          } else if (ev.finishReason === 'abort') {
            const why: unknown = choiceSignal.reason;
            queue.push({ kind: 'error', error: why instanceof ApiError ? why : new UnavailableError('the request was aborted', 'aborted') });
            return;
          } else {
            queue.push({ kind: 'error', error: new GenerationFailedError(ev.errorMessage ?? 'engine error') });
            return;
          }
          queue.push({
            kind: 'event',
            event: {
              type: 'finish',
              index,
              finishReason: reason,
              promptTokens: ev.promptTokens,
              completionTokens,
              cachedTokens: ev.cachedTokens,
              ...(ev.snapshot !== undefined ? { snapshot: ev.snapshot } : {}),
            },
          });
          return;
        }
        if (stoppedByString) continue; // the abort is on its way; the rest is past the stop string
        tracker.onEvent(ev);
        if (ev.type === 'token') {
          numTokens++;
          let text = detok.push(ev.tokenId);
          if (matcher !== null) {
            const r = matcher.push(text);
            text = r.emit;
            if (r.stopped) {
              stoppedByString = true;
              engine.abort(requestId);
            }
          }
          const token: GeneratedToken =
            ev.logprob === undefined ? { tokenId: ev.tokenId } : ev.top === undefined ? { tokenId: ev.tokenId, logprob: ev.logprob } : { tokenId: ev.tokenId, logprob: ev.logprob, top: ev.top };
          emitText(text, [token]);
        } else if (ev.type === 'progress') {
          const elapsedSeconds = (performance.now() - startedAt) / 1000;
          queue.push({
            kind: 'event',
            event: {
              type: 'progress',
              processedTokens: ev.processedTokens,
              totalTokens: ev.totalTokens,
              cachedTokens: ev.cachedTokens,
              elapsedSeconds,
              etaSeconds: eta.observe(ev.processedTokens, ev.totalTokens, elapsedSeconds),
            },
          });
        } else {
          queue.push({ kind: 'event', event: { type: 'prompt_logprobs', index, entries: ev.entries } });
        }
      }
      queue.push({ kind: 'error', error: new GenerationFailedError('engine stream ended without a done event') });
    } catch (err) {
      queue.push({ kind: 'error', error: choiceSignal.aborted && choiceSignal.reason instanceof ApiError ? choiceSignal.reason : err });
    } finally {
      finished.add(index);
      tracker.onFinish();
    }
  };

  // Each pump hands its request to the engine synchronously, before its first await.
  const pumps = ids.map((id, i) => pump(i, id));
  spec.onSubmitted?.();
  let numOpen = ids.length;
  try {
    while (numOpen > 0) {
      const item = await queue.shift();
      if (item.kind === 'error') throw item.error;
      if (item.event.type === 'finish') numOpen--;
      yield item.event;
    }
  } finally {
    if (numOpen > 0) {
      // Error or early exit: stop every choice still running and wait until the engine let go.
      internal.abort();
      ids.forEach((id, i) => {
        if (!finished.has(i)) engine.abort(id);
      });
    }
    await Promise.allSettled(pumps);
  }
}
