// POST /v1/completions — OpenAI legacy text completions, streamed (SSE) or not.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { replyWithGeneration } from '../common/generation-reply.ts';
import type { DerivedPrompt } from '../common/prompt-context.ts';
import { completion, completionChunks, completionValues } from './format.ts';
import { prepareCompletion } from './prepare.ts';
import { CompletionRequest, CompletionResponse } from './schema.ts';

const completionsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/v1/completions', { schema: { body: CompletionRequest, response: { 200: CompletionResponse } }, config: { admission: 'prompt' } }, async (request, reply) => {
    // A large body's prompt was made by the prompt worker (json-body.ts); its shape is the pipeline's.
    const prepared = await prepareCompletion(app, request.body, request.admissionTicket, request.derivedBody as DerivedPrompt | null);
    return replyWithGeneration(app, request, reply, prepared, {
      whole: (events) => completion(events, prepared.format),
      values: (answer) => completionValues(answer, prepared.format),
      chunks: (events) => completionChunks(events, prepared.format, prepared.streamOptions),
    });
  });
};

export default completionsRoute;
