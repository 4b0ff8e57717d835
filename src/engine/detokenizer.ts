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
 * Finds the first stop string in a stream of text pieces. It holds back the longest suffix of the text
 * seen so far that is a proper prefix of some stop string, so a stop string split across tokens is
 * still caught and none of it is streamed. The held text is at most (longest stop − 1) chars.
 */
export class StopStringMatcher {
  private readonly stops: readonly string[];
  private held = '';
  private stopped = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  push(text: string): StopMatch {
    if (this.stopped) return { emit: '', stopped: true };
    const buffer = this.held + text;
    let first = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    if (first >= 0) {
      this.stopped = true;
      this.held = '';
      return { emit: buffer.slice(0, first), stopped: true };
    }
    const holdChars = this.longestStopPrefixSuffix(buffer);
    this.held = buffer.slice(buffer.length - holdChars);
    return { emit: buffer.slice(0, buffer.length - holdChars), stopped: false };
  }

  /** The held text (end of stream without a stop); '' after a stop. */
  flush(): string {
    const held = this.held;
    this.held = '';
    return held;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of a stop string. */
  private longestStopPrefixSuffix(text: string): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, text.length); k > best; k--) {
        if (text.endsWith(stop.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
