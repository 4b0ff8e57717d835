// POST /detokenize — `{tokens}` → `{prompt}` (special tokens kept, as the ids say).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { InvalidRequestError } from '../../server/errors.ts';
import { checkDetokenize } from '../common/limits.ts';
import { checkModel } from '../common/usage.ts';

const DetokenizeRequest = Type.Object({
  model: Type.Optional(Type.String()),
  tokens: Type.Array(Type.Integer({ minimum: 0 })),
});

const DetokenizeResponse = Type.Object({ prompt: Type.String() });

const detokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/detokenize', { schema: { body: DetokenizeRequest, response: { 200: DetokenizeResponse } } }, async (request) => {
    checkModel(app, request.body.model);
    checkDetokenize(app.serverConfig, request.body.tokens.length);
    const vocabSize = app.tokenizer.vocabSize;
    for (const id of request.body.tokens) {
      if (id >= vocabSize) throw new InvalidRequestError(`'tokens' holds token id ${id}, but the vocabulary has ${vocabSize} tokens`, 'tokens');
    }
    return { prompt: app.tokenizer.decode(request.body.tokens, { skipSpecialTokens: false }) };
  });
};

export default detokenizeRoute;
