// A validated completion request → prompt tokens (tokenized asynchronously, or taken as given),
// sampling params and the formatting context. `echo` + `logprobs` asks the engine for the
// prompt's own logprobs.
import type { FastifyInstance } from 'fastify';
import type { PromptTokenIds } from '../../engine/types.ts';
import type { AdmissionTicket } from '../../server/admission.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { checkEcho, checkStopStrings } from '../common/limits.ts';
import { prepareGeneration } from '../common/prepare-generation.ts';
import { stopStrings } from '../common/sampling.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import { checkModel } from '../common/usage.ts';
import type { CompletionFormatContext } from './format.ts';
import type { CompletionRequest } from './schema.ts';

export interface PreparedCompletion {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly format: CompletionFormatContext;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
}

const isTokenId = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0;

/** The one prompt of the request: a string or a token-id list. */
function singlePrompt(p: CompletionRequest['prompt']): string | number[] {
  if (typeof p === 'string') return p;
  if (p.every(isTokenId)) return p as number[];
  if (p.length === 1 && typeof p[0] === 'string') return p[0];
  if (p.length === 1 && Array.isArray(p[0]) && p[0].length > 0 && p[0].every(isTokenId)) return p[0] as number[];
  if (p.length > 1 && p.every((x) => typeof x === 'string' || Array.isArray(x))) {
    throw new InvalidRequestError("'prompt' holds several prompts; send one prompt per request", 'prompt');
  }
  throw new InvalidRequestError("'prompt' must be a string, a list of token ids (integers ≥ 0), or a one-element list of either", 'prompt');
}

/**
 * Token ids of the prompt, and its text when `echo` needs it (decoding millions of ids is not free;
 * an echoed prompt is checked against the echo limits before it is decoded).
 */
async function promptTokens(app: FastifyInstance, body: CompletionRequest, vocabSize: number): Promise<{ ids: PromptTokenIds; text: string }> {
  const one = singlePrompt(body.prompt);
  const echo = body.echo === true;
  const withLogprobs = body.logprobs !== undefined && body.logprobs !== null;
  if (typeof one === 'string') {
    const ids = await app.tokenizer.encodeToInt32(one, { addSpecialTokens: body.add_special_tokens ?? true });
    if (echo) checkEcho(app.serverConfig, ids.length, withLogprobs);
    return { ids, text: echo ? one : '' };
  }
  for (const id of one) {
    if (id >= vocabSize) throw new InvalidRequestError(`'prompt' holds token id ${id}, but the vocabulary has ${vocabSize} tokens`, 'prompt');
  }
  if (!echo) return { ids: one, text: '' };
  checkEcho(app.serverConfig, one.length, withLogprobs);
  return { ids: one, text: app.tokenizer.decode(one, { skipSpecialTokens: false }) };
}

/** `ticket`: the request's admission ticket (updated with its real size once tokenized), if it has one. */
export async function prepareCompletion(app: FastifyInstance, body: CompletionRequest, ticket: AdmissionTicket | null = null): Promise<PreparedCompletion> {
  checkModel(app, body.model);
  const engine = app.serving.requireEngine();
  const n = body.n ?? 1;
  if (body.best_of !== undefined && body.best_of !== null && body.best_of !== n) {
    throw new InvalidRequestError("'best_of' is not supported (only best_of = n)", 'best_of');
  }
  checkStopStrings(app.serverConfig, stopStrings(body.stop));
  const { ids, text } = await promptTokens(app, body, engine.config.vocabSize);
  if (ids.length === 0) throw new InvalidRequestError('the prompt is empty', 'prompt');
  const echo = body.echo === true;
  const logprobs = body.logprobs ?? null;
  const { spec, identity, streamOptions, stream } = prepareGeneration(app, engine, body, ids, 'cmpl', {
    promptParam: 'prompt',
    defaultMaxTokens: 16,
    logprobs,
    promptLogprobs: echo && logprobs !== null ? logprobs : null,
    extraStopTokenIds: [],
  }, ticket);
  return {
    engine,
    spec,
    format: { ...identity, promptTokenIds: ids, promptText: text, echo, logprobs },
    streamOptions,
    stream,
  };
}
