// A validated chat request → everything needed to run and format it: prompt tokens, sampling
// params, the generation spec and the formatting context. Shared by the HTTP route and the
// WebSocket endpoint, so both accept exactly the same requests.
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { InvalidRequestError } from '../../server/errors.ts';
import type { GenerationSpec } from '../../server/generation.ts';
import type { EnginePort } from '../../server/ports.ts';
import { TokenText } from '../common/logprobs.ts';
import { stopStrings, toSamplingParams } from '../common/sampling.ts';
import { checkModel, nowSeconds } from '../common/usage.ts';
import type { StreamOptions } from '../common/stream-chunks.ts';
import type { ChatFormatContext } from './format.ts';
import { chatPromptTokens, endOfTurnTokenIds } from './prompt.ts';
import type { ChatCompletionRequest } from './schema.ts';

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
  const promptTokenIds = await chatPromptTokens(app, {
    messages: body.messages,
    tools: body.tools,
    addGenerationPrompt: body.add_generation_prompt ?? true,
    chatTemplateKwargs: body.chat_template_kwargs,
  });
  if (promptTokenIds.length === 0) throw new InvalidRequestError('the rendered prompt is empty', 'messages');
  const logprobs = body.logprobs === true ? (body.top_logprobs ?? 0) : null;
  const sampling = toSamplingParams(body, {
    promptParam: 'messages',
    promptTokens: promptTokenIds.length,
    maxModelLen: engine.maxModelLen,
    vocabSize: engine.config.vocabSize,
    defaultMaxTokens: engine.maxModelLen - promptTokenIds.length,
    logprobs,
    promptLogprobs: null,
    extraStopTokenIds: body.ignore_eos === true ? [] : endOfTurnTokenIds(app),
  });
  const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
  const n = body.n ?? 1;
  const includeProgress = body.stream_options?.include_progress === true;
  return {
    engine,
    spec: {
      requestId: id,
      promptTokenIds,
      sampling,
      n,
      stop: stopStrings(body.stop),
      skipSpecialTokens: body.skip_special_tokens ?? true,
      reportProgress: includeProgress,
    },
    format: {
      id,
      created: nowSeconds(),
      model: app.serverConfig.servedModelName,
      n,
      promptTokens: promptTokenIds.length,
      withLogprobs: logprobs !== null,
      tokenText: new TokenText(app.tokenizer, body.return_tokens_as_token_ids === true),
    },
    streamOptions: { includeUsage: body.stream_options?.include_usage === true, includeProgress },
    stream: body.stream === true,
  };
}
