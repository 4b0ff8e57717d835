// Qwen3.5's tokenizer: its pre-tokenizer keeps letters with their combining marks (\p{M}) in one piece
// (transformers models/qwen3_5/tokenization_qwen3_5.py). A checkpoint that ships only vocab.json +
// merges.txt with tokenizer_class Qwen3_5Tokenizer is built with that regex, equal to a tokenizer.json
// written with it, different from the Qwen2 build where marks split, and long text is still encoded
// in pieces (the regex has Qwen2's newline structure).
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QWEN2_SPLIT_REGEX, QWEN3_5_SPLIT_REGEX, TextTokenizer } from '../src/engine/tokenizer.ts';

const SPEC_DIR = resolve(import.meta.dirname, 'fixtures/spikingbrain-7b');
// Thai: a consonant followed by tone marks (\p{M}) that NFC does not compose; Devanagari with a virama.
const TEXT = 'ก่อนหน้านี้ नमस्ते\nสวัสดี ครับ café 12345';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spikeserve-q35-tok-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function vocabMergesDir(name: string, tokenizerClass: string): Promise<string> {
  const d = join(dir, name);
  await mkdir(d, { recursive: true });
  await copyFile(join(SPEC_DIR, 'vocab.json'), join(d, 'vocab.json'));
  await copyFile(join(SPEC_DIR, 'merges.txt'), join(d, 'merges.txt'));
  const config = JSON.parse(await readFile(join(SPEC_DIR, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(d, 'tokenizer_config.json'), JSON.stringify({ ...config, tokenizer_class: tokenizerClass }));
  return d;
}

describe('Qwen3.5 pre-tokenizer', () => {
  it('vocab.json + merges.txt with Qwen3_5Tokenizer equals a tokenizer.json with its regex, not the Qwen2 build', async () => {
    const q35 = await TextTokenizer.load(await vocabMergesDir('q35', 'Qwen3_5Tokenizer'));
    const q2 = await TextTokenizer.load(await vocabMergesDir('q2', 'Qwen2Tokenizer'));
    const d = join(dir, 'json');
    await mkdir(d, { recursive: true });
    const vocab = JSON.parse(await readFile(join(SPEC_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
    const merges = (await readFile(join(SPEC_DIR, 'merges.txt'), 'utf8')).split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
    const pretokenizer = (regex: string) => ({ type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }, byteLevel] });
    await writeFile(join(d, 'tokenizer.json'), JSON.stringify({
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: { type: 'NFC' }, pre_tokenizer: pretokenizer(QWEN3_5_SPLIT_REGEX),
      post_processor: byteLevel, decoder: byteLevel,
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
    }));
    const fromJson = await TextTokenizer.load(d);
    const ids = await q35.encode(TEXT, { addSpecialTokens: false });
    expect(await fromJson.encode(TEXT, { addSpecialTokens: false })).toEqual(ids);
    expect(await q2.encode(TEXT, { addSpecialTokens: false })).not.toEqual(ids);
    expect(q35.decode(ids, { skipSpecialTokens: false })).toBe(TEXT);
    expect(QWEN3_5_SPLIT_REGEX).not.toBe(QWEN2_SPLIT_REGEX);
    // Long text is split at safe line breaks with this regex too, and still encodes to the same ids.
    expect(fromJson.piecewiseEncoding).toBe(true);
  });
});
