// POST /tokenize — `{prompt}` or `{messages}` (rendered with the chat template) → token ids,
// their count and the model's maximum length. The prompt is tokenized by ./prompt.ts (in the prompt
// worker for a large body). A long answer (a 16 MiB prompt is ~4 M ids, ~30 MB of JSON) is written in
// slices of IDS_PER_SLICE ids, one per turn of the event loop (../common/json-slices.ts), instead of being
// serialized in one block.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { sliceStream } from '../common/json-slices.ts';
import { promptOf, type DerivedPrompt } from '../common/prompt-context.ts';
import { checkModel } from '../common/usage.ts';
import { prepareTokenizePrompt } from './prompt.ts';
import { TokenizeRequest } from './schema.ts';

const TokenizeResponse = Type.Object({
  tokens: Type.Array(Type.Integer()),
  count: Type.Integer(),
  max_model_len: Type.Union([Type.Integer(), Type.Null()]),
});

/** Ids joined per turn of the event loop (~100 KB of JSON, ~0.5-1 ms); answers with more ids are streamed. */
const IDS_PER_SLICE = 16_384;

/** The answer's JSON in slices (the bytes the response schema's serializer writes). */
function* answerJson(ids: Int32Array, maxModelLen: number | null): Generator<string> {
  let head = '{"tokens":[';
  for (let at = 0; at < ids.length; at += IDS_PER_SLICE) {
    yield head + ids.subarray(at, at + IDS_PER_SLICE).join(',');
    head = ',';
  }
  yield `${head === ',' ? '' : head}],"count":${ids.length},"max_model_len":${maxModelLen ?? 'null'}}`;
}

const tokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/tokenize', { schema: { body: TokenizeRequest, response: { 200: TokenizeResponse } } }, async (request, reply) => {
    const body = request.body;
    checkModel(app, body.model);
    // A large body's prompt was made by the prompt worker (json-body.ts); its shape is the pipeline's.
    const { ids } = await promptOf(request.derivedBody as DerivedPrompt | null, () => prepareTokenizePrompt(app, body));
    const maxModelLen = app.serving.loadedEngine?.maxModelLen ?? null;
    if (ids.length > IDS_PER_SLICE) {
      // A stream bypasses the response schema (the typed reply takes only the object): this is its JSON, in slices.
      return (reply as FastifyReply).type('application/json; charset=utf-8').send(sliceStream(answerJson(ids, maxModelLen)));
    }
    const tokens = Array.from(ids);
    return { tokens, count: tokens.length, max_model_len: maxModelLen };
  });
};

export default tokenizeRoute;
