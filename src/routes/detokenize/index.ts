// POST /detokenize — `{tokens}` → `{prompt}` (special tokens kept, as the ids say). The text is made by
// ./text.ts, in the prompt worker for a large body (json-body.ts).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { textOf, type DerivedText } from '../common/prompt-context.ts';
import { checkModel } from '../common/usage.ts';
import { DetokenizeRequest } from './schema.ts';
import { detokenizeText } from './text.ts';

const DetokenizeResponse = Type.Object({ prompt: Type.String() });

const detokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/detokenize', { schema: { body: DetokenizeRequest, response: { 200: DetokenizeResponse } } }, async (request) => {
    checkModel(app, request.body.model);
    return { prompt: textOf(request.derivedBody as DerivedText | null, () => detokenizeText(app, request.body)) };
  });
};

export default detokenizeRoute;
