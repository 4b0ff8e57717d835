// Server-sent events for streamed completions, OpenAI style: `data: <json>\n\n` per chunk, a final
// `data: [DONE]`, and `: keep-alive` comments whenever nothing was written for keepaliveMs (a long
// prefill sends no token for minutes; proxies drop silent connections).
//
// The status line is committed as late as possible: the first chunk (or its error) is awaited for
// up to one keep-alive interval, so an error raised before the first token — queue full, prompt
// rejected — still becomes a proper 4xx/5xx through the error handler instead of an SSE error event.
//
// Backpressure: frames are written as they come and what the client has not read yet (the response's
// and the socket's buffers) is bounded by --max-stream-buffer-bytes. A client that stops reading is
// disconnected once its backlog passes the bound: the response is destroyed, which ends the request's
// lifetime (request-lifetime.ts) and aborts its engine requests. Nothing waits for 'drain', so there is
// no per-write listener to leak, and the generation never queues events behind a stalled socket.
import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toApiError } from './errors.ts';

const KEEPALIVE = ': keep-alive\n\n';

export interface SseOptions {
  readonly keepaliveMs: number;
  /** Unread output past which the client is disconnected (--max-stream-buffer-bytes). */
  readonly maxBufferBytes: number;
}

/** Writes SSE frames to a raw response, bounding what the client leaves unread, and keeps the connection alive. */
class SseWriter {
  readonly #res: ServerResponse;
  readonly #opts: SseOptions;
  readonly #onOverflow: (bufferedBytes: number) => void;
  #timer: NodeJS.Timeout | null = null;

  constructor(res: ServerResponse, opts: SseOptions, onOverflow: (bufferedBytes: number) => void) {
    this.#res = res;
    this.#opts = opts;
    this.#onOverflow = onOverflow;
  }

  get closed(): boolean {
    return this.#res.destroyed || this.#res.writableEnded;
  }

  open(headers: Record<string, string | number | string[]>): void {
    this.#res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    this.#res.flushHeaders();
    this.#arm();
  }

  data(payload: unknown): void {
    this.#write(`data: ${JSON.stringify(payload)}\n\n`);
  }

  comment(): void {
    this.#write(KEEPALIVE);
  }

  end(): void {
    this.#write('data: [DONE]\n\n');
    this.stop();
    if (!this.closed) this.#res.end();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #arm(): void {
    this.stop();
    this.#timer = setTimeout(() => {
      this.comment();
      if (!this.closed) this.#arm();
    }, this.#opts.keepaliveMs);
    this.#timer.unref();
  }

  #write(frame: string): void {
    if (this.closed) return;
    this.#arm();
    this.#res.write(frame);
    // writableLength: bytes in the response's buffer plus the socket's, i.e. written but not yet sent.
    const buffered = this.#res.writableLength;
    if (buffered > this.#opts.maxBufferBytes) {
      this.stop();
      this.#onOverflow(buffered);
      this.#res.destroy();
    }
  }
}

/** Response headers Fastify would have sent (x-request-id, …), for a hijacked reply. */
function pendingHeaders(reply: FastifyReply): Record<string, string | number | string[]> {
  const out: Record<string, string | number | string[]> = {};
  for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * Streams `chunks` as SSE. Errors before the first chunk propagate (the caller's error handler
 * answers them); errors after it become an `{error:{…}}` event followed by `[DONE]`.
 */
export async function streamSse(request: FastifyRequest, reply: FastifyReply, chunks: AsyncIterator<unknown>, opts: SseOptions): Promise<void> {
  let pending: Promise<IteratorResult<unknown>> | null = chunks.next();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), opts.keepaliveMs)));
  let first: IteratorResult<unknown> | 'timeout';
  try {
    first = await Promise.race([pending, timeout]);
  } finally {
    clearTimeout(timer);
  }
  const writer = new SseWriter(reply.raw, opts, (bufferedBytes) =>
    request.log.warn({ bufferedBytes, maxBufferBytes: opts.maxBufferBytes }, 'the client stopped reading its stream: disconnected, request aborted'),
  );
  reply.hijack();
  writer.open(pendingHeaders(reply));
  if (first === 'timeout') writer.comment();
  else pending = Promise.resolve(first);
  try {
    while (pending !== null) {
      const r: IteratorResult<unknown> = await pending;
      if (r.done === true) break;
      if (writer.closed) break;
      writer.data(r.value);
      pending = chunks.next();
    }
  } catch (err) {
    const { apiError, isFault } = toApiError(err);
    if (isFault) request.log.error({ err }, 'stream failed');
    else request.log.info({ err: apiError.message }, 'stream ended with an error');
    writer.data(apiError.toEnvelope());
  } finally {
    await chunks.return?.();
    writer.end();
  }
}
