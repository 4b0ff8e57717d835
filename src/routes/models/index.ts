// GET /v1/models — the one served model, OpenAI list format plus vLLM's `max_model_len`.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';

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
  app.get('/v1/models', { schema: { response: { 200: ModelList } } }, async () => {
    const engine = app.serving.loadedEngine;
    const name = app.serverConfig.servedModelName;
    return {
      object: 'list' as const,
      data: [{ id: name, object: 'model' as const, created, owned_by: 'spikeserve', root: app.serverConfig.modelDir, max_model_len: engine?.maxModelLen ?? null }],
    };
  });
};

export default modelsRoute;
