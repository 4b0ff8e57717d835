// POST /tokenize — `{prompt}` or `{messages}` (rendered with the chat template) → token ids,
// their count and the model's maximum length. The prompt is tokenized by ./prompt.ts (in the prompt
// worker for a large body). A long answer (a 16 MiB prompt is ~4 M ids, ~30 MB of JSON) is written in
// slices, one per turn of the event loop, instead of being serialized in one block.
import { Readable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply } from 'fastify';
import { Type } from 'typebox';
import { promptOf, type DerivedPrompt } from '../common/prompt-context.ts';
import { checkModel } from '../common/usage.ts';
import { prepareTokenizePrompt } from './prompt.ts';
import { TokenizeRequest } from './schema.ts';

const TokenizeResponse = Type.Object({
  tokens: Type.Array(Type.Integer()),
  count: Type.Integer(),
  max_model_len: Type.Union([Type.Integer(), Type.Null()]),
});

/** Answers with more ids than this are streamed; one slice of ids is joined per turn (~1-3 ms). */
const STREAM_MIN_IDS = 65_536;
const IDS_PER_SLICE = 65_536;

async function* answerJson(ids: Int32Array, maxModelLen: number | null): AsyncGenerator<string> {
  yield '{"tokens":[';
  for (let at = 0; at < ids.length; at += IDS_PER_SLICE) {
    yield (at === 0 ? '' : ',') + ids.subarray(at, at + IDS_PER_SLICE).join(',');
    await nextTurn();
  }
  yield `],"count":${ids.length},"max_model_len":${maxModelLen ?? 'null'}}`;
}

const tokenizeRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/tokenize', { schema: { body: TokenizeRequest, response: { 200: TokenizeResponse } } }, async (request, reply) => {
    const body = request.body;
    checkModel(app, body.model);
    // A large body's prompt was made by the prompt worker (json-body.ts); its shape is the pipeline's.
    const { ids } = await promptOf(request.derivedBody as DerivedPrompt | null, () => prepareTokenizePrompt(app, body));
    const maxModelLen = app.serving.loadedEngine?.maxModelLen ?? null;
    if (ids.length > STREAM_MIN_IDS) {
      // A stream bypasses the response schema (the typed reply takes only the object): this is its JSON, in slices.
      return (reply as FastifyReply).type('application/json; charset=utf-8').send(Readable.from(answerJson(ids, maxModelLen), { objectMode: false }));
    }
    const tokens = Array.from(ids);
    return { tokens, count: tokens.length, max_model_len: maxModelLen };
  });
};

export default tokenizeRoute;
