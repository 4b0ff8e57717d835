// POST /v1/chat/completions — OpenAI chat completions, streamed (SSE) or not.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { replyWithGeneration } from '../common/generation-reply.ts';
import type { DerivedPrompt } from '../common/prompt-context.ts';
import { chatChunks, chatCompletion, chatCompletionValues } from './format.ts';
import { prepareChat } from './prepare.ts';
import { ChatCompletionRequest, ChatCompletionResponse } from './schema.ts';

const chatCompletionsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/v1/chat/completions', { schema: { body: ChatCompletionRequest, response: { 200: ChatCompletionResponse } }, config: { admission: 'messages' } }, async (request, reply) => {
    // A large body's prompt was made by the prompt worker (json-body.ts); its shape is the pipeline's.
    const prepared = await prepareChat(app, request.body, request.admissionTicket, request.derivedBody as DerivedPrompt | null);
    return replyWithGeneration(app, request, reply, prepared, {
      whole: (events) => chatCompletion(events, prepared.format),
      values: chatCompletionValues,
      chunks: (events) => chatChunks(events, prepared.format, prepared.streamOptions),
    });
  });
};

export default chatCompletionsRoute;
