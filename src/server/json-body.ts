// The only body parser: application/json. Any other content type is answered 415 by Fastify; a body
// over --body-limit-bytes is a 413 (from its Content-Length before a byte is read, or as soon as it
// outgrows the limit), bad bytes or bad JSON a 400, all through the error table.
//
// Small bodies (< INLINE_MAX_BYTES) are read here, checked to be valid UTF-8 (Node would silently turn
// bad bytes into U+FFFD) and parsed: well under a millisecond. A larger body of a route with a
// LargeBodyParser (the prompt worker, src/routes/common/prompt-worker-client.ts) is never gathered on
// this thread: each chunk is handed on as it arrives, and the parser answers with the body the route
// validates and what it derived from it (request.derivedBody). Joining, decoding and parsing 64 MiB
// here took seconds of this thread in one block (bench/event-loop-stall.ts).
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { ApiError, InvalidRequestError } from './errors.ts';
import type { LargeBodyParser, LargeBodySession } from './ports.ts';

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

/** Bodies from this size on go to the LargeBodyParser (parsing 256 KiB of JSON here costs ~1-3 ms). */
export const INLINE_MAX_BYTES = 256 * 1024;

export interface JsonBodyOptions {
  readonly bodyLimitBytes: number;
  readonly largeBodies: LargeBodyParser | null;
}

const tooLarge = (): ApiError => new ApiError(413, 'invalid_request_error', 'request body is larger than the server accepts', null, 'body_too_large');

function parseInline(bytes: Buffer): unknown {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new InvalidRequestError('request body is not valid UTF-8', null, 'invalid_utf8');
  }
  if (text.trim() === '') throw new InvalidRequestError('request body is empty; expected a JSON object', null, 'invalid_json');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidRequestError(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
}

/** Reads one body: inline while small, through a LargeBodyParser session once it is large. */
function readBody(request: FastifyRequest, payload: IncomingMessage, opts: JsonBodyOptions, done: (err: Error | null, body?: unknown) => void): void {
  const limit = opts.bodyLimitBytes;
  const declared = Number(request.headers['content-length']);
  if (declared > limit) {
    done(tooLarge());
    return;
  }
  const routeUrl = request.routeOptions.url ?? '';
  const chunks: Buffer[] = [];
  let received = 0;
  let session: LargeBodySession | null = declared >= INLINE_MAX_BYTES ? (opts.largeBodies?.begin(routeUrl) ?? null) : null;
  let settled = false;
  const finish = (err: Error | null, body?: unknown): void => {
    if (settled) return;
    settled = true;
    payload.off('data', onData);
    payload.off('end', onEnd);
    payload.off('error', onError);
    payload.off('close', onClose);
    if (err !== null) session?.abort();
    done(err, body);
  };
  const onData = (chunk: Buffer): void => {
    received += chunk.length;
    if (received > limit) {
      finish(tooLarge());
      return;
    }
    if (session === null && received >= INLINE_MAX_BYTES) {
      session = opts.largeBodies?.begin(routeUrl) ?? null;
      if (session !== null) {
        for (const c of chunks) session.push(c);
        chunks.length = 0;
      }
    }
    if (session !== null) session.push(chunk);
    else chunks.push(chunk);
  };
  const onEnd = (): void => {
    if (!Number.isNaN(declared) && received !== declared) {
      finish(new InvalidRequestError('content-length does not match the body', null, 'invalid_content_length'));
      return;
    }
    if (session === null) {
      try {
        finish(null, parseInline(Buffer.concat(chunks, received)));
      } catch (err) {
        finish(err as Error);
      }
      return;
    }
    const s = session;
    s.end().then(
      (parsed) => {
        request.derivedBody = parsed.derived;
        finish(null, parsed.body);
      },
      (err: unknown) => finish(err instanceof Error ? err : new Error(String(err))),
    );
  };
  const onError = (err: Error): void => finish(err);
  // The client went away before the body ended: nothing to answer, but forget what was read.
  const onClose = (): void => {
    if (!payload.complete) finish(new InvalidRequestError('the client closed the connection before the body ended', null, 'client_closed'));
  };
  payload.on('data', onData);
  payload.on('end', onEnd);
  payload.on('error', onError);
  payload.on('close', onClose);
  payload.resume();
}

export default fp(
  async function jsonBodyPlugin(app: FastifyInstance, opts: JsonBodyOptions) {
    app.removeAllContentTypeParsers();
    app.decorateRequest('derivedBody', null);
    app.addContentTypeParser('application/json', (request, payload, done) => readBody(request, payload, opts, done));
  },
  { name: 'spikeserve-json-body' },
);
