// The probes.
// GET /health — readiness: 200 `{status: "ok"}` when new requests would be served; 503 with the
//   error envelope while the model loads, while the inference worker restarts after a failure, after
//   the engine gave up, and while draining.
// GET /health/live — liveness: 200 unless nothing in this process can bring serving back (the
//   engine failed more often than --engine-max-restarts allows, or the model never loaded); it stays
//   200 while loading, restarting and draining, so a liveness probe never cuts those short.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { UnavailableError } from '../../server/errors.ts';

const HealthOk = Type.Object({ status: Type.Literal('ok') });

const healthRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', { schema: { response: { 200: HealthOk } } }, async () => {
    if (!app.serving.ready) throw app.serving.unavailable();
    return { status: 'ok' as const };
  });
  app.get('/health/live', { schema: { response: { 200: HealthOk } } }, async () => {
    if (!app.serving.live) throw new UnavailableError('the inference engine cannot recover in this process; restart it', 'engine_failed');
    return { status: 'ok' as const };
  });
};

export default healthRoute;
