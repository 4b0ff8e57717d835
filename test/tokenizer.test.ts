// Tests of src/engine/tokenizer.ts on the official SpikingBrain-7B tokenizer files (Qwen2 vocabulary),
// loaded as they are. Known ids are cross-checked by an independent byte-level decode written here
// from vocab.json and GPT-2's byte alphabet.

import { mkdtemp, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QWEN2_SPLIT_REGEX, TextTokenizer, splitAtSafeBoundaries } from '../src/engine/tokenizer.ts';

const SPEC_DIR = resolve(import.meta.dirname, 'fixtures/spikingbrain-7b');

let tok: TextTokenizer;
let vocabById: Map<number, string>;

/** GPT-2 bytes_to_unicode, inverted: char → byte. */
function byteAlphabet(): Map<string, number> {
  const bytes: number[] = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + n++);
    }
  }
  return new Map(bytes.map((b, i) => [String.fromCodePoint(chars[i] as number), b]));
}

/** Independent decode: vocab.json strings → bytes → UTF-8. */
function referenceDecode(ids: readonly number[]): string {
  const alphabet = byteAlphabet();
  const out: number[] = [];
  for (const id of ids) {
    const token = vocabById.get(id);
    if (token === undefined) throw new Error(`id ${id} not in vocab.json`);
    for (const ch of token) out.push(alphabet.get(ch) as number);
  }
  return new TextDecoder().decode(Uint8Array.from(out));
}

beforeAll(async () => {
  tok = await TextTokenizer.load(SPEC_DIR);
  const vocab = JSON.parse(await readFile(join(SPEC_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
  vocabById = new Map(Object.entries(vocab).map(([s, id]) => [id, s]));
});

describe('TextTokenizer on the official SpikingBrain-7B files', () => {
  it('knows its vocabulary, special tokens and eos', () => {
    expect(tok.vocabSize).toBe(151665); // 151643 BPE tokens + 22 added tokens
    expect(tok.eosTokenId).toBe(151643);
    expect(tok.eosTokenIds).toEqual([151643]);
    expect(tok.tokenToId('<|endoftext|>')).toBe(151643);
    expect(tok.tokenToId('<|im_start|>')).toBe(151644);
    expect(tok.tokenToId('<|im_end|>')).toBe(151645);
    expect(tok.idToToken(151645)).toBe('<|im_end|>');
    expect(tok.isSpecial(151644)).toBe(true);
    expect(tok.isSpecial(151657)).toBe(false); // <tool_call> is added but not special
    expect(tok.specialTokenIds.size).toBe(14); // 151643..151656
    expect(tok.idToToken(152000)).toBeNull(); // padded model rows have no token
    expect(tok.piecewiseEncoding).toBe(true);
  });

  const known: [string, number[]][] = [
    ['Hello world', [9707, 1879]],
    ['<|im_start|>user\nhi<|im_end|>\n', [151644, 872, 198, 6023, 151645, 198]],
    ['你好，世界', [108386, 3837, 99489]],
    ['The quick brown fox.\n  def f(x):\n\treturn 42', [785, 3974, 13876, 38835, 624, 220, 707, 282, 2075, 982, 853, 220, 19, 17]],
    ['🤗👨‍👩‍👧', [144834, 145367, 378, 235, 145233, 378, 235, 145665]],
  ];
  for (const [text, ids] of known) {
    it(`encodes ${JSON.stringify(text)} to the known ids`, async () => {
      expect(await tok.encode(text)).toEqual(ids);
      // Independent cross-check: BPE runs decoded from vocab.json, added tokens spelled out.
      let spelled = '';
      let run: number[] = [];
      for (const id of [...ids, -1]) {
        if (id >= 0 && id < 151643) {
          run.push(id);
          continue;
        }
        spelled += referenceDecode(run);
        run = [];
        if (id >= 0) spelled += tok.idToToken(id) as string;
      }
      expect(spelled).toBe(text);
      expect(tok.decode(ids)).toBe(text);
    });
  }

  it('decode(encode(x)) == x on unicode text (emoji, ZWJ, CJK, combining marks, RTL, astral)', async () => {
    const text =
      'Hello, 世界! 🤗👨‍👩‍👧 🇯🇵 café naïve q̃ x̧̌ अनुच्छेद עברית العربية 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 한국어 ひらがな\t\r\n  end  ';
    expect(text.normalize('NFC')).toBe(text); // the tokenizer NFC-normalises (as transformers' Qwen2)
    const ids = await tok.encode(text);
    expect(tok.decode(ids)).toBe(text);
    expect(referenceDecode(ids)).toBe(text);
  });

  it('normalises to NFC like the reference Qwen2 tokenizer', async () => {
    expect(await tok.encode('cafe\u0301')).toEqual(await tok.encode('caf\u00e9'));
  });

  it('recognises special tokens in text and skips them on request', async () => {
    const ids = await tok.encode('<|im_start|>system\nBe brief.<|im_end|><tool_call>');
    expect(ids[0]).toBe(151644);
    expect(ids).toContain(151645);
    expect(ids[ids.length - 1]).toBe(151657);
    expect(tok.decode(ids, { skipSpecialTokens: false })).toBe('<|im_start|>system\nBe brief.<|im_end|><tool_call>');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('system\nBe brief.<tool_call>');
  });

  it('tokenBytes gives the raw bytes, including partial UTF-8 characters', async () => {
    const text = '👨‍👩‍👧 你好 é';
    const ids = await tok.encode(text);
    const joined = ids.flatMap((id) => Array.from(tok.tokenBytes(id)));
    expect(joined).toEqual(Array.from(new TextEncoder().encode(text)));
    // The zero-width joiner (3 bytes) is split over two tokens: neither is valid UTF-8 alone.
    expect(ids.some((id) => new TextDecoder().decode(tok.tokenBytes(id)).includes('\ufffd'))).toBe(true);
    expect(Array.from(tok.tokenBytes(151645))).toEqual(Array.from(new TextEncoder().encode('<|im_end|>')));
    expect(tok.tokenBytes(152000).length).toBe(0);
  });
});

describe('piecewise encoding of long text', () => {
  // Text that stresses every place where a piece boundary could change the ids.
  const parts = [
    'Plain prose line.\n',
    'trailing spaces   \nNext',
    ' line\r\nWindows line\r\n\r\n',
    '!!!\n???\n',
    "it's\n's not a contraction start\n",
    '  \n\t\n  indented\n',
    '123\n456\n',
    '中文\n日本語\n',
    '<|im_start|>user\n<|im_end|>\n',
    'x\u0085y\n',
    '🤗\n🤗\n',
    'é\n\u0301combining after newline\n',
    '\n\n\n\nmany newlines then text\n',
    '    def f():\n        return 1\n',
  ];
  let text = '';
  for (let i = 0; text.length < 30000; i++) text += (parts[i % parts.length] as string) + (i % 7 === 0 ? ' ' : '');

  it('cuts only after a line break followed by a visible character', () => {
    const pieces = splitAtSafeBoundaries(text, 64);
    expect(pieces.length).toBeGreaterThan(100);
    expect(pieces.join('')).toBe(text);
    for (let i = 1; i < pieces.length; i++) {
      expect((pieces[i - 1] as string).slice(-1)).toMatch(/[\r\n]/);
      expect((pieces[i] as string).charAt(0)).toMatch(/[\p{L}\p{N}\p{P}\p{S}]/u);
    }
  });

  it('gives the same ids as encoding the whole text', async () => {
    const pieced = await TextTokenizer.load(SPEC_DIR, { encodePieceChars: 64 });
    const whole = await TextTokenizer.load(SPEC_DIR, { encodePieceChars: Infinity });
    expect(pieced.piecewiseEncoding).toBe(true);
    expect(whole.piecewiseEncoding).toBe(false);
    const ids = await pieced.encode(text);
    expect(ids).toEqual(await whole.encode(text));
    expect(pieced.decode(ids)).toBe(text.normalize('NFC'));
  });
});

describe('tokenizer.json checkpoints', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'spikeserve-tok-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads a Hugging Face tokenizer.json and agrees with the vocab.json + merges.txt build', async () => {
    const vocab = JSON.parse(await readFile(join(SPEC_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
    const merges = (await readFile(join(SPEC_DIR, 'merges.txt'), 'utf8'))
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('#'));
    const config = JSON.parse(await readFile(join(SPEC_DIR, 'tokenizer_config.json'), 'utf8')) as {
      added_tokens_decoder: Record<string, Record<string, unknown>>;
    };
    const added = Object.entries(config.added_tokens_decoder).map(([id, t]) => ({ id: Number(id), ...t }));
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
    const json = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: { type: 'NFC' },
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [{ type: 'Split', pattern: { Regex: QWEN2_SPLIT_REGEX }, behavior: 'Isolated', invert: false }, byteLevel],
      },
      post_processor: byteLevel,
      decoder: byteLevel,
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
    };
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
    await copyFile(join(SPEC_DIR, 'tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
    const fromJson = await TextTokenizer.load(dir);
    const text = '<|im_start|>user\nNaïve 🤗 caf\u00e9 — 12345 tokens?\n<|im_end|>';
    expect(await fromJson.encode(text)).toEqual(await tok.encode(text));
    expect(fromJson.vocabSize).toBe(tok.vocabSize);
    expect(fromJson.eosTokenId).toBe(151643);
    expect(fromJson.piecewiseEncoding).toBe(true);
  });

  it('refuses a directory without tokenizer files', async () => {
    await expect(TextTokenizer.load(join(dir, 'missing'))).rejects.toThrow(/neither tokenizer.json/);
  });
});
