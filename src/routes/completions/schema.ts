// JSON schema of POST /v1/completions (legacy text completions): the prompt is a string, a list
// of token ids, or a one-element list of either (batched prompts are not supported).
import { Type, type Static } from 'typebox';
import { MAX_TOP_LOGPROBS, samplingFields } from '../common/sampling.ts';
import { structuredOutputFields } from '../common/structured-output.ts';
import { generationResponseSchema, LegacyLogprobsSchema } from '../common/wire-schemas.ts';

// A string or a non-empty list; the list's shape (token ids, or one string / one id list) is
// checked in prepare.ts, which can say what is wrong better than a union's schema errors.
export const CompletionPrompt = Type.Union([Type.String(), Type.Array(Type.Unknown(), { minItems: 1 })]);

export const CompletionRequest = Type.Object({
  ...samplingFields,
  prompt: CompletionPrompt,
  echo: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  /** Legacy: number of top alternatives per token (0 = only the chosen token's logprob). */
  logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: MAX_TOP_LOGPROBS }), Type.Null()])),
  suffix: Type.Optional(Type.Null()),
  best_of: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 16 }), Type.Null()])),
  add_special_tokens: Type.Optional(Type.Boolean()),
  ...structuredOutputFields,
});
export type CompletionRequest = Static<typeof CompletionRequest>;

/** The non-streamed response (streamed chunks are written by the SSE writer). */
export const CompletionResponse = generationResponseSchema('text_completion', {
  text: Type.String(),
  logprobs: Type.Union([LegacyLogprobsSchema, Type.Null()]),
});
export type CompletionResponse = Static<typeof CompletionResponse>;
