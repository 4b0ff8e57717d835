// The work of a (validated) /detokenize request, on the HTTP thread or in the prompt worker: the ids
// checked against the limit and the vocabulary, then their text (special tokens kept, as the ids say).
import { InvalidRequestError } from '../../server/errors.ts';
import { checkDetokenize } from '../common/limits.ts';
import type { PromptContext } from '../common/prompt-context.ts';
import type { DetokenizeRequest } from './schema.ts';

export function detokenizeText(ctx: PromptContext, body: DetokenizeRequest): string {
  checkDetokenize(ctx.serverConfig, body.tokens.length);
  const vocabSize = ctx.tokenizer.vocabSize;
  for (const id of body.tokens) {
    if (id >= vocabSize) throw new InvalidRequestError(`'tokens' holds token id ${id}, but the vocabulary has ${vocabSize} tokens`, 'tokens');
  }
  return ctx.tokenizer.decode(body.tokens, { skipSpecialTokens: false });
}
