// The prompt work of a (validated) /tokenize request, on the HTTP thread or in the prompt worker: the
// token ids of its prompt, or of its messages rendered with the chat template.
import { InvalidRequestError } from '../../server/errors.ts';
import { chatPromptTokens } from '../chat-completions/prompt.ts';
import { checkMessages } from '../common/limits.ts';
import type { PreparedPrompt, PromptContext } from '../common/prompt-context.ts';
import type { TokenizeRequest } from './schema.ts';

export async function prepareTokenizePrompt(ctx: PromptContext, body: TokenizeRequest): Promise<PreparedPrompt> {
  if (body.prompt !== undefined && body.messages !== undefined) {
    throw new InvalidRequestError("send either 'prompt' or 'messages', not both", 'messages');
  }
  if (body.messages !== undefined) {
    checkMessages(ctx.serverConfig, body.messages.length);
    const ids = await chatPromptTokens(ctx, { messages: body.messages, addGenerationPrompt: body.add_generation_prompt ?? true, chatTemplateKwargs: body.chat_template_kwargs });
    return { ids };
  }
  if (body.prompt !== undefined) return { ids: await ctx.tokenizer.encodeToInt32(body.prompt, { addSpecialTokens: body.add_special_tokens ?? true }) };
  throw new InvalidRequestError("'prompt' or 'messages' is a required property", 'prompt');
}
