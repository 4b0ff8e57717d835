// GET /health — 200 `{status: "ok"}` when serving; 503 with the error envelope while the model
// loads, after a failed load, and while draining (readiness and liveness probes both use it).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';

const HealthOk = Type.Object({ status: Type.Literal('ok') });

const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', { schema: { response: { 200: HealthOk } } }, async () => {
    if (app.serving.phase !== 'ready') throw app.serving.unavailable();
    return { status: 'ok' as const };
  });
};

export default healthRoute;
