// JSON schema of POST /v1/chat/completions (OpenAI's fields plus vLLM's sampling extensions and
// our `stream_options.include_progress`). Unknown top-level fields are accepted and ignored, as
// OpenAI clients send many (parallel_tool_calls, metadata, …).
import { Type, type Static } from 'typebox';
import { MAX_TOP_LOGPROBS, samplingFields } from '../common/sampling.ts';
import { structuredOutputFields } from '../common/structured-output.ts';
import { ChatLogprobsSchema, generationResponseSchema } from '../common/wire-schemas.ts';

// Parts other than text are refused by the chat template with a 400 naming the message.
const ContentPart = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) }, { additionalProperties: true });

export const ChatMessage = Type.Object({
  role: Type.Enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: Type.Optional(Type.Union([Type.String(), Type.Array(ContentPart), Type.Null()])),
  name: Type.Optional(Type.String()),
  tool_calls: Type.Optional(Type.Array(Type.Record(Type.String(), Type.Unknown()))),
  tool_call_id: Type.Optional(Type.String()),
});
export type ChatMessage = Static<typeof ChatMessage>;

export const ChatCompletionRequest = Type.Object({
  ...samplingFields,
  messages: Type.Array(ChatMessage, { minItems: 1 }),
  max_completion_tokens: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
  logprobs: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  top_logprobs: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: MAX_TOP_LOGPROBS }), Type.Null()])),
  tools: Type.Optional(Type.Union([Type.Array(Type.Record(Type.String(), Type.Unknown())), Type.Null()])),
  /**
   * 'auto' (the default with tools): replies are parsed for tool calls; 'none': tools are left out of
   * the prompt and replies are plain text; 'required' and a named function force calls through a
   * grammar (tool-choice.ts).
   */
  tool_choice: Type.Optional(
    Type.Union([
      Type.Enum(['none', 'auto', 'required']),
      Type.Object({ type: Type.Literal('function'), function: Type.Object({ name: Type.String() }) }),
      Type.Null(),
    ]),
  ),
  /** false: at most one tool call per reply. */
  parallel_tool_calls: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  add_generation_prompt: Type.Optional(Type.Boolean()),
  ...structuredOutputFields,
  chat_template_kwargs: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])),
});
export type ChatCompletionRequest = Static<typeof ChatCompletionRequest>;

/** The non-streamed response (streamed chunks are written by the SSE writer). */
const ToolCallSchema = Type.Object({
  id: Type.String(),
  type: Type.Literal('function'),
  function: Type.Object({ name: Type.String(), arguments: Type.String() }),
});

export const ChatCompletionResponse = generationResponseSchema('chat.completion', {
  message: Type.Object({
    role: Type.Literal('assistant'),
    content: Type.Union([Type.String(), Type.Null()]),
    /** Reasoning-template models: the text of the reply's <think> block (vLLM's field), null when there was none. */
    reasoning_content: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    tool_calls: Type.Optional(Type.Array(ToolCallSchema)),
  }),
  logprobs: Type.Union([ChatLogprobsSchema, Type.Null()]),
});
export type ChatCompletionResponse = Static<typeof ChatCompletionResponse>;
