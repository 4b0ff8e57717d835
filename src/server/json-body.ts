// The only body parser: application/json, read as bytes, checked to be valid UTF-8 (Node would
// silently turn bad bytes into U+FFFD) and then parsed. Any other content type is answered 415 by
// Fastify; bad bytes or bad JSON are 400 through the error table.
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { InvalidRequestError } from './errors.ts';

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

export default fp(
  async function jsonBodyPlugin(app: FastifyInstance) {
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
      const bytes = body as Buffer;
      let text: string;
      try {
        text = utf8.decode(bytes);
      } catch {
        done(new InvalidRequestError('request body is not valid UTF-8', null, 'invalid_utf8'), undefined);
        return;
      }
      if (text.trim() === '') {
        done(new InvalidRequestError('request body is empty; expected a JSON object', null, 'invalid_json'), undefined);
        return;
      }
      try {
        done(null, JSON.parse(text) as unknown);
      } catch (err) {
        done(new InvalidRequestError(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json'), undefined);
      }
    });
  },
  { name: 'spikeserve-json-body' },
);
