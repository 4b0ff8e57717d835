// POST /v1/completions — OpenAI legacy text completions, streamed (SSE) or not.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { runGeneration } from '../../server/generation.ts';
import { beginRequestLifetime } from '../../server/request-lifetime.ts';
import { streamSse } from '../../server/sse.ts';
import { completion, completionChunks } from './format.ts';
import { prepareCompletion } from './prepare.ts';
import { CompletionRequest, CompletionResponse } from './schema.ts';

const completionsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/v1/completions', { schema: { body: CompletionRequest, response: { 200: CompletionResponse } } }, async (request, reply) => {
    const prepared = await prepareCompletion(app, request.body);
    request.log.info(
      { completionId: prepared.spec.requestId, promptTokens: prepared.spec.promptTokenIds.length, maxTokens: prepared.spec.sampling.maxTokens, n: prepared.spec.n, stream: prepared.stream },
      'generation started',
    );
    const life = beginRequestLifetime(app, reply);
    try {
      const deps = { engine: prepared.engine, tokenizer: app.tokenizer, metrics: app.metrics };
      const events = runGeneration(deps, prepared.spec, life.signal);
      if (!prepared.stream) return await completion(events, prepared.format);
      const chunks = completionChunks(events, prepared.format, { includeUsage: prepared.includeUsage, includeProgress: prepared.includeProgress });
      await streamSse(request, reply, chunks, app.serverConfig.keepaliveSeconds * 1000);
      return reply;
    } finally {
      life.release();
    }
  });
};

export default completionsRoute;
