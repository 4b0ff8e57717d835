// Recent chat replies and the token ids the model generated them as, so the next turn of the
// conversation can give the model those very ids for the assistant message it sends back.
//
// Why: the engine snapshots a finished request at its exact end (prompt + generated ids + the stop
// token), and a later prompt resumes there only if its ids start with those. The next turn re-renders
// the chat as text and tokenizes it, and BPE of a reply's text is often not the ids that were sampled
// (a model may emit "Hel" + "lo" where the tokenizer makes "Hello"), so the prompt diverged inside the
// previous answer and the whole exchange was prefilled again. With the ids remembered, the chat prompt
// (./prompt.ts, ./reply-splice.ts) puts them in place of the reply's encoding.
//
// What is remembered: a reply whose content is exactly the text its ids decode to (special tokens
// included, no U+FFFD from a cut UTF-8 sequence), so the ids are one tokenization of that text and
// swapping them in changes no character of the prompt. The formatter (./format.ts) offers a reply only
// when it sent the text unchanged (no tool call taken out, no reasoning split off; a stop string cut
// the text short of its ids, which the decode check refuses). The stop token is not kept: the
// template writes its own end of turn after the content (`<|im_end|>`), which is the stop token the
// snapshot holds when the reply ended on it.
//
// Bounds: at most `maxEntries` replies and `maxTokens` ids in all (least recently used out); a reply
// longer than `maxTokens` is not remembered (so one decode on the HTTP thread is bounded by it too).
// Keyed by the sha256 of the content; a hit also compares the whole content.
import { createHash } from 'node:crypto';
import type { TokenizerPort } from '../../server/ports.ts';

/** Where a chat prompt looks up remembered replies: on the HTTP thread the cache itself, in the prompt worker a round trip to it. */
export interface RememberedReplies {
  /** For each content, the ids a recent reply with exactly this text was generated as, or null. */
  idsOf(contents: readonly string[]): Promise<readonly (Int32Array | null)[]>;
}

/** One remembered reply, as it crosses to the prompt worker. */
export interface RememberedReply {
  readonly content: string;
  readonly ids: Int32Array;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Set by the composition root (src/main/app.ts); a PromptContext's `replies`. */
    readonly replies: ReplyIdsCache;
  }
}

/** The key of a content: sha256 of its UTF-8, hex. */
export function contentKey(content: string): string {
  return createHash('sha256').update(content, 'utf8').digest('hex');
}

export interface ReplyIdsCacheOptions {
  readonly maxEntries: number;
  readonly maxTokens: number;
}

export class ReplyIdsCache implements RememberedReplies {
  /** Key → reply, least recently used first (a Map keeps insertion order; a hit moves it last). */
  private readonly entries = new Map<string, RememberedReply>();
  private numTokens = 0;

  constructor(
    private readonly tokenizer: Pick<TokenizerPort, 'decode'>,
    private readonly options: ReplyIdsCacheOptions,
  ) {}

  get enabled(): boolean {
    return this.options.maxEntries > 0 && this.options.maxTokens > 0;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Ids held, all entries together. */
  get tokens(): number {
    return this.numTokens;
  }

  /**
   * Remembers that the model wrote `content` as `ids`, if that is exactly what the ids decode to and
   * the reply fits the bounds; otherwise does nothing. Returns whether it was remembered.
   */
  remember(content: string, ids: ArrayLike<number>): boolean {
    if (!this.enabled || content === '' || ids.length === 0 || ids.length > this.options.maxTokens) return false;
    if (content.includes('\uFFFD')) return false; // a lossy decode: the ids hold bytes the text does not
    if (this.tokenizer.decode(ids, { skipSpecialTokens: false }) !== content) return false;
    const key = contentKey(content);
    this.drop(key);
    const entry: RememberedReply = { content, ids: Int32Array.from(ids) };
    this.entries.set(key, entry);
    this.numTokens += entry.ids.length;
    for (const [oldest] of this.entries) {
      if (this.entries.size <= this.options.maxEntries && this.numTokens <= this.options.maxTokens) break;
      this.drop(oldest);
    }
    return true;
  }

  /** The ids of a reply whose content is exactly `content`, or null; a hit becomes the most recently used. */
  get(content: string): Int32Array | null {
    return this.byKey(contentKey(content), content)?.ids ?? null;
  }

  /** By keys (the prompt worker hashes there): the entries, content included, for the worker to compare. */
  byKeys(keys: readonly string[]): (RememberedReply | null)[] {
    return keys.map((key) => this.byKey(key, null));
  }

  async idsOf(contents: readonly string[]): Promise<readonly (Int32Array | null)[]> {
    return contents.map((c) => (this.enabled ? this.get(c) : null));
  }

  private byKey(key: string, content: string | null): RememberedReply | null {
    const entry = this.entries.get(key);
    if (entry === undefined || (content !== null && entry.content !== content)) return null;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry;
  }

  private drop(key: string): void {
    const entry = this.entries.get(key);
    if (entry === undefined) return;
    this.entries.delete(key);
    this.numTokens -= entry.ids.length;
  }
}
