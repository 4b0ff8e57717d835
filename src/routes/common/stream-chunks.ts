// What every generation wire object shares, chat or text: the same id, created and model on the
// whole response and on each streamed chunk; with include_usage every chunk carries `usage: null` and a last chunk has empty choices and
// the usage (OpenAI's rule); and our `prefill.progress` extension object, sent before the first token.
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
  readonly includeProgress: boolean;
}

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

export function progressObject(ctx: StreamIdentity, ev: Extract<GenerationEvent, { type: 'progress' }>): object {
  return {
    id: ctx.id,
    object: 'prefill.progress',
    created: ctx.created,
    model: ctx.model,
    processed_tokens: ev.processedTokens,
    total_tokens: ev.totalTokens,
    cached_tokens: ev.cachedTokens,
    elapsed_seconds: ev.elapsedSeconds,
  };
}
