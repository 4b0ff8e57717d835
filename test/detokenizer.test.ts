// Tests of src/engine/detokenizer.ts: streaming detokenization on the official SpikingBrain-7B
// tokenizer (UTF-8 characters split across tokens) and stop-string matching across piece boundaries,
// each against the one-shot reference (full decode / first indexOf of a stop string).

import { resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { IncrementalDetokenizer, StopStringMatcher } from '../src/engine/detokenizer.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';

const SPEC_DIR = resolve(import.meta.dirname, 'fixtures/spikingbrain-7b');
let tok: TextTokenizer;

beforeAll(async () => {
  tok = await TextTokenizer.load(SPEC_DIR);
});

/** Small deterministic PRNG for the randomised cases (independent of the code under test). */
function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

describe('IncrementalDetokenizer', () => {
  it('emits nothing until a split UTF-8 character is complete, then exactly the text', async () => {
    const text = '家族: 👨‍👩‍👧 and 🦀 — 漢字かな交じり文';
    const ids = await tok.encode(text);
    const detok = new IncrementalDetokenizer(tok, { skipSpecialTokens: false });
    const pieces = ids.map((id) => detok.push(id));
    expect(pieces.join('') + detok.flush()).toBe(text);
    for (const piece of pieces) expect(piece).not.toContain('\ufffd');
    // Token 378 is the first two bytes (e2 80) of the zero-width joiner: it completes no character.
    expect(Array.from(tok.tokenBytes(378))).toEqual([0xe2, 0x80]);
    const zwj = ids.indexOf(378);
    expect(zwj).toBeGreaterThanOrEqual(0);
    expect(pieces[zwj]).toBe('');
    expect(pieces[zwj + 1]).toBe('\u200d');
  });

  it('streams exactly decode(all ids) for random token sequences, invalid UTF-8 included', () => {
    const rand = lcg(7);
    for (let trial = 0; trial < 50; trial++) {
      const ids = Array.from({ length: 40 }, () => Math.floor(rand() * tok.vocabSize));
      for (const skipSpecialTokens of [false, true]) {
        const detok = new IncrementalDetokenizer(tok, { skipSpecialTokens });
        let streamed = '';
        for (const id of ids) streamed += detok.push(id);
        streamed += detok.flush();
        expect(streamed).toBe(tok.decode(ids, { skipSpecialTokens }));
      }
    }
  });

  it('skips special tokens when asked, keeps non-special added tokens', () => {
    const ids = [151644, 9707, 151657, 151645]; // <|im_start|> Hello <tool_call> <|im_end|>
    const skip = new IncrementalDetokenizer(tok, { skipSpecialTokens: true });
    expect(ids.map((id) => skip.push(id)).join('')).toBe('Hello<tool_call>');
    const keep = new IncrementalDetokenizer(tok, { skipSpecialTokens: false });
    expect(ids.map((id) => keep.push(id)).join('')).toBe('<|im_start|>Hello<tool_call><|im_end|>');
  });

  it('turns a trailing incomplete character into U+FFFD on flush', () => {
    const zwjFirstHalf = 378; // bytes e2 80 of U+200D
    const detok = new IncrementalDetokenizer(tok, { skipSpecialTokens: false });
    expect(detok.push(9707)).toBe('Hello');
    expect(detok.push(zwjFirstHalf)).toBe('');
    expect(detok.flush()).toBe('\ufffd');
  });
});

describe('StopStringMatcher', () => {
  it('catches a stop string split across pieces and never streams any of it', () => {
    const m = new StopStringMatcher(['###', 'END']);
    expect(m.push('ab#')).toEqual({ emit: 'ab', stopped: false });
    expect(m.push('#')).toEqual({ emit: '', stopped: false });
    expect(m.push('#cd')).toEqual({ emit: '', stopped: true });
    expect(m.push('more')).toEqual({ emit: '', stopped: true });
    expect(m.flush()).toBe('');
  });

  it('releases held text once it can no longer start a stop string', () => {
    const m = new StopStringMatcher(['END']);
    expect(m.push('x E')).toEqual({ emit: 'x ', stopped: false });
    expect(m.push('N')).toEqual({ emit: '', stopped: false });
    expect(m.push('x')).toEqual({ emit: 'ENx', stopped: false });
    expect(m.push('EN')).toEqual({ emit: '', stopped: false });
    expect(m.flush()).toBe('EN');
  });

  it('stops at the earliest stop string inside one piece', () => {
    const m = new StopStringMatcher(['world', 'lo w']);
    expect(m.push('hello world')).toEqual({ emit: 'hel', stopped: true });
  });

  it('streamed text equals the text before the first stop, for random splits', () => {
    const rand = lcg(3);
    const stops = ['</answer>', '\n\nUser:', '🛑', 'aaab'];
    const texts = [
      'The answer is 42.</answer> trailing',
      'no stop here, only < and </ans and \n\nUse',
      'emoji 🛑 stop',
      'aaaaaab overlapping prefixes',
      'line\n\nUser: next turn',
    ];
    for (const text of texts) {
      const firsts = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
      const expected = firsts.length > 0 ? text.slice(0, Math.min(...firsts)) : text;
      for (let trial = 0; trial < 100; trial++) {
        const m = new StopStringMatcher(stops);
        let streamed = '';
        let stopped = false;
        let at = 0;
        while (at < text.length && !stopped) {
          let end = Math.min(text.length, at + 1 + Math.floor(rand() * 6));
          if (/[\udc00-\udfff]/.test(text.charAt(end))) end++; // pieces are whole characters
          const r = m.push(text.slice(at, end));
          streamed += r.emit;
          stopped = r.stopped;
          at = end;
        }
        if (!stopped) streamed += m.flush();
        expect(stopped).toBe(firsts.length > 0);
        expect(streamed).toBe(expected);
      }
    }
  });
});
