// A validated completion request → prompt tokens (./prompt.ts: here, or already done by the prompt
// worker for a large body), sampling params and the formatting context. `echo` + `logprobs` asks the
// engine for the prompt's own logprobs.
import type { FastifyInstance } from 'fastify';
import type { AdmissionTicket } from '../../server/admission.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { prepareGeneration } from '../common/prepare-generation.ts';
import { outputConstraint } from '../common/structured-output.ts';
import { promptOf, type DerivedPrompt } from '../common/prompt-context.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import { checkModel } from '../common/usage.ts';
import type { CompletionFormatContext } from './format.ts';
import { prepareCompletionPrompt } from './prompt.ts';
import type { CompletionRequest } from './schema.ts';

export interface PreparedCompletion {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly format: CompletionFormatContext;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
}

/**
 * `ticket`: the request's admission ticket (updated with its real size once tokenized), if it has one;
 * `derived`: the prompt already prepared by the prompt worker (a large body), or null.
 */
export async function prepareCompletion(
  app: FastifyInstance,
  body: CompletionRequest,
  ticket: AdmissionTicket | null = null,
  derived: DerivedPrompt | null = null,
): Promise<PreparedCompletion> {
  checkModel(app, body.model);
  const engine = app.serving.requireEngine();
  const n = body.n ?? 1;
  if (body.best_of !== undefined && body.best_of !== null && body.best_of !== n) {
    throw new InvalidRequestError("'best_of' is not supported (only best_of = n)", 'best_of');
  }
  const constraint = outputConstraint(body);
  const prompt = await promptOf(derived, () => prepareCompletionPrompt(app, body, engine.config.vocabSize));
  body.prompt = ''; // the request keeps no copy of the prompt's text: `prompt.text` holds it when echo needs it
  const echo = body.echo === true;
  const logprobs = body.logprobs ?? null;
  const { spec, identity, streamOptions, stream } = prepareGeneration(app, engine, body, prompt.ids, 'cmpl', {
    promptParam: 'prompt',
    defaultMaxTokens: 16,
    logprobs,
    promptLogprobs: echo && logprobs !== null ? logprobs : null,
    extraStopTokenIds: [],
  }, ticket);
  return {
    engine,
    spec: constraint === undefined ? spec : { ...spec, constraint },
    format: { ...identity, promptTokenIds: prompt.ids, promptText: prompt.text ?? '', echo, logprobs },
    streamOptions,
    stream,
  };
}
