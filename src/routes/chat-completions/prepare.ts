// A validated chat request → everything needed to run and format it: prompt tokens, sampling
// params, the generation spec and the formatting context. Shared by the HTTP route and the
// WebSocket endpoint, so both accept exactly the same requests.
import type { FastifyInstance } from 'fastify';
import type { AdmissionTicket } from '../../server/admission.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { prepareGeneration } from '../common/prepare-generation.ts';
import { promptOf, type DerivedPrompt } from '../common/prompt-context.ts';
import { outputConstraint } from '../common/structured-output.ts';
import { checkModel } from '../common/usage.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import type { ChatFormatContext } from './format.ts';
import { endOfTurnTokenIds, prepareChatPrompt, promptTools } from './prompt.ts';
import type { ChatCompletionRequest } from './schema.ts';
import { planTools } from './tool-choice.ts';

export interface PreparedChat {
  readonly engine: EnginePort;
  readonly spec: GenerationSpec;
  readonly format: ChatFormatContext;
  readonly streamOptions: StreamOptions;
  readonly stream: boolean;
  /** Prompt tokens that are remembered replies' own ids (logged). */
  readonly splicedTokens: number;
}

/**
 * Rendering a long conversation or many tools takes the HTTP thread tens to hundreds of milliseconds
 * (2,000 messages: ~300 ms); past these sizes the prompt worker renders and tokenizes instead.
 */
const INLINE_MAX_MESSAGES = 64;
const INLINE_MAX_TOOLS = 8;

function isHeavyChat(body: ChatCompletionRequest): boolean {
  return body.messages.length > INLINE_MAX_MESSAGES || (promptTools(body)?.length ?? 0) > INLINE_MAX_TOOLS;
}

/** Once tokenized, the request keeps no copy of its messages' text (the body lives as long as the request). */
function releaseMessageText(body: ChatCompletionRequest): void {
  body.messages = body.messages.map((m) => ({ role: m.role }));
}

/**
 * `ticket`: the request's admission ticket (updated with its real size once tokenized), if it has one;
 * `derived`: the prompt already prepared by the prompt worker (a large body), or null.
 */
export async function prepareChat(
  app: FastifyInstance,
  body: ChatCompletionRequest,
  ticket: AdmissionTicket | null = null,
  derived: DerivedPrompt | null = null,
): Promise<PreparedChat> {
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
  const prompt = await promptOf(derived, () => (isHeavyChat(body) ? app.promptWorker.prepareChat(body) : prepareChatPrompt(app, body)));
  releaseMessageText(body);
  const promptTokenIds = prompt.ids;
  const logprobs = body.logprobs === true ? (body.top_logprobs ?? 0) : null;
  const { spec, identity, streamOptions, stream } = prepareGeneration(app, engine, body, promptTokenIds, 'chatcmpl', {
    promptParam: 'messages',
    defaultMaxTokens: engine.maxModelLen - promptTokenIds.length,
    logprobs,
    promptLogprobs: null,
    extraStopTokenIds: body.ignore_eos === true ? [] : endOfTurnTokenIds(app),
  }, ticket);
  const shared = prompt.sharedPrefixTokens;
  return {
    engine,
    spec: { ...spec, ...(shared !== undefined ? { sharedPrefixTokens: shared } : {}), ...(constraint !== undefined ? { constraint } : {}) },
    format: {
      ...identity,
      promptTokens: promptTokenIds.length,
      withLogprobs: logprobs !== null,
      parseToolCalls: toolPlan.parseToolCalls,
      maxToolCalls: toolPlan.maxToolCalls,
      reasoning: prompt.reasoning ?? null,
      replies: app.replies,
    },
    streamOptions,
    stream,
    splicedTokens: prompt.splicedTokens ?? 0,
  };
}
