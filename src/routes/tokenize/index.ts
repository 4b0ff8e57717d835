// POST /tokenize — `{prompt}` or `{messages}` (rendered with the chat template) → token ids,
// their count and the model's maximum length. Tokenizes through the async tokenizer API.
//
// A body carries exactly one of `prompt` and `messages`. One object schema with both optional (rather
// than a union of two objects, where extra keys would let `{prompt, messages: "x"}` match the prompt
// branch) checks each field's type wherever it appears; the handler then refuses both or neither.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { InvalidRequestError } from '../../server/errors.ts';
import { chatPromptTokens } from '../chat-completions/prompt.ts';
import { ChatMessage } from '../chat-completions/schema.ts';
import { checkMessages } from '../common/limits.ts';
import { checkModel } from '../common/usage.ts';

const TokenizeRequest = Type.Object({
  model: Type.Optional(Type.String()),
  prompt: Type.Optional(Type.String()),
  add_special_tokens: Type.Optional(Type.Boolean()),
  messages: Type.Optional(Type.Array(ChatMessage, { minItems: 1 })),
  add_generation_prompt: Type.Optional(Type.Boolean()),
  chat_template_kwargs: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});

const TokenizeResponse = Type.Object({
  tokens: Type.Array(Type.Integer()),
  count: Type.Integer(),
  max_model_len: Type.Union([Type.Integer(), Type.Null()]),
});

const tokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/tokenize', { schema: { body: TokenizeRequest, response: { 200: TokenizeResponse } } }, async (request) => {
    const body = request.body;
    checkModel(app, body.model);
    if (body.prompt !== undefined && body.messages !== undefined) {
      throw new InvalidRequestError("send either 'prompt' or 'messages', not both", 'messages');
    }
    let ids: Int32Array;
    if (body.messages !== undefined) {
      checkMessages(app.serverConfig, body.messages.length);
      ids = await chatPromptTokens(app, { messages: body.messages, addGenerationPrompt: body.add_generation_prompt ?? true, chatTemplateKwargs: body.chat_template_kwargs });
    } else if (body.prompt !== undefined) {
      ids = await app.tokenizer.encodeToInt32(body.prompt, { addSpecialTokens: body.add_special_tokens ?? true });
    } else {
      throw new InvalidRequestError("'prompt' or 'messages' is a required property", 'prompt');
    }
    const tokens = Array.from(ids);
    return { tokens, count: tokens.length, max_model_len: app.serving.loadedEngine?.maxModelLen ?? null };
  });
};

export default tokenizeRoute;
