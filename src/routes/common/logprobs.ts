// Token text and logprobs in OpenAI's two wire formats:
//   chat:   logprobs.content[{token, logprob, bytes, top_logprobs:[{token, logprob, bytes}]}]
//   legacy: logprobs {tokens, token_logprobs, top_logprobs:[{token: logprob}], text_offset}
// A token's text is its bytes decoded leniently (a lone byte of a multi-byte character shows as
// U+FFFD; `bytes` keeps the truth), or `token_id:N` when return_tokens_as_token_ids is set.
// −∞ is not JSON: it is sent as −9999, as OpenAI does.
import type { PromptLogprobEntry, TopLogprob } from '../../engine/types.ts';
import type { GeneratedToken } from '../../server/generation.ts';
import type { TokenizerPort } from '../../server/ports.ts';

const lenient = new TextDecoder('utf-8', { fatal: false });

function finiteLogprob(x: number): number {
  return Number.isFinite(x) ? x : -9999;
}

/** Each token's text and bytes, per tokenizer: a response with logprobs names the same ids over and over. */
interface TokenTextCache {
  readonly text: Map<number, string>;
  readonly bytes: Map<number, readonly number[]>;
}
const caches = new WeakMap<TokenizerPort, TokenTextCache>();

export class TokenText {
  readonly #cache: TokenTextCache;

  constructor(
    private readonly tokenizer: TokenizerPort,
    private readonly asTokenIds: boolean,
  ) {
    let cache = caches.get(tokenizer);
    if (cache === undefined) caches.set(tokenizer, (cache = { text: new Map(), bytes: new Map() }));
    this.#cache = cache;
  }

  text(id: number): string {
    if (this.asTokenIds) return `token_id:${id}`;
    let text = this.#cache.text.get(id);
    if (text === undefined) this.#cache.text.set(id, (text = lenient.decode(this.tokenizer.tokenBytes(id))));
    return text;
  }

  /** Shared between responses: serialize it, never change it. */
  bytes(id: number): number[] {
    let bytes = this.#cache.bytes.get(id);
    if (bytes === undefined) this.#cache.bytes.set(id, (bytes = Array.from(this.tokenizer.tokenBytes(id))));
    return bytes as number[];
  }
}

export interface ChatTopLogprob {
  readonly token: string;
  readonly logprob: number;
  readonly bytes: number[];
}

export interface ChatLogprobEntry extends ChatTopLogprob {
  readonly top_logprobs: ChatTopLogprob[];
}

export function chatLogprobEntries(tokens: readonly GeneratedToken[], tt: TokenText): ChatLogprobEntry[] {
  const out: ChatLogprobEntry[] = [];
  for (const t of tokens) {
    if (t.logprob === undefined) continue;
    out.push({
      token: tt.text(t.tokenId),
      logprob: finiteLogprob(t.logprob),
      bytes: tt.bytes(t.tokenId),
      top_logprobs: (t.top ?? []).map((a: TopLogprob) => ({ token: tt.text(a.tokenId), logprob: finiteLogprob(a.logprob), bytes: tt.bytes(a.tokenId) })),
    });
  }
  return out;
}

export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

export function emptyLegacyLogprobs(): LegacyLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

/**
 * Appends tokens to a legacy logprobs block. `offset` is the character offset of the first token
 * in the choice's text; returns the offset after the last one.
 */
export function appendLegacy(
  into: LegacyLogprobs,
  tokens: readonly (GeneratedToken | PromptLogprobEntry | { readonly tokenId: number; readonly logprob: null })[],
  tt: TokenText,
  offset: number,
): number {
  let at = offset;
  for (const t of tokens) {
    const text = tt.text(t.tokenId);
    into.tokens.push(text);
    into.text_offset.push(at);
    at += text.length;
    if (t.logprob === null || t.logprob === undefined) {
      into.token_logprobs.push(null);
      into.top_logprobs.push(null);
      continue;
    }
    into.token_logprobs.push(finiteLogprob(t.logprob));
    // Without a prototype the record is a dictionary from the start: a literal {} given 20 keys named by
    // token texts makes V8 build a chain of 20 hidden classes per entry (2-4× the time of the whole
    // echo + logprobs block, and their garbage); and a token spelled __proto__ is a key like any other.
    const top = Object.create(null) as Record<string, number>;
    for (const a of ('top' in t ? t.top : undefined) ?? []) top[tt.text(a.tokenId)] = finiteLogprob(a.logprob);
    into.top_logprobs.push(top);
  }
  return at;
}
