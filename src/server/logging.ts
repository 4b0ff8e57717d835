// Request logging: Fastify's `req` serializer, except that secrets in the URL never reach the log.
// Browsers cannot set headers on a WebSocket, so /v1/stream takes its key as `?api_key=`; the log line
// of every request (`incoming request`, with `req.url`) shows that parameter as [REDACTED].
import type { FastifyRequest, FastifyServerOptions } from 'fastify';

const SECRET_QUERY_PARAM = /([?&]api_key=)[^&#]*/gi;

/** `url` with the value of every `api_key` query parameter replaced by [REDACTED]. */
export function redactUrl(url: string): string {
  return url.replace(SECRET_QUERY_PARAM, '$1[REDACTED]');
}

/** What a request's log lines say about it (Fastify's default fields, the URL redacted). */
function requestForLog(req: FastifyRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: redactUrl(req.url),
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort,
  };
}

/** Logger options for Fastify: the caller's, with the redacting `req` serializer; false stays false. */
export function withRedactedRequests(logger: FastifyServerOptions['logger'] | undefined): NonNullable<FastifyServerOptions['logger']> {
  if (logger === undefined || logger === false) return false;
  const base = logger === true ? {} : logger;
  return { ...base, serializers: { ...base.serializers, req: requestForLog } };
}
