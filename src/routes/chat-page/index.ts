// GET / — a small self-contained chat page (page.html: inline CSS and JS, no external resources)
// that streams from /v1/chat/completions over SSE and shows TTFT and tokens/s.
import { readFileSync } from 'node:fs';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';

const PAGE = readFileSync(new URL('./page.html', import.meta.url), 'utf8');

const chatPageRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/', async (_request, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('content-security-policy', "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
      .send(PAGE),
  );
};

export default chatPageRoute;
