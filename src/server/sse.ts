// Server-sent events for streamed completions, OpenAI style: `data: <json>\n\n` per chunk, a final
// `data: [DONE]`, and `: keep-alive` comments whenever nothing was written for keepaliveMs (a long
// prefill sends no token for minutes; proxies drop silent connections).
//
// The status line is committed as late as possible: the first chunk (or its error) is awaited for
// up to one keep-alive interval, so an error raised before the first token — queue full, prompt
// rejected — still becomes a proper 4xx/5xx through the error handler instead of an SSE error event.
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toApiError } from './errors.ts';

const KEEPALIVE = ': keep-alive\n\n';

/** Writes SSE frames to a raw response, honouring backpressure, and keeps the connection alive. */
class SseWriter {
  readonly #res: ServerResponse;
  readonly #keepaliveMs: number;
  #timer: NodeJS.Timeout | null = null;

  constructor(res: ServerResponse, keepaliveMs: number) {
    this.#res = res;
    this.#keepaliveMs = keepaliveMs;
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

  async data(payload: unknown): Promise<void> {
    await this.#write(`data: ${JSON.stringify(payload)}\n\n`);
  }

  comment(): void {
    if (!this.closed) this.#res.write(KEEPALIVE);
  }

  async end(): Promise<void> {
    if (!this.closed) await this.#write('data: [DONE]\n\n');
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
      this.#arm();
    }, this.#keepaliveMs);
    this.#timer.unref();
  }

  async #write(frame: string): Promise<void> {
    if (this.closed) return;
    this.#arm();
    if (!this.#res.write(frame)) {
      // Wait for the client to catch up, or for it to go away.
      await Promise.race([once(this.#res, 'drain'), once(this.#res, 'close')]);
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
export async function streamSse(
  request: FastifyRequest,
  reply: FastifyReply,
  chunks: AsyncIterator<unknown>,
  keepaliveMs: number,
): Promise<void> {
  let pending: Promise<IteratorResult<unknown>> | null = chunks.next();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), keepaliveMs)));
  let first: IteratorResult<unknown> | 'timeout';
  try {
    first = await Promise.race([pending, timeout]);
  } finally {
    clearTimeout(timer);
  }
  const writer = new SseWriter(reply.raw, keepaliveMs);
  reply.hijack();
  writer.open(pendingHeaders(reply));
  if (first === 'timeout') writer.comment();
  else pending = Promise.resolve(first);
  try {
    while (pending !== null) {
      const r: IteratorResult<unknown> = await pending;
      if (r.done === true) break;
      if (writer.closed) break;
      await writer.data(r.value);
      pending = chunks.next();
    }
  } catch (err) {
    const { apiError, isFault } = toApiError(err);
    if (isFault) request.log.error({ err }, 'stream failed');
    else request.log.info({ err: apiError.message }, 'stream ended with an error');
    if (!writer.closed) await writer.data(apiError.toEnvelope());
  } finally {
    await chunks.return?.();
    await writer.end();
  }
}
