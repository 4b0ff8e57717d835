// GenerationEvents → OpenAI chat wire format: one `chat.completion` object, or the stream of
// `chat.completion.chunk`s (same id and created on each; a role chunk first per choice, content
// chunks, a finish_reason chunk, and with include_usage a last chunk with empty choices and usage;
// every other chunk then carries `usage: null`). With include_progress, `prefill.progress`
// objects precede the first token.
import type { FinishReasonOut, GenerationEvent } from '../../server/generation.ts';
import { chatLogprobEntries, type ChatLogprobEntry, type TokenText } from '../common/logprobs.ts';
import { progressObject, responseObject, streamChunk, usageChunk, type StreamIdentity, type StreamOptions } from '../common/stream-chunks.ts';
import { UsageCounter } from '../common/usage.ts';
import type { ChatCompletionResponse } from './schema.ts';

export interface ChatFormatContext extends StreamIdentity {
  readonly n: number;
  readonly promptTokens: number;
  readonly withLogprobs: boolean;
  readonly tokenText: TokenText;
}

/** Collects the whole generation into one chat.completion object. */
export async function chatCompletion(events: AsyncIterable<GenerationEvent>, ctx: ChatFormatContext): Promise<ChatCompletionResponse> {
  const texts = Array.from({ length: ctx.n }, () => '');
  const logprobs: ChatLogprobEntry[][] = Array.from({ length: ctx.n }, () => []);
  const reasons: (FinishReasonOut | null)[] = Array.from({ length: ctx.n }, () => null);
  const usage = new UsageCounter(ctx.promptTokens);
  for await (const ev of events) {
    if (ev.type === 'delta') {
      texts[ev.index] += ev.text;
      if (ctx.withLogprobs) logprobs[ev.index]?.push(...chatLogprobEntries(ev.tokens, ctx.tokenText));
    } else if (ev.type === 'finish') {
      reasons[ev.index] = ev.finishReason;
      usage.add(ev);
    }
  }
  const choices = texts.map((content, index) => ({
    index,
    message: { role: 'assistant' as const, content },
    logprobs: ctx.withLogprobs ? { content: logprobs[index] ?? [] } : null,
    finish_reason: reasons[index] ?? 'stop',
  }));
  return responseObject(ctx, 'chat.completion', choices, usage.toJSON());
}

/** The chunk objects of a streamed chat completion, in order. */
export async function* chatChunks(events: AsyncIterable<GenerationEvent>, ctx: ChatFormatContext, opts: StreamOptions): AsyncGenerator<object> {
  const usage = new UsageCounter(ctx.promptTokens);
  const started = new Set<number>();
  const chunk = (choices: object[]): object => streamChunk(ctx, 'chat.completion.chunk', choices, opts);
  function* roleChunk(index: number): Generator<object> {
    if (started.has(index)) return;
    started.add(index);
    yield chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
  }
  for await (const ev of events) {
    switch (ev.type) {
      case 'progress':
        if (opts.includeProgress) yield progressObject(ctx, ev);
        break;
      case 'prompt_logprobs':
        break;
      case 'delta': {
        yield* roleChunk(ev.index);
        const entries = ctx.withLogprobs ? chatLogprobEntries(ev.tokens, ctx.tokenText) : [];
        if (ev.text === '' && entries.length === 0) break;
        yield chunk([{ index: ev.index, delta: { content: ev.text }, logprobs: ctx.withLogprobs ? { content: entries } : null, finish_reason: null }]);
        break;
      }
      case 'finish':
        yield* roleChunk(ev.index);
        usage.add(ev);
        yield chunk([{ index: ev.index, delta: {}, logprobs: null, finish_reason: ev.finishReason }]);
        break;
    }
  }
  if (opts.includeUsage) yield usageChunk(ctx, 'chat.completion.chunk', usage.toJSON());
}
