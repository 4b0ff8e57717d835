// The handler body both generation routes share: log the start, run the generation under the
// request's lifetime (the client going away or a drain deadline aborts it), and answer with one JSON
// object (a large one written in slices) or, for `stream: true`, with SSE. Each route supplies its own
// two wire formats.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { runGeneration, type GenerationEvent, type GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { beginRequestLifetime } from '../../server/request-lifetime.ts';
import { streamSse } from '../../server/sse.ts';
import { sendJsonSlices, SLICED_ANSWER_MIN_VALUES } from './json-slices.ts';

export interface PreparedGeneration {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly stream: boolean;
  /** Chat: prompt tokens that are remembered replies' own ids (logged when there are some). */
  readonly splicedTokens?: number;
}

export interface GenerationFormats<T> {
  /** Collects the events into the non-streamed response. */
  whole(events: AsyncIterable<GenerationEvent>): Promise<T>;
  /** About how many JSON values `answer` holds: a large one is written in slices (./json-slices.ts). */
  values(answer: T): number;
  /** The chunk objects of the streamed response, in order. */
  chunks(events: AsyncIterable<GenerationEvent>): AsyncGenerator<object>;
}

/** Events of one prepared generation; shared with the WebSocket route. */
export function generationEvents(app: FastifyInstance, prepared: PreparedGeneration, signal: AbortSignal): AsyncIterable<GenerationEvent> {
  return runGeneration({ engine: prepared.engine, tokenizer: app.tokenizer, metrics: app.metrics }, prepared.spec, signal);
}

export async function replyWithGeneration<T>(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  prepared: PreparedGeneration,
  formats: GenerationFormats<T>,
): Promise<T | FastifyReply> {
  const { spec } = prepared;
  const spliced = prepared.splicedTokens ?? 0;
  request.log.info(
    {
      completionId: spec.requestId,
      promptTokens: spec.promptTokenIds.length,
      ...(spliced > 0 ? { replyTokens: spliced } : {}),
      maxTokens: spec.sampling.maxTokens,
      n: spec.n,
      stream: prepared.stream,
    },
    'generation started',
  );
  const life = beginRequestLifetime(app, reply);
  try {
    const events = generationEvents(app, prepared, life.signal);
    if (!prepared.stream) {
      const answer = await formats.whole(events);
      // The same bytes either way; a large answer (echo + logprobs) would hold the thread while serialized at once.
      return formats.values(answer) < SLICED_ANSWER_MIN_VALUES ? answer : sendJsonSlices(reply, answer);
    }
    await streamSse(request, reply, formats.chunks(events), {
      keepaliveMs: app.serverConfig.keepaliveSeconds * 1000,
      maxBufferBytes: app.serverConfig.maxStreamBufferBytes,
    });
    return reply;
  } finally {
    life.release();
  }
}
