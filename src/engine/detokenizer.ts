// Streaming text out of generated token ids: IncrementalDetokenizer turns one token at a time into
// newly final text (never half a UTF-8 character), and StopStringMatcher cuts that text at stop strings
// without ever streaming a piece of one.
//
// Why bytes: a byte-level BPE token can hold part of a UTF-8 character (🤗 is often two or three
// tokens), so decoding token by token would stream U+FFFD. Each token's raw bytes go through one
// streaming UTF-8 decoder, which holds back an incomplete trailing sequence until its bytes arrive;
// the text streamed is therefore exactly `decode(all ids)` of the whole sequence.

import type { TextTokenizer } from './tokenizer.ts';

/** The part of TextTokenizer the detokenizer uses. */
export type DetokenizerTokenizer = Pick<TextTokenizer, 'tokenBytes' | 'isSpecial'>;

export interface DetokenizerOptions {
  readonly skipSpecialTokens: boolean;
}

export class IncrementalDetokenizer {
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  constructor(
    private readonly tokenizer: DetokenizerTokenizer,
    private readonly options: DetokenizerOptions,
  ) {}

  /** Text that became final with this token; '' while a UTF-8 character is still incomplete. */
  push(tokenId: number): string {
    if (this.options.skipSpecialTokens && this.tokenizer.isSpecial(tokenId)) return '';
    return this.utf8.decode(this.tokenizer.tokenBytes(tokenId), { stream: true });
  }

  /** End of the sequence: an incomplete trailing character becomes U+FFFD (as a full decode does). */
  flush(): string {
    return this.utf8.decode();
  }
}

export interface StopMatch {
  /** Text that is safe to stream now; when stopped, the text before the stop string. */
  readonly emit: string;
  /** A stop string was found; nothing after it is ever emitted. */
  readonly stopped: boolean;
}

/**
 * Finds the first stop string in a stream of text pieces: the one whose end comes first in the text,
 * the longest of those ending there (so the answer does not depend on how the text was cut into
 * pieces, and no part of a matched stop string is streamed). Each stop string runs a
 * Knuth–Morris–Pratt automaton over the text, one character at a time: its state is the length of the
 * longest suffix of the text so far that is a prefix of the stop string. The matcher holds back the
 * longest such suffix over all stop strings, so a stop string split across tokens is still caught and
 * none of it is streamed; the held text is at most (longest stop − 1) chars. Cost: amortized
 * O(characters × stop strings), never a rescan of what was already seen.
 */
export class StopStringMatcher {
  private readonly stops: readonly string[];
  /** failure[k][q]: longest proper prefix of stops[k] that is a suffix of its first q + 1 characters. */
  private readonly failure: readonly Int32Array[];
  private readonly state: Int32Array;
  private held = '';
  private stopped = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.failure = this.stops.map(kmpFailure);
    this.state = new Int32Array(this.stops.length);
  }

  push(text: string): StopMatch {
    if (this.stopped) return { emit: '', stopped: true };
    const buffer = this.held + text;
    const offset = this.held.length;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      let matchedChars = 0;
      for (let k = 0; k < this.stops.length; k++) {
        const stop = this.stops[k] as string;
        const failure = this.failure[k] as Int32Array;
        let q = this.state[k] as number;
        while (q > 0 && stop.charCodeAt(q) !== c) q = failure[q - 1] as number;
        if (stop.charCodeAt(q) === c) q++;
        if (q === stop.length) matchedChars = Math.max(matchedChars, q);
        this.state[k] = q;
      }
      if (matchedChars > 0) {
        this.stopped = true;
        this.held = '';
        return { emit: buffer.slice(0, offset + i + 1 - matchedChars), stopped: true };
      }
    }
    let holdChars = 0;
    for (const q of this.state) holdChars = Math.max(holdChars, q);
    this.held = buffer.slice(buffer.length - holdChars);
    return { emit: buffer.slice(0, buffer.length - holdChars), stopped: false };
  }

  /** The held text (end of stream without a stop); '' after a stop. */
  flush(): string {
    const held = this.held;
    this.held = '';
    return held;
  }
}

/** KMP failure function of `pattern` (UTF-16 code units). */
function kmpFailure(pattern: string): Int32Array {
  const failure = new Int32Array(pattern.length);
  for (let i = 1, q = 0; i < pattern.length; i++) {
    const c = pattern.charCodeAt(i);
    while (q > 0 && pattern.charCodeAt(q) !== c) q = failure[q - 1] as number;
    if (pattern.charCodeAt(q) === c) q++;
    failure[i] = q;
  }
  return failure;
}
