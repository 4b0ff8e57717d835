// Sampling fields shared by /v1/chat/completions and /v1/completions: their JSON schema (OpenAI
// names plus vLLM's extensions), and the translation of a validated body into the engine's
// SamplingParams — defaults, cross-field checks, token ids against the vocabulary, and the
// context-length rule (a prompt must leave room for one generated token; max_tokens is clamped).
import { Type, type Static } from 'typebox';
import type { SamplingParams } from '../../engine/types.ts';
import { InvalidRequestError } from '../../server/errors.ts';

const MAX_N = 16;
export const MAX_TOP_LOGPROBS = 20;

const TokenId = Type.Integer({ minimum: 0 });

/** Fields both generation endpoints accept. */
export const samplingFields = {
  model: Type.Optional(Type.String()),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  stream_options: Type.Optional(
    Type.Union([
      Type.Object({
        include_usage: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
        /** spikeserve extension: `prefill.progress` events before the first token. */
        include_progress: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
      }),
      Type.Null(),
    ]),
  ),
  /** llama.cpp's extension: streamed chunks with `prompt_progress` while the prompt is prefilled (stream only). */
  return_progress: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  temperature: Type.Optional(Type.Union([Type.Number({ minimum: 0, maximum: 2 }), Type.Null()])),
  top_p: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0, maximum: 1 }), Type.Null()])),
  top_k: Type.Optional(Type.Union([Type.Integer({ minimum: -1 }), Type.Null()])),
  min_p: Type.Optional(Type.Union([Type.Number({ minimum: 0, maximum: 1 }), Type.Null()])),
  seed: Type.Optional(Type.Union([Type.Integer({ minimum: -(2 ** 53) + 1, maximum: 2 ** 53 - 1 }), Type.Null()])),
  // Their number and length are server limits (--max-stop-strings, --max-stop-string-chars; ./limits.ts).
  stop: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String()), Type.Null()])),
  stop_token_ids: Type.Optional(Type.Union([Type.Array(TokenId, { maxItems: 256 }), Type.Null()])),
  max_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  n: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: MAX_N }), Type.Null()])),
  presence_penalty: Type.Optional(Type.Union([Type.Number({ minimum: -2, maximum: 2 }), Type.Null()])),
  frequency_penalty: Type.Optional(Type.Union([Type.Number({ minimum: -2, maximum: 2 }), Type.Null()])),
  repetition_penalty: Type.Optional(Type.Union([Type.Number({ exclusiveMinimum: 0, maximum: 10 }), Type.Null()])),
  logit_bias: Type.Optional(
    Type.Union([
      Type.Record(Type.String({ pattern: '^[0-9]+$' }), Type.Number({ minimum: -100, maximum: 100 }), {
        additionalProperties: false,
        maxProperties: 1024,
      }),
      Type.Null(),
    ]),
  ),
  ignore_eos: Type.Optional(Type.Boolean()),
  min_tokens: Type.Optional(Type.Integer({ minimum: 0 })),
  skip_special_tokens: Type.Optional(Type.Boolean()),
  return_tokens_as_token_ids: Type.Optional(Type.Boolean()),
  user: Type.Optional(Type.Union([Type.String(), Type.Null()])),
};

const SamplingBodySchema = Type.Object(samplingFields);
export type SamplingBody = Static<typeof SamplingBodySchema>;

export interface SamplingContext {
  /** 'messages' or 'prompt': the param a too-long prompt is blamed on. */
  readonly promptParam: string;
  readonly promptTokens: number;
  readonly maxModelLen: number;
  readonly vocabSize: number;
  /** Used when the body has no max_tokens. */
  readonly defaultMaxTokens: number;
  /** Top alternatives per generated token, or null (already checked per endpoint). */
  readonly logprobs: number | null;
  readonly promptLogprobs: number | null;
  /** Extra stop ids of this endpoint (e.g. the chat template's end-of-turn token). */
  readonly extraStopTokenIds: readonly number[];
}

function checkTokenId(id: number, vocabSize: number, param: string): void {
  if (id >= vocabSize) throw new InvalidRequestError(`'${param}' holds token id ${id}, but the vocabulary has ${vocabSize} tokens`, param);
}

export function stopStrings(stop: SamplingBody['stop']): string[] {
  if (stop === undefined || stop === null) return [];
  // Empty strings would match everywhere; they are dropped rather than refused.
  return (typeof stop === 'string' ? [stop] : stop).filter((s) => s !== '');
}

/** Validated body → SamplingParams. Throws InvalidRequestError naming the field. */
export function toSamplingParams(body: SamplingBody & { max_completion_tokens?: number | null }, ctx: SamplingContext): SamplingParams {
  if (ctx.promptTokens >= ctx.maxModelLen) {
    throw new InvalidRequestError(
      `this model's maximum context length is ${ctx.maxModelLen} tokens, but the prompt has ${ctx.promptTokens} tokens (it must leave room for at least one generated token)`,
      ctx.promptParam,
      'context_length_exceeded',
    );
  }
  const room = ctx.maxModelLen - ctx.promptTokens;
  const requested = body.max_completion_tokens ?? body.max_tokens ?? ctx.defaultMaxTokens;
  const maxTokens = Math.max(1, Math.min(requested, room));
  const minTokens = body.min_tokens ?? 0;
  if (minTokens > maxTokens) {
    throw new InvalidRequestError(`'min_tokens' (${minTokens}) must not exceed max_tokens (${maxTokens})`, 'min_tokens');
  }
  const logitBias = new Map<number, number>();
  for (const [key, value] of Object.entries(body.logit_bias ?? {})) {
    const id = Number(key);
    checkTokenId(id, ctx.vocabSize, 'logit_bias');
    logitBias.set(id, value);
  }
  const stopIds = [...(body.stop_token_ids ?? [])];
  for (const id of stopIds) checkTokenId(id, ctx.vocabSize, 'stop_token_ids');
  for (const id of ctx.extraStopTokenIds) if (!stopIds.includes(id)) stopIds.push(id);
  const topK = body.top_k ?? -1;
  return {
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: topK <= 0 ? 0 : topK,
    minP: body.min_p ?? 0,
    seed: body.seed ?? null,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    repetitionPenalty: body.repetition_penalty ?? 1,
    logitBias,
    logprobs: ctx.logprobs,
    promptLogprobs: ctx.promptLogprobs,
    maxTokens,
    minTokens,
    stopTokenIds: stopIds,
    ignoreEos: body.ignore_eos ?? false,
  };
}
