// POST /v1/chat/completions — OpenAI chat completions, streamed (SSE) or not.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { replyWithGeneration } from '../common/generation-reply.ts';
import { chatChunks, chatCompletion } from './format.ts';
import { prepareChat } from './prepare.ts';
import { ChatCompletionRequest, ChatCompletionResponse } from './schema.ts';

const chatCompletionsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/v1/chat/completions', { schema: { body: ChatCompletionRequest, response: { 200: ChatCompletionResponse } }, config: { admission: 'messages' } }, async (request, reply) => {
    const prepared = await prepareChat(app, request.body, request.admissionTicket);
    return replyWithGeneration(app, request, reply, prepared, {
      whole: (events) => chatCompletion(events, prepared.format),
      chunks: (events) => chatChunks(events, prepared.format, prepared.streamOptions),
    });
  });
};

export default chatCompletionsRoute;
