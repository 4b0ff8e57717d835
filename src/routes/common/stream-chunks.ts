// What every generation wire object shares, chat or text: the same id, created and model on the
// whole response and on each streamed chunk; with include_usage every chunk carries `usage: null` and a last chunk has empty choices and
// the usage (OpenAI's rule). Prefill progress, before the first token, comes in two shapes: our
// `prefill.progress` object (stream_options.include_progress), and llama.cpp's `return_progress`
// chunk — an ordinary chunk of choice 0 with an empty assistant delta (chat) or empty text
// (completions) and a top-level `prompt_progress: {total, cache, processed, time_ms}`, where
// `processed` counts the prompt tokens done, cached ones included, as llama-server does.
import type { GenerationEvent } from '../../server/generation.ts';
import type { Usage } from './usage.ts';

/** The fields that name one completion on every object of its stream. */
export interface StreamIdentity {
  readonly id: string;
  readonly created: number;
  readonly model: string;
}

export interface StreamOptions {
  readonly includeUsage: boolean;
  /** `prefill.progress` objects (stream_options.include_progress). */
  readonly includeProgress: boolean;
  /** llama.cpp's `prompt_progress` chunks (return_progress). */
  readonly returnProgress: boolean;
}

type ProgressEvent = Extract<GenerationEvent, { type: 'progress' }>;

type ChunkObject = 'chat.completion.chunk' | 'text_completion';
type ResponseObject = 'chat.completion' | 'text_completion';

/** The non-streamed response: the identity, every choice, and the usage of all of them. */
export function responseObject<O extends ResponseObject, C>(
  ctx: StreamIdentity,
  object: O,
  choices: C[],
  usage: Usage,
): { id: string; object: O; created: number; model: string; choices: C[]; usage: Usage } {
  return { id: ctx.id, object, created: ctx.created, model: ctx.model, choices, usage };
}

/** One chunk of `choices`; `usage: null` on it when the stream ends with a usage chunk. */
export function streamChunk(ctx: StreamIdentity, object: ChunkObject, choices: readonly object[], opts: StreamOptions): object {
  const c: Record<string, unknown> = { id: ctx.id, object, created: ctx.created, model: ctx.model, choices };
  if (opts.includeUsage) c['usage'] = null;
  return c;
}

/** The last chunk under include_usage: no choices, the usage of all of them. */
export function usageChunk(ctx: StreamIdentity, object: ChunkObject, usage: Usage): object {
  return { id: ctx.id, object, created: ctx.created, model: ctx.model, choices: [], usage };
}

export function progressObject(ctx: StreamIdentity, ev: ProgressEvent): object {
  return {
    id: ctx.id,
    object: 'prefill.progress',
    created: ctx.created,
    model: ctx.model,
    processed_tokens: ev.processedTokens,
    total_tokens: ev.totalTokens,
    cached_tokens: ev.cachedTokens,
    elapsed_seconds: ev.elapsedSeconds,
    eta_seconds: ev.etaSeconds,
  };
}

/** The progress chunks a stream carries for one progress event, per the stream options. */
export function* progressChunks(ctx: StreamIdentity, object: ChunkObject, ev: ProgressEvent, opts: StreamOptions): Generator<object> {
  if (opts.includeProgress) yield progressObject(ctx, ev);
  if (!opts.returnProgress) return;
  const choice = object === 'chat.completion.chunk'
    ? { index: 0, delta: { role: 'assistant', content: null }, logprobs: null, finish_reason: null }
    : { index: 0, text: '', logprobs: null, finish_reason: null };
  yield {
    ...streamChunk(ctx, object, [choice], opts),
    prompt_progress: {
      total: ev.totalTokens,
      cache: ev.cachedTokens,
      processed: ev.processedTokens,
      time_ms: Math.round(ev.elapsedSeconds * 1000),
    },
  };
}
