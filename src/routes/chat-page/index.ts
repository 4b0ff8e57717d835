// GET / — the chat page (page.html: inline CSS and JS, no external resources, so it works offline),
// made for long documents: a text file (picker, drag and drop) or pasted text goes into the system
// message, where every question of the conversation shares it as the prompt's prefix (the prefix
// cache resumes after it); the page streams from /v1/chat/completions over SSE and shows the prefill
// progress with an ETA, then TTFT, tokens/s and the prompt tokens taken from the cache.
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
