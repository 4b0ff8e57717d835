// GET /health (200 when serving; 503 with the error envelope while the model loads, after a failed
// load and while draining) and GET /version.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';

const HealthOk = Type.Object({ status: Type.Literal('ok') });
const Version = Type.Object({ name: Type.Literal('spikeserve'), version: Type.String() });

const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', { schema: { response: { 200: HealthOk } } }, async () => {
    if (app.serving.phase !== 'ready') throw app.serving.unavailable();
    return { status: 'ok' as const };
  });
  app.get('/version', { schema: { response: { 200: Version } } }, async () => ({ name: 'spikeserve' as const, version: app.appVersion }));
};

export default healthRoute;
