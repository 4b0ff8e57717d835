// Installs the one error handler and the not-found handler: whatever a route or Fastify throws
// goes through toApiError (errors.ts) and leaves as the OpenAI envelope with its status and
// headers. Faults (5xx that are not a known state) are logged with their stack; the client sees
// only "internal server error". Every other error answer is logged at info with its status.
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { NotFoundError, toApiError } from './errors.ts';

export default fp(
  async function errorHandlerPlugin(app: FastifyInstance) {
    app.setErrorHandler(async (err, request, reply) => {
      const { apiError, isFault } = toApiError(err);
      if (isFault) request.log.error({ err }, 'request failed');
      else request.log.info({ status: apiError.status, type: apiError.type, param: apiError.param }, apiError.message);
      return reply.code(apiError.status).headers(apiError.headers).send(apiError.toEnvelope());
    });
    app.setNotFoundHandler(async (request, reply) => {
      const path = request.url.split('?')[0] ?? '';
      const e = new NotFoundError(`unknown route: ${request.method} ${path}`, null, 'route_not_found');
      request.log.info({ status: e.status, type: e.type, param: e.param }, e.message);
      return reply.code(404).send(e.toEnvelope());
    });
  },
  { name: 'spikeserve-errors' },
);
