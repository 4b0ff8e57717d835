// Prefix keys: names of token prefixes, so that a request finds the snapshots of its own prefixes.
//
// Whole pages form a hash chain over the token ids (P = page size in tokens):
//   key_0 = "" (the empty prefix), key_{i+1} = sha256(key_i ‖ tokens[i·P, (i+1)·P))
// so the first (i+1)·P tokens of two prompts have the same key iff they are the same tokens.
// A prefix of s tokens that is not a whole number of pages (an "exact" snapshot at the end of a request)
// is named from the key of its whole pages q = ⌊s/P⌋ and its tail tokens [q·P, s):
//   exact(s) = sha256(key_q ‖ "+" ‖ tail)
//
// Hashing a 4M-token prompt is ~65K sha256 calls (tens of ms): PrefixKeyer hashes it a bounded number
// of pages at a time, so the step loop can interleave it with steps.
import { createHash } from 'node:crypto';

/** The key of the first pages·P tokens given the key of the pages before it: one link of the chain. */
function chainKey(prev: string, page: Int32Array): string {
  return createHash('sha256').update(prev).update(new Uint8Array(page.buffer, page.byteOffset, page.byteLength)).digest('base64');
}

/** Key of a prefix whose whole pages have key `baseKey` ("" for none) and whose remaining tokens are `tail` (1 ≤ length < P). */
export function exactKey(baseKey: string, tail: ArrayLike<number>): string {
  return createHash('sha256').update(baseKey).update('+').update(new Uint8Array(Int32Array.from(tail).buffer)).digest('base64');
}

/**
 * Computes the whole-page keys of a token sequence incrementally. keys[i] names the first (i+1)·P
 * tokens; only pages that leave at least one token after them get a key (a resumed request must compute
 * ≥ 1 token to get logits): i+1 ≤ ⌊(n−1)/P⌋ for n tokens. With `allPages` every whole page does,
 * i+1 ≤ ⌊n/P⌋ (a warm-up, which computes the prompt and samples nothing).
 */
export class PrefixKeyer {
  readonly keys: string[] = [];
  private readonly page: Int32Array;

  constructor(
    private readonly tokens: ArrayLike<number>,
    readonly pageTokens: number,
    private readonly allPages = false,
  ) {
    this.page = new Int32Array(pageTokens);
  }

  /** Pages that get a key. */
  get numPages(): number {
    return Math.max(0, Math.floor((this.tokens.length - (this.allPages ? 0 : 1)) / this.pageTokens));
  }

  get done(): boolean {
    return this.keys.length >= this.numPages;
  }

  /** Hashes up to `maxPages` more pages; returns whether every key is computed. */
  advance(maxPages = Infinity): boolean {
    const P = this.pageTokens;
    const end = Math.min(this.numPages, this.keys.length + maxPages);
    let prev = this.keys[this.keys.length - 1] ?? '';
    for (let i = this.keys.length; i < end; i++) {
      for (let j = 0; j < P; j++) this.page[j] = this.tokens[i * P + j] ?? 0;
      prev = chainKey(prev, this.page);
      this.keys.push(prev);
    }
    return this.done;
  }
}

/** Every whole-page key of `tokenIds` at once (tests, small prompts); `allPages` as PrefixKeyer. */
export function prefixKeys(tokenIds: ArrayLike<number>, pageTokens: number, allPages = false): string[] {
  const keyer = new PrefixKeyer(tokenIds, pageTokens, allPages);
  keyer.advance();
  return keyer.keys;
}

/**
 * The whole-page key of the first `numPages` pages of a token sequence (`tokenAt(i)` = its i-th token),
 * continuing the chain from `fromKey`, the key of its first `fromPages` pages (e.g. a prompt's last page
 * key, to name prompt + completion without hashing the prompt again).
 */
export function extendKey(fromKey: string, fromPages: number, tokenAt: (i: number) => number, numPages: number, pageTokens: number): string {
  const page = new Int32Array(pageTokens);
  let key = fromKey;
  for (let i = fromPages; i < numPages; i++) {
    for (let j = 0; j < pageTokens; j++) page[j] = tokenAt(i * pageTokens + j);
    key = chainKey(key, page);
  }
  return key;
}
