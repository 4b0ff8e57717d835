// What both generation endpoints do once the prompt is tokenized: turn the body into SamplingParams
// against this engine's limits (context length, vocabulary), name the request, and build the
// GenerationSpec, the fields every wire object of the answer repeats, and the stream options
// (refused without a stream).
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { PromptTokenIds } from '../../engine/types.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import type { AdmissionTicket } from '../../server/admission.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { TokenText } from './logprobs.ts';
import { stopStrings, toSamplingParams, type SamplingBody, type SamplingContext } from './sampling.ts';
import type { StreamIdentity, StreamOptions } from './stream-chunks.ts';
import { nowSeconds } from './usage.ts';

/** The formatting fields both endpoints share: the stream identity, the choice count, token text. */
export interface GenerationIdentity extends StreamIdentity {
  readonly n: number;
  readonly tokenText: TokenText;
}

export interface PreparedGenerationParts {
  readonly spec: GenerationSpec;
  readonly identity: GenerationIdentity;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
}

/** The endpoint's own sampling rules; the engine's limits and the prompt length are filled in here. */
export type EndpointSampling = Omit<SamplingContext, 'promptTokens' | 'maxModelLen' | 'vocabSize'>;

/**
 * Throws InvalidRequestError (from toSamplingParams) when the prompt or the sampling fields do not fit,
 * and the admission ticket's errors (400 over the token budget, 429 when the budgets are full now).
 */
export function prepareGeneration(
  app: FastifyInstance,
  engine: EnginePort,
  body: SamplingBody & { max_completion_tokens?: number | null },
  promptTokenIds: PromptTokenIds,
  idPrefix: 'chatcmpl' | 'cmpl',
  endpointSampling: EndpointSampling,
  ticket: AdmissionTicket | null,
): PreparedGenerationParts {
  const stream = body.stream === true;
  // OpenAI and vLLM refuse it too: the options describe a stream, and a client that sends them
  // without one expects something it will not get.
  if (!stream && body.stream_options !== undefined && body.stream_options !== null) {
    throw new InvalidRequestError("'stream_options' is only allowed when 'stream' is true", 'stream_options');
  }
  const n = body.n ?? 1;
  ticket?.update(n, promptTokenIds.length, endpointSampling.promptParam);
  const sampling = toSamplingParams(body, {
    ...endpointSampling,
    promptTokens: promptTokenIds.length,
    maxModelLen: engine.maxModelLen,
    vocabSize: engine.config.vocabSize,
  });
  const id = `${idPrefix}-${randomUUID().replace(/-/g, '')}`;
  const includeProgress = body.stream_options?.include_progress === true;
  // llama.cpp sends prompt_progress in streams only and ignores the flag otherwise; so does this.
  const returnProgress = stream && body.return_progress === true;
  return {
    spec: {
      requestId: id,
      promptTokenIds,
      sampling,
      n,
      stop: stopStrings(body.stop),
      skipSpecialTokens: body.skip_special_tokens ?? true,
      reportProgress: includeProgress || returnProgress,
      ...(ticket !== null ? { onSubmitted: () => ticket.release() } : {}),
    },
    identity: {
      id,
      created: nowSeconds(),
      model: app.serverConfig.servedModelName,
      n,
      tokenText: new TokenText(app.tokenizer, body.return_tokens_as_token_ids === true),
    },
    streamOptions: { includeUsage: body.stream_options?.include_usage === true, includeProgress, returnProgress },
    stream,
  };
}
