// GenerationEvents → OpenAI chat wire format: one `chat.completion` object, or the stream of
// `chat.completion.chunk`s (same id and created on each; a role chunk first per choice, content
// chunks, a finish_reason chunk, and with include_usage a last chunk with empty choices and usage;
// every other chunk then carries `usage: null`). With include_progress / return_progress, progress
// objects precede the first token. When the request offered tools, reply text is parsed for tool
// calls (./tool-calls.ts): calls go to `message.tool_calls` (streamed: one `delta.tool_calls` entry per
// complete call), the rest stays content, and a reply that ended normally with calls finishes with
// 'tool_calls'. For templates that write <think> blocks, the reasoning is split off first
// (./reasoning.ts) into `reasoning_content` (streamed: `delta.reasoning_content` chunks before content).
// A reply sent as the model wrote it (nothing taken out as a call or as reasoning) is offered, with its
// token ids, to the conversation cache (./reply-ids.ts), so the next turn can resume after it.
import type { FinishReasonOut, GenerationEvent } from '../../server/generation.ts';
import { chatLogprobEntries, type ChatLogprobEntry, type TokenText } from '../common/logprobs.ts';
import { progressChunks, responseObject, streamChunk, usageChunk, type StreamIdentity, type StreamOptions } from '../common/stream-chunks.ts';
import { UsageCounter } from '../common/usage.ts';
import type { ChatCompletionResponse } from './schema.ts';
import { ReasoningParser, splitReasoning, type ReasoningMode } from './reasoning.ts';
import type { ReplyIdsCache } from './reply-ids.ts';
import { parseToolCalls, ToolCallParser, type ToolCall } from './tool-calls.ts';

export interface ChatFormatContext extends StreamIdentity {
  readonly n: number;
  readonly promptTokens: number;
  readonly withLogprobs: boolean;
  readonly tokenText: TokenText;
  /** The request offered tools (and tool_choice is not 'none'): parse replies for tool calls. */
  readonly parseToolCalls: boolean;
  /** Most calls kept per reply (parallel_tool_calls: false → 1); later ones are dropped. Unset: all. */
  readonly maxToolCalls?: number | null;
  /** The template writes reasoning blocks: split replies into reasoning_content and content. */
  readonly reasoning?: ReasoningMode | null;
  /** Where replies whose content is exactly the model's text are remembered with their ids; unset: nowhere. */
  readonly replies?: Pick<ReplyIdsCache, 'remember'> | null;
}

/** The generated ids of each choice, collected only when there is a cache to offer the replies to. */
function replyIds(ctx: ChatFormatContext): number[][] | null {
  return ctx.replies === undefined || ctx.replies === null ? null : Array.from({ length: ctx.n }, () => []);
}

/** Offers a finished reply to the cache when its content is the whole text the model wrote. */
function offerReply(ctx: ChatFormatContext, ids: number[][] | null, index: number, text: string, content: string | null, numCalls: number): void {
  const own = ids?.[index];
  if (own === undefined || numCalls > 0 || content !== text) return;
  ctx.replies?.remember(content, own);
}

type ChatFinishReason = FinishReasonOut | 'tool_calls';

/** A reply with calls that ended on its own (not cut by max_tokens) finishes with 'tool_calls'. */
function finishReason(reason: FinishReasonOut, withCalls: boolean): ChatFinishReason {
  return withCalls && reason === 'stop' ? 'tool_calls' : reason;
}

/** Collects the whole generation into one chat.completion object. */
export async function chatCompletion(events: AsyncIterable<GenerationEvent>, ctx: ChatFormatContext): Promise<ChatCompletionResponse> {
  const texts = Array.from({ length: ctx.n }, () => '');
  const logprobs: ChatLogprobEntry[][] = Array.from({ length: ctx.n }, () => []);
  const reasons: (FinishReasonOut | null)[] = Array.from({ length: ctx.n }, () => null);
  const usage = new UsageCounter(ctx.promptTokens);
  const ids = replyIds(ctx);
  for await (const ev of events) {
    if (ev.type === 'delta') {
      texts[ev.index] += ev.text;
      ids?.[ev.index]?.push(...ev.tokens.map((t) => t.tokenId));
      if (ctx.withLogprobs) logprobs[ev.index]?.push(...chatLogprobEntries(ev.tokens, ctx.tokenText));
    } else if (ev.type === 'finish') {
      reasons[ev.index] = ev.finishReason;
      usage.add(ev);
    }
  }
  const choices = texts.map((reply, index) => {
    const mode = ctx.reasoning ?? null;
    const { reasoning, content: text } = mode === null ? { reasoning: null, content: reply } : splitReasoning(reply, mode);
    const { content, calls: all } = ctx.parseToolCalls ? parseToolCalls(text) : { content: text, calls: [] };
    const calls = ctx.maxToolCalls === undefined || ctx.maxToolCalls === null ? all : all.slice(0, ctx.maxToolCalls);
    offerReply(ctx, ids, index, reply, content, all.length);
    return {
      index,
      message: {
        role: 'assistant' as const,
        content: reasoning !== null && content === '' ? null : content,
        ...(mode !== null ? { reasoning_content: reasoning } : {}),
        ...(calls.length > 0 ? { tool_calls: calls } : {}),
      },
      logprobs: ctx.withLogprobs ? { content: logprobs[index] ?? [] } : null,
      finish_reason: finishReason(reasons[index] ?? 'stop', calls.length > 0),
    };
  });
  return responseObject(ctx, 'chat.completion', choices, usage.toJSON());
}

/** About how many JSON values `answer` holds: per logprob entry its token, logprob, bytes and theirs of each alternative. */
export function chatCompletionValues(answer: ChatCompletionResponse): number {
  let values = 0;
  for (const c of answer.choices) {
    values += (c.message.content?.length ?? 0) / 64 + (c.message.reasoning_content?.length ?? 0) / 64;
    for (const e of c.logprobs?.content ?? []) values += 3 * (1 + e.top_logprobs.length);
  }
  return values;
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
  // Per choice, with tools: the parser and the number of calls sent so far (the `index` of the next one).
  const parsers = new Map<number, ToolCallParser>();
  const callsSent = new Map<number, number>();
  const reasoners = new Map<number, ReasoningParser>();
  // Per choice: the model's text and the content sent, to offer the reply to the cache at its end.
  const ids = replyIds(ctx);
  const written = ids === null ? null : Array.from({ length: ctx.n }, () => ({ text: '', content: '', numCalls: 0 }));
  function* textChunks(index: number, reply: string, entries: readonly ChatLogprobEntry[], final: boolean): Generator<object> {
    let text = reply;
    const mode = ctx.reasoning ?? null;
    if (mode !== null) {
      let reasoner = reasoners.get(index);
      if (reasoner === undefined) reasoners.set(index, (reasoner = new ReasoningParser(mode)));
      const pushed = reasoner.push(reply);
      const flushed = final ? reasoner.finish() : { reasoning: '', content: '' };
      const reasoning = pushed.reasoning + flushed.reasoning;
      text = pushed.content + flushed.content;
      if (reasoning !== '') yield chunk([{ index, delta: { reasoning_content: reasoning }, logprobs: null, finish_reason: null }]);
    }
    let content = text;
    let calls: readonly ToolCall[] = [];
    if (ctx.parseToolCalls) {
      let parser = parsers.get(index);
      if (parser === undefined) parsers.set(index, (parser = new ToolCallParser()));
      const pushed = parser.push(text);
      const flushed = final ? parser.finish() : { content: '', calls: [] };
      content = pushed.content + flushed.content;
      calls = pushed.calls;
    }
    const w = written?.[index];
    if (w !== undefined) {
      w.text += reply;
      w.content += content;
      w.numCalls += calls.length;
    }
    if (content !== '' || entries.length > 0) {
      yield chunk([{ index, delta: { content }, logprobs: ctx.withLogprobs ? { content: entries } : null, finish_reason: null }]);
    }
    for (const call of calls) {
      const k = callsSent.get(index) ?? 0;
      if (ctx.maxToolCalls !== undefined && ctx.maxToolCalls !== null && k >= ctx.maxToolCalls) break;
      callsSent.set(index, k + 1);
      yield chunk([{ index, delta: { tool_calls: [{ index: k, ...call }] }, logprobs: null, finish_reason: null }]);
    }
  }
  for await (const ev of events) {
    switch (ev.type) {
      case 'progress':
        yield* progressChunks(ctx, 'chat.completion.chunk', ev, opts);
        break;
      case 'prompt_logprobs':
        break;
      case 'delta':
        ids?.[ev.index]?.push(...ev.tokens.map((t) => t.tokenId));
        yield* roleChunk(ev.index);
        yield* textChunks(ev.index, ev.text, ctx.withLogprobs ? chatLogprobEntries(ev.tokens, ctx.tokenText) : [], false);
        break;
      case 'finish':
        yield* roleChunk(ev.index);
        yield* textChunks(ev.index, '', [], true); // text a parser still held back
        if (written?.[ev.index] !== undefined) offerReply(ctx, ids, ev.index, written[ev.index]!.text, written[ev.index]!.content, written[ev.index]!.numCalls);
        usage.add(ev);
        yield chunk([{ index: ev.index, delta: {}, logprobs: null, finish_reason: finishReason(ev.finishReason, (callsSent.get(ev.index) ?? 0) > 0) }]);
        break;
    }
  }
  if (opts.includeUsage) yield usageChunk(ctx, 'chat.completion.chunk', usage.toJSON());
}
