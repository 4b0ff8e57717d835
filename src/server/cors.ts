// Cross-origin requests (--allowed-origins): lets web apps on other origins call the API from a
// browser. Off by default (browsers then allow only same-origin calls, such as the chat page's).
// '*' allows any origin; otherwise an exact list of origins (scheme://host[:port]). Preflights are
// answered before authentication, since browsers send them without the Authorization header; the
// request that follows is authenticated as usual. Request headers are reflected (the openai SDK sends
// its own x-stainless-* headers); x-request-id and retry-after are exposed to scripts.
import cors from '@fastify/cors';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

export default fp(
  async function corsPlugin(app: FastifyInstance, opts: { allowedOrigins: readonly string[] }) {
    if (opts.allowedOrigins.length === 0) return;
    await app.register(cors, {
      origin: opts.allowedOrigins.includes('*') ? '*' : [...opts.allowedOrigins],
      methods: ['GET', 'POST', 'OPTIONS'],
      exposedHeaders: ['x-request-id', 'retry-after'],
      maxAge: 600,
      strictPreflight: false,
    });
  },
  { name: 'spikeserve-cors' },
);
