// JSON schema of POST /tokenize. A body carries exactly one of `prompt` and `messages`: one object
// schema with both optional (rather than a union of two objects, where extra keys would let
// `{prompt, messages: "x"}` match the prompt branch) checks each field's type wherever it appears;
// ./prompt.ts then refuses both or neither.
import { Type, type Static } from 'typebox';
import { ChatMessage } from '../chat-completions/schema.ts';

export const TokenizeRequest = Type.Object({
  model: Type.Optional(Type.String()),
  prompt: Type.Optional(Type.String()),
  add_special_tokens: Type.Optional(Type.Boolean()),
  messages: Type.Optional(Type.Array(ChatMessage, { minItems: 1 })),
  add_generation_prompt: Type.Optional(Type.Boolean()),
  chat_template_kwargs: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});
export type TokenizeRequest = Static<typeof TokenizeRequest>;
