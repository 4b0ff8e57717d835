// The prompt work of a (validated) warm-up request, on the HTTP thread or in the prompt worker (a
// large body: a long document is what this route is for): `{messages}` rendered by the chat template,
// without the generation prompt unless asked (the snapshot then ends where a later chat's next turn
// starts), or `{prompt}` as text or token ids, as /v1/completions takes them.
import { InvalidRequestError } from '../../server/errors.ts';
import { chatPromptTokens } from '../chat-completions/prompt.ts';
import { checkMessages } from '../common/limits.ts';
import type { PreparedPrompt, PromptContext } from '../common/prompt-context.ts';
import type { WarmRequest } from './schema.ts';

/** `modelVocabSize`: token ids must be below it (null: not checked here). */
export async function prepareWarmPrompt(ctx: PromptContext, body: WarmRequest, modelVocabSize: number | null): Promise<PreparedPrompt> {
  let ids: Int32Array;
  if ('messages' in body) {
    checkMessages(ctx.serverConfig, body.messages.length);
    ids = await chatPromptTokens(ctx, { messages: body.messages, addGenerationPrompt: body.add_generation_prompt ?? false, chatTemplateKwargs: body.chat_template_kwargs });
  } else if (typeof body.prompt === 'string') {
    ids = await ctx.tokenizer.encodeToInt32(body.prompt, { addSpecialTokens: body.add_special_tokens ?? true });
  } else {
    if (modelVocabSize !== null) {
      const bad = body.prompt.find((t) => t >= modelVocabSize);
      if (bad !== undefined) throw new InvalidRequestError(`'prompt' holds token id ${bad}, but the vocabulary has ${modelVocabSize} tokens`, 'prompt');
    }
    ids = Int32Array.from(body.prompt);
  }
  if (ids.length === 0) throw new InvalidRequestError('the prompt is empty', 'messages' in body ? 'messages' : 'prompt');
  return { ids };
}
