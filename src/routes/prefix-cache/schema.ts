// JSON schemas of the prefix-cache API (/v1/prefix-cache): list, warm, delete. A snapshot's `id` is
// its prefix key (the sha256 hash chain of the prompt's token pages) in URL-safe base64: the same id
// on every replica that shares the snapshot folder.
import { Type, type Static } from 'typebox';
import { ChatMessage } from '../chat-completions/schema.ts';

/** 43 URL-safe base64 characters: a sha256 digest without padding. */
export const SnapshotId = Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' });

const Where = Type.Array(Type.Union([Type.Literal('memory'), Type.Literal('disk')]));

export const PrefixCacheEntry = Type.Object({
  id: Type.String(),
  object: Type.Literal('prefix_cache.entry'),
  /** Prompt tokens the snapshot holds the state after. */
  tokens: Type.Integer(),
  bytes: Type.Integer(),
  where: Where,
  /** Restores by this server since it started. */
  hits: Type.Integer(),
  /** Unix seconds of the last use (here, or for a file, by any server on the folder); 0 = unknown. */
  last_used_at: Type.Integer(),
});

export const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
});
export type ListQuery = Static<typeof ListQuery>;

export const ListResponse = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(PrefixCacheEntry),
});

const warmCommon = {
  model: Type.Optional(Type.String()),
  /** Stream `prefill.progress` events, then the result, as SSE. */
  stream: Type.Optional(Type.Boolean()),
};

/** `{prompt}` (text or token ids) or `{messages}` (rendered by the chat template, no generation prompt by default). */
export const WarmRequest = Type.Union([
  Type.Object({
    ...warmCommon,
    prompt: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 })]),
    add_special_tokens: Type.Optional(Type.Boolean()),
  }),
  Type.Object({
    ...warmCommon,
    messages: Type.Array(ChatMessage, { minItems: 1 }),
    add_generation_prompt: Type.Optional(Type.Boolean()),
    chat_template_kwargs: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])),
  }),
]);
export type WarmRequest = Static<typeof WarmRequest>;

export const WarmResponse = Type.Object({
  id: Type.String(),
  object: Type.Literal('prefix_cache.entry'),
  /** Tokens of the rendered and tokenized prompt. */
  prompt_tokens: Type.Integer(),
  /** Tokens now cached: a later prompt that starts with this one resumes after them (whole pages). */
  cached_tokens: Type.Integer(),
  /** Of those, the tokens computed by this call (the rest were cached already). */
  computed_tokens: Type.Integer(),
  where: Where,
});

export const DeleteParams = Type.Object({ id: SnapshotId });
export type DeleteParams = Static<typeof DeleteParams>;

export const DeleteResponse = Type.Object({
  id: Type.String(),
  object: Type.Literal('prefix_cache.entry.deleted'),
  deleted: Type.Literal(true),
  /** Where it was deleted from. */
  where: Where,
});
