// Bearer-key authentication (--api-key, several allowed). Probes, metrics and the chat page stay
// open; every other route, WebSocket upgrades included, needs `Authorization: Bearer <key>`.
// Browsers cannot set headers on a WebSocket, so /v1/stream also accepts `?api_key=`.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AuthenticationError } from './errors.ts';

const OPEN_PATHS = new Set(['/', '/health', '/health/live', '/version', '/metrics', '/favicon.ico']);

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function presentedKey(request: FastifyRequest, path: string): string | null {
  const header = request.headers.authorization;
  if (typeof header === 'string') {
    const m = /^Bearer\s+(.+)$/i.exec(header.trim());
    return m?.[1]?.trim() ?? null;
  }
  if (path === '/v1/stream') {
    const q = request.query as Record<string, unknown> | undefined;
    if (typeof q?.['api_key'] === 'string') return q['api_key'];
  }
  return null;
}

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { apiKeys: readonly string[] }) {
    if (opts.apiKeys.length === 0) return;
    const keys = opts.apiKeys.map(digest);
    app.addHook('onRequest', async (request) => {
      const path = request.url.split('?')[0] ?? '';
      if (OPEN_PATHS.has(path)) return;
      const key = presentedKey(request, path);
      if (key === null) throw new AuthenticationError('missing API key: send "Authorization: Bearer <key>"');
      const d = digest(key);
      // Compare against every key so timing does not reveal which one matched.
      let ok = false;
      for (const k of keys) ok = timingSafeEqual(k, d) || ok;
      if (!ok) throw new AuthenticationError('invalid API key');
    });
  },
  { name: 'spikeserve-auth' },
);
