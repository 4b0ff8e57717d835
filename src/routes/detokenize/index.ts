// POST /detokenize — `{tokens}` → `{prompt}` (special tokens kept, as the ids say). The text is made by
// ./text.ts, in the prompt worker for a large body (json-body.ts); a long one (262,144 ids are ~1 MiB of
// text) is written in slices (../common/json-slices.ts), the same bytes as the response schema's.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { sendJsonSlices, SLICE_CHARS } from '../common/json-slices.ts';
import { textOf, type DerivedText } from '../common/prompt-context.ts';
import { checkModel } from '../common/usage.ts';
import { DetokenizeRequest } from './schema.ts';
import { detokenizeText } from './text.ts';

const DetokenizeResponse = Type.Object({ prompt: Type.String() });

const detokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/detokenize', { schema: { body: DetokenizeRequest, response: { 200: DetokenizeResponse } } }, async (request, reply) => {
    checkModel(app, request.body.model);
    const answer = { prompt: textOf(request.derivedBody as DerivedText | null, () => detokenizeText(app, request.body)) };
    // A stream bypasses the response schema (the typed reply takes only the object).
    return answer.prompt.length <= SLICE_CHARS ? answer : sendJsonSlices(reply as FastifyReply, answer);
  });
};

export default detokenizeRoute;
