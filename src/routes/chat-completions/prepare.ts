// A validated chat request → everything needed to run and format it: prompt tokens, sampling
// params, the generation spec and the formatting context. Shared by the HTTP route and the
// WebSocket endpoint, so both accept exactly the same requests.
import type { FastifyInstance } from 'fastify';
import type { AdmissionTicket } from '../../server/admission.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { checkMessages, checkStopStrings, checkTools } from '../common/limits.ts';
import { prepareGeneration } from '../common/prepare-generation.ts';
import { stopStrings } from '../common/sampling.ts';
import { checkModel } from '../common/usage.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import type { ChatFormatContext } from './format.ts';
import { chatPromptTokens, endOfTurnTokenIds, sharedPrefixTokens } from './prompt.ts';
import type { ChatCompletionRequest } from './schema.ts';

export interface PreparedChat {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly format: ChatFormatContext;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
}

/** `ticket`: the request's admission ticket (updated with its real size once tokenized), if it has one. */
export async function prepareChat(app: FastifyInstance, body: ChatCompletionRequest, ticket: AdmissionTicket | null = null): Promise<PreparedChat> {
  checkModel(app, body.model);
  const engine = app.serving.requireEngine();
  if (body.top_logprobs !== undefined && body.top_logprobs !== null && body.top_logprobs > 0 && body.logprobs !== true) {
    throw new InvalidRequestError("'top_logprobs' needs 'logprobs': true", 'top_logprobs');
  }
  const choice = body.tool_choice ?? 'auto';
  if (choice === 'required' || typeof choice === 'object') {
    throw new InvalidRequestError(
      "tool_choice 'required' or a named function needs constrained decoding, which this server does not do; use 'auto' (the model decides) or 'none'",
      'tool_choice',
    );
  }
  const tools = choice === 'none' || body.tools === undefined || body.tools === null || body.tools.length === 0 ? null : body.tools;
  // The cheap checks, before the template is rendered and the prompt tokenized.
  const limits = app.serverConfig;
  checkMessages(limits, body.messages.length);
  if (tools !== null) checkTools(limits, tools);
  checkStopStrings(limits, stopStrings(body.stop));
  const addGenerationPrompt = body.add_generation_prompt ?? true;
  const promptTokenIds = await chatPromptTokens(app, {
    messages: body.messages,
    tools,
    addGenerationPrompt,
    chatTemplateKwargs: body.chat_template_kwargs,
  });
  if (promptTokenIds.length === 0) throw new InvalidRequestError('the rendered prompt is empty', 'messages');
  const logprobs = body.logprobs === true ? (body.top_logprobs ?? 0) : null;
  const { spec, identity, streamOptions, stream } = prepareGeneration(app, engine, body, promptTokenIds, 'chatcmpl', {
    promptParam: 'messages',
    defaultMaxTokens: engine.maxModelLen - promptTokenIds.length,
    logprobs,
    promptLogprobs: null,
    extraStopTokenIds: body.ignore_eos === true ? [] : endOfTurnTokenIds(app),
  }, ticket);
  const shared = sharedPrefixTokens(app, promptTokenIds, addGenerationPrompt);
  return {
    engine,
    spec: shared === undefined ? spec : { ...spec, sharedPrefixTokens: shared },
    format: { ...identity, promptTokens: promptTokenIds.length, withLogprobs: logprobs !== null, parseToolCalls: tools !== null },
    streamOptions,
    stream,
  };
}
