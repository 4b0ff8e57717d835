// GenerationEvents → OpenAI legacy completion wire format (`text_completion`), whole or streamed.
// With `echo` the prompt text comes first in each choice; with `echo` and `logprobs` the prompt
// tokens lead the logprobs block too (the first has no logprob: null). text_offset counts
// characters from the start of the choice's returned text.
//
// The prompt's logprobs (up to --max-prompt-logprobs-tokens entries with up to 20 alternatives each)
// are formatted PROMPT_SLICE_TOKENS at a time, one slice per turn of the event loop; streamed, each
// slice is a chunk of its own (the first carries the prompt's text, the others empty text).
import type { PromptLogprobEntry, PromptTokenIds } from '../../engine/types.ts';
import type { FinishReasonOut, GenerationEvent } from '../../server/generation.ts';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { appendLegacy, emptyLegacyLogprobs, type LegacyLogprobs, type TokenText } from '../common/logprobs.ts';
import { progressChunks, responseObject, streamChunk, usageChunk, type StreamIdentity, type StreamOptions } from '../common/stream-chunks.ts';
import { UsageCounter } from '../common/usage.ts';
import type { CompletionResponse } from './schema.ts';

export interface CompletionFormatContext extends StreamIdentity {
  readonly n: number;
  readonly promptTokenIds: PromptTokenIds;
  readonly promptText: string;
  readonly echo: boolean;
  /** Legacy logprobs count, or null for none. */
  readonly logprobs: number | null;
  readonly tokenText: TokenText;
}

type PromptEntry = PromptLogprobEntry | { readonly tokenId: number; readonly logprob: null };

/** The prompt tokens as logprob entries; entries missing from the engine get null logprobs. */
function promptEntries(ctx: CompletionFormatContext, entries: readonly (PromptLogprobEntry | null)[] | null): PromptEntry[] {
  return Array.from(ctx.promptTokenIds, (tokenId, i): PromptEntry => entries?.[i] ?? { tokenId, logprob: null });
}

/** Prompt logprob entries formatted per turn of the event loop (~256 × 21 entries: a few ms). */
const PROMPT_SLICE_TOKENS = 256;

/** `entries` appended slice by slice, yielding to the event loop between slices; returns the offset after them. */
async function appendPromptInSlices(into: LegacyLogprobs, entries: readonly PromptEntry[], tt: TokenText): Promise<number> {
  let offset = 0;
  for (let at = 0; at < entries.length; at += PROMPT_SLICE_TOKENS) {
    offset = appendLegacy(into, entries.slice(at, at + PROMPT_SLICE_TOKENS), tt, offset);
    if (at + PROMPT_SLICE_TOKENS < entries.length) await nextTurn();
  }
  return offset;
}

/** Per-choice state: text so far, the logprobs block, and the running character offset. */
class ChoiceState {
  text = '';
  offset = 0;
  readonly logprobs: LegacyLogprobs = emptyLegacyLogprobs();
  finishReason: FinishReasonOut | null = null;
  echoed = false;
}

export async function completion(events: AsyncIterable<GenerationEvent>, ctx: CompletionFormatContext): Promise<CompletionResponse> {
  const choices = Array.from({ length: ctx.n }, () => new ChoiceState());
  const promptLogprobs: ((PromptLogprobEntry | null)[] | null)[] = Array.from({ length: ctx.n }, () => null);
  const usage = new UsageCounter(ctx.promptTokenIds.length);
  const generated: Extract<GenerationEvent, { type: 'delta' | 'finish' }>[] = [];
  for await (const ev of events) {
    if (ev.type === 'prompt_logprobs') promptLogprobs[ev.index] = [...ev.entries];
    else if (ev.type === 'delta' || ev.type === 'finish') generated.push(ev);
  }
  for (const [i, c] of choices.entries()) {
    if (!ctx.echo) break;
    c.text = ctx.promptText;
    if (ctx.logprobs !== null) c.offset = await appendPromptInSlices(c.logprobs, promptEntries(ctx, promptLogprobs[i] ?? null), ctx.tokenText);
    else c.offset = ctx.promptText.length;
  }
  for (const ev of generated) {
    const c = choices[ev.index];
    if (c === undefined) continue;
    if (ev.type === 'delta') {
      c.text += ev.text;
      if (ctx.logprobs !== null) c.offset = appendLegacy(c.logprobs, ev.tokens, ctx.tokenText, c.offset);
    } else if (ev.type === 'finish') {
      c.finishReason = ev.finishReason;
      usage.add(ev);
    }
  }
  const out = choices.map((c, index) => ({
    index,
    text: c.text,
    logprobs: ctx.logprobs !== null ? c.logprobs : null,
    finish_reason: c.finishReason ?? 'stop',
  }));
  return responseObject(ctx, 'text_completion', out, usage.toJSON());
}

/** About how many JSON values `answer` holds: per token of a logprobs block its text, logprob, offset and alternatives. */
export function completionValues(answer: CompletionResponse, ctx: CompletionFormatContext): number {
  let values = 0;
  for (const c of answer.choices) values += c.text.length / 64 + (c.logprobs?.tokens.length ?? 0) * (3 + (ctx.logprobs ?? 0));
  return values;
}

export async function* completionChunks(events: AsyncIterable<GenerationEvent>, ctx: CompletionFormatContext, opts: StreamOptions): AsyncGenerator<object> {
  const usage = new UsageCounter(ctx.promptTokenIds.length);
  const choices = Array.from({ length: ctx.n }, () => new ChoiceState());
  const chunk = (index: number, text: string, logprobs: LegacyLogprobs | null, finishReason: FinishReasonOut | null): object =>
    streamChunk(ctx, 'text_completion', [{ index, text, logprobs, finish_reason: finishReason }], opts);
  async function* echoChunk(index: number, entries: readonly (PromptLogprobEntry | null)[] | null): AsyncGenerator<object> {
    const c = choices[index];
    if (!ctx.echo || c === undefined || c.echoed) return;
    c.echoed = true;
    if (ctx.logprobs === null) {
      c.offset = ctx.promptText.length;
      yield chunk(index, ctx.promptText, null, null);
      return;
    }
    const all = promptEntries(ctx, entries);
    for (let at = 0; at < all.length; at += PROMPT_SLICE_TOKENS) {
      const lp = emptyLegacyLogprobs();
      c.offset = appendLegacy(lp, all.slice(at, at + PROMPT_SLICE_TOKENS), ctx.tokenText, c.offset);
      yield chunk(index, at === 0 ? ctx.promptText : '', lp, null);
      if (at + PROMPT_SLICE_TOKENS < all.length) await nextTurn();
    }
  }
  for await (const ev of events) {
    switch (ev.type) {
      case 'progress':
        yield* progressChunks(ctx, 'text_completion', ev, opts);
        break;
      case 'prompt_logprobs':
        yield* echoChunk(ev.index, ev.entries);
        break;
      case 'delta': {
        yield* echoChunk(ev.index, null);
        const c = choices[ev.index];
        if (c === undefined) break;
        let lp: LegacyLogprobs | null = null;
        if (ctx.logprobs !== null) {
          lp = emptyLegacyLogprobs();
          c.offset = appendLegacy(lp, ev.tokens, ctx.tokenText, c.offset);
        }
        if (ev.text === '' && (lp === null || lp.tokens.length === 0)) break;
        yield chunk(ev.index, ev.text, lp, null);
        break;
      }
      case 'finish':
        yield* echoChunk(ev.index, null);
        usage.add(ev);
        yield chunk(ev.index, '', null, ev.finishReason);
        break;
    }
  }
  if (opts.includeUsage) yield usageChunk(ctx, 'text_completion', usage.toJSON());
}
