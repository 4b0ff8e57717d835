// GET /metrics — Prometheus text; engine gauges are refreshed from engine.stats() on each scrape.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';

const metricsRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/metrics', async (_request, reply) => {
    const engine = app.serving.loadedEngine;
    if (engine !== null) {
      app.metrics.updateEngineStats(engine.stats());
      app.metrics.updateEngineHealth(engine.health());
    }
    const text = await app.metrics.render();
    return reply.type(app.metrics.contentType).send(text);
  });
};

export default metricsRoute;
