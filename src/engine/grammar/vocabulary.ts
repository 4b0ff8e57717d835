// The served model's vocabulary as XGrammar's TokenizerInfo reads it. XGrammar matches grammars
// against the bytes each token stands for; it takes them as "byte-level" strings (GPT-2's
// bytes_to_unicode alphabet) and decodes them back. We write every token that way from its bytes
// (TextTokenizer.tokenBytes), whatever the tokenizer's own format: byte-level BPE tokens come out as
// they are in the vocabulary, added tokens (stored as plain text) and SentencePiece tokens (`▁`, byte
// fallback `<0xAB>`) get their true bytes too.
//
// Special tokens (`<|im_end|>`, …) and ids with no text are written as "", which XGrammar treats as
// never part of the text: a grammar cannot be satisfied by a special token that spells `<|im_end|>`.
// Stop tokens are handed over separately (TokenizerInfo's stop list, and per matcher). The model's
// logits may be wider than the tokenizer (padded vocab): the ids past it are "" too.
import type { TextTokenizer } from '../tokenizer.ts';

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 map to U+0100 onwards. */
const CHAR_OF_BYTE: readonly string[] = (() => {
  const chars: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars.push(String.fromCodePoint(printable ? b : next++));
  }
  return chars;
})();

/** Bytes → their byte-level string. */
export function byteLevelString(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) out += CHAR_OF_BYTE[b];
  return out;
}

export type VocabularySource = Pick<TextTokenizer, 'vocabSize' | 'tokenBytes' | 'isSpecial'>;

/** One byte-level string per id in [0, modelVocabSize): "" for special tokens, stop ids and ids without text. */
export function encodedVocabulary(tokenizer: VocabularySource, modelVocabSize: number, stopTokenIds: readonly number[]): string[] {
  const stops = new Set(stopTokenIds);
  const vocab: string[] = [];
  for (let id = 0; id < modelVocabSize; id++) {
    if (id >= tokenizer.vocabSize || stops.has(id) || tokenizer.isSpecial(id)) vocab.push('');
    else vocab.push(byteLevelString(tokenizer.tokenBytes(id)));
  }
  return vocab;
}
