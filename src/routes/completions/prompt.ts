// The prompt work of a (validated) completion request, on the HTTP thread or in the prompt worker:
// the one prompt of the body (a string, token ids, or a one-element list of either), its token ids,
// and its text when `echo` returns it — with the limits checked first (stop strings, then the echo
// limits before an echoed id prompt is decoded: decoding millions of ids is not free).
import { InvalidRequestError } from '../../server/errors.ts';
import { checkEcho, checkStopStrings } from '../common/limits.ts';
import type { PreparedPrompt, PromptContext } from '../common/prompt-context.ts';
import { stopStrings } from '../common/sampling.ts';
import type { CompletionRequest } from './schema.ts';

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

/** `modelVocabSize`: the model's (token ids of the prompt must be below it), or null when not known yet. */
export async function prepareCompletionPrompt(ctx: PromptContext, body: CompletionRequest, modelVocabSize: number | null): Promise<PreparedPrompt> {
  checkStopStrings(ctx.serverConfig, stopStrings(body.stop));
  const one = singlePrompt(body.prompt);
  const echo = body.echo === true;
  const withLogprobs = body.logprobs !== undefined && body.logprobs !== null;
  let prepared: PreparedPrompt;
  if (typeof one === 'string') {
    const ids = await ctx.tokenizer.encodeToInt32(one, { addSpecialTokens: body.add_special_tokens ?? true });
    if (echo) checkEcho(ctx.serverConfig, ids.length, withLogprobs);
    prepared = echo ? { ids, text: one } : { ids };
  } else {
    const vocabSize = modelVocabSize ?? Infinity;
    for (const id of one) {
      if (id >= vocabSize) throw new InvalidRequestError(`'prompt' holds token id ${id}, but the vocabulary has ${vocabSize} tokens`, 'prompt');
    }
    const ids = Int32Array.from(one);
    if (echo) checkEcho(ctx.serverConfig, ids.length, withLogprobs);
    prepared = echo ? { ids, text: ctx.tokenizer.decode(one, { skipSpecialTokens: false }) } : { ids };
  }
  if (prepared.ids.length === 0) throw new InvalidRequestError('the prompt is empty', 'prompt');
  return prepared;
}
