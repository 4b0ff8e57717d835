// Response schemas shared by the generation endpoints (OpenAI wire shapes): the response envelope,
// usage and the two logprobs formats. Fastify serializes non-streamed responses through them.
import { Type, type TProperties } from 'typebox';

export const UsageSchema = Type.Object({
  prompt_tokens: Type.Integer(),
  completion_tokens: Type.Integer(),
  total_tokens: Type.Integer(),
  prompt_tokens_details: Type.Object({ cached_tokens: Type.Integer() }),
});

/** 'tool_calls' only in chat replies whose text held tool calls (chat-completions/tool-calls.ts). */
export const FinishReasonSchema = Type.Union([Type.Literal('stop'), Type.Literal('length'), Type.Literal('tool_calls')]);

const TopLogprobSchema = Type.Object({ token: Type.String(), logprob: Type.Number(), bytes: Type.Array(Type.Integer()) });

export const ChatLogprobsSchema = Type.Object({
  content: Type.Array(Type.Object({ token: Type.String(), logprob: Type.Number(), bytes: Type.Array(Type.Integer()), top_logprobs: Type.Array(TopLogprobSchema) })),
});

export const LegacyLogprobsSchema = Type.Object({
  tokens: Type.Array(Type.String()),
  token_logprobs: Type.Array(Type.Union([Type.Number(), Type.Null()])),
  // {token: logprob} or null, serialized as it is: Type.Record's key pattern ^.*$ does not match a token
  // holding a newline (the serializer dropped such alternatives), and a union is checked item by item
  // (~0.1 s for the 4,096 entries echo + logprobs may return).
  top_logprobs: Type.Array(Type.Unsafe<Record<string, number> | null>({})),
  text_offset: Type.Array(Type.Integer()),
});

/**
 * A non-streamed generation response: id, object, created, model, the choices (index, the
 * endpoint's own fields, finish_reason — in that order on the wire) and usage.
 */
export function generationResponseSchema<O extends string, C extends TProperties>(object: O, choiceFields: C) {
  return Type.Object({
    id: Type.String(),
    object: Type.Literal(object),
    created: Type.Integer(),
    model: Type.String(),
    choices: Type.Array(Type.Object({ index: Type.Integer(), ...choiceFields, finish_reason: FinishReasonSchema })),
    usage: UsageSchema,
  });
}
