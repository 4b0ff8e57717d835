// A validated chat request → everything needed to run and format it: prompt tokens, sampling
// params, the generation spec and the formatting context. Shared by the HTTP route and the
// WebSocket endpoint, so both accept exactly the same requests.
import type { FastifyInstance } from 'fastify';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { prepareGeneration } from '../common/prepare-generation.ts';
import { outputConstraint } from '../common/structured-output.ts';
import { checkModel } from '../common/usage.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import type { ChatFormatContext } from './format.ts';
import { chatPrompt, endOfTurnTokenIds, sharedPrefixTokens } from './prompt.ts';
import { reasoningMode } from './reasoning.ts';
import type { ChatCompletionRequest } from './schema.ts';
import { planTools } from './tool-choice.ts';

export interface PreparedChat {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly format: ChatFormatContext;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
}

export async function prepareChat(app: FastifyInstance, body: ChatCompletionRequest): Promise<PreparedChat> {
  checkModel(app, body.model);
  const engine = app.serving.requireEngine();
  if (body.top_logprobs !== undefined && body.top_logprobs !== null && body.top_logprobs > 0 && body.logprobs !== true) {
    throw new InvalidRequestError("'top_logprobs' needs 'logprobs': true", 'top_logprobs');
  }
  const toolPlan = planTools(body);
  const formatConstraint = outputConstraint(body);
  if (toolPlan.constraint !== undefined && formatConstraint !== undefined) {
    throw new InvalidRequestError(`a forced tool call (tool_choice ${JSON.stringify(body.tool_choice)}) cannot be combined with '${formatConstraint.param}'`, 'tool_choice');
  }
  const constraint = toolPlan.constraint ?? formatConstraint;
  const tools = toolPlan.promptTools;
  const addGenerationPrompt = body.add_generation_prompt ?? true;
  const { text: promptText, ids: promptTokenIds } = await chatPrompt(app, {
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
  });
  const shared = sharedPrefixTokens(app, promptTokenIds, addGenerationPrompt);
  return {
    engine,
    spec: { ...spec, ...(shared !== undefined ? { sharedPrefixTokens: shared } : {}), ...(constraint !== undefined ? { constraint } : {}) },
    format: {
      ...identity,
      promptTokens: promptTokenIds.length,
      withLogprobs: logprobs !== null,
      parseToolCalls: toolPlan.parseToolCalls,
      maxToolCalls: toolPlan.maxToolCalls,
      reasoning: reasoningMode(app.chatAssets.template, promptText),
    },
    streamOptions,
    stream,
  };
}
