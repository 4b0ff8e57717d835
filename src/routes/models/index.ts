// GET /v1/models — the one served model, OpenAI list format plus vLLM's `max_model_len` — and
// GET /v1/models/:model (retrieve; 404 model_not_found for any other name).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { checkModel } from '../common/usage.ts';

const ModelCard = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer(),
  owned_by: Type.String(),
  root: Type.String(),
  max_model_len: Type.Union([Type.Integer(), Type.Null()]),
});

const ModelList = Type.Object({ object: Type.Literal('list'), data: Type.Array(ModelCard) });

const modelsRoute: FastifyPluginAsyncTypebox = async (app) => {
  const created = Math.floor(Date.now() / 1000);
  const card = (): Static<typeof ModelCard> => ({
    id: app.serverConfig.servedModelName,
    object: 'model',
    created,
    owned_by: 'spikeserve',
    // The served name, not the directory: the server's file layout is not the client's business.
    root: app.serverConfig.servedModelName,
    max_model_len: app.serving.loadedEngine?.maxModelLen ?? null,
  });
  app.get('/v1/models', { schema: { response: { 200: ModelList } } }, async () => ({ object: 'list' as const, data: [card()] }));
  app.get('/v1/models/:model', { schema: { params: Type.Object({ model: Type.String() }), response: { 200: ModelCard } } }, async (request) => {
    checkModel(app, request.params.model);
    return card();
  });
};

export default modelsRoute;
