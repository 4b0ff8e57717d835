// POST /v1/chat/completions — OpenAI chat completions, streamed (SSE) or not.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { runGeneration } from '../../server/generation.ts';
import { beginRequestLifetime } from '../../server/request-lifetime.ts';
import { streamSse } from '../../server/sse.ts';
import { chatChunks, chatCompletion } from './format.ts';
import { prepareChat } from './prepare.ts';
import { ChatCompletionRequest, ChatCompletionResponse } from './schema.ts';

const chatCompletionsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/v1/chat/completions', { schema: { body: ChatCompletionRequest, response: { 200: ChatCompletionResponse } } }, async (request, reply) => {
    const prepared = await prepareChat(app, request.body);
    request.log.info(
      { completionId: prepared.spec.requestId, promptTokens: prepared.spec.promptTokenIds.length, maxTokens: prepared.spec.sampling.maxTokens, n: prepared.spec.n, stream: prepared.stream },
      'generation started',
    );
    const life = beginRequestLifetime(app, reply);
    try {
      const deps = { engine: prepared.engine, tokenizer: app.tokenizer, metrics: app.metrics };
      const events = runGeneration(deps, prepared.spec, life.signal);
      if (!prepared.stream) return await chatCompletion(events, prepared.format);
      const chunks = chatChunks(events, prepared.format, prepared.streamOptions);
      await streamSse(request, reply, chunks, app.serverConfig.keepaliveSeconds * 1000);
      return reply;
    } finally {
      life.release();
    }
  });
};

export default chatCompletionsRoute;
