// The HTTP thread's encode (TextTokenizer.encodeToInt32): text of 64 K chars or more is encoded by the
// tokenizer worker and comes back as a transferred Int32Array. Its ids must equal the in-thread
// encode's, for special tokens, unicode and both addSpecialTokens settings, on the official Qwen2
// tokenizer (piecewise) and the default tiny model's tokenizer.json (whole text); concurrent encodes
// must each get their own ids; and the engine must take an Int32Array prompt as it takes a number[].
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { OffThreadEncoder } from '../src/engine/off-thread-encoder.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import type { SubmitRequest } from '../src/engine/types.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';
import { greedy } from './helpers/sampling.ts';

const QWEN2_DIR = resolve(import.meta.dirname, 'fixtures/spikingbrain-7b');
const TINY_DIR = resolve(import.meta.dirname, '../models/spikingbrain-tiny');

const SNIPPETS = [
  '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello, 世界! 🤗👨‍👩‍👧 🇯🇵<|im_end|><tool_call>',
  'café naïve q̃ x̧̌ अनुच्छेद עברית العربية 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 한국어 ひらがな\t\r\n  end  ',
  'The quick brown fox.\n  def f(x):\n\treturn 42\n\n12345678901234567890 <|endoftext|>',
  'cafe\u0301 and caf\u00e9\r\nUPPER lower MiXeD\n',
];

/** ≥ `chars` of text built from the snippets in a seed-dependent order (long enough to go off-thread). */
function longText(chars: number, seed: number): string {
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < chars; i++) {
    const s = SNIPPETS[(seed * 7 + i * 3) % SNIPPETS.length] as string;
    const part = `${s} ${seed}:${i}\n`;
    parts.push(part);
    length += part.length;
  }
  return parts.join('');
}

for (const [name, dir] of [['official Qwen2 tokenizer', QWEN2_DIR], ['default tiny model tokenizer.json', TINY_DIR]] as const) {
  describe(`encodeToInt32 off the HTTP thread: ${name}`, () => {
    let tok: TextTokenizer;
    beforeAll(async () => {
      // Small pieces, so the worker's piecewise path (when the tokenizer allows it) has many pieces.
      tok = await TextTokenizer.load(dir, { encodePieceChars: 4096 });
    });
    afterAll(async () => {
      await tok.close();
    });

    it('gives the in-thread ids, as an Int32Array, with special tokens and unicode', async () => {
      const text = longText(100_000, 1);
      for (const addSpecialTokens of [true, false]) {
        const expected = await tok.encode(text, { addSpecialTokens });
        const ids = await tok.encodeToInt32(text, { addSpecialTokens });
        expect(ids).toBeInstanceOf(Int32Array);
        expect(Array.from(ids)).toEqual(expected);
      }
      const ids = Array.from(await tok.encodeToInt32(text));
      for (const special of ['<|im_start|>', '<|im_end|>']) {
        const id = tok.tokenToId(special);
        if (id !== null) expect(ids).toContain(id);
      }
      expect([text, text.normalize('NFC')]).toContain(tok.decode(ids)); // the Qwen2 tokenizer normalises to NFC
    });

    it('short text (the in-thread path) gives the same ids too', async () => {
      for (const s of SNIPPETS) expect(Array.from(await tok.encodeToInt32(s))).toEqual(await tok.encode(s));
    });

    it('encodes a multi-megabyte prompt', async () => {
      const text = longText(3_000_000, 2);
      const ids = await tok.encodeToInt32(text, { addSpecialTokens: false });
      expect(ids).toBeInstanceOf(Int32Array);
      expect(ids.length).toBeGreaterThan(500_000);
      expect(Array.from(ids)).toEqual(await tok.encode(text, { addSpecialTokens: false }));
    });

    it('concurrent encodes each get their own ids', async () => {
      const texts = [0, 1, 2, 3, 4, 5].map((seed) => longText(70_000 + seed * 9_000, seed + 10));
      const expected = await Promise.all(texts.map((t) => tok.encode(t)));
      const got = await Promise.all(texts.map((t) => tok.encodeToInt32(t)));
      got.forEach((ids, i) => expect(Array.from(ids)).toEqual(expected[i]));
      expect(new Set(got.map((ids) => ids.length)).size).toBe(texts.length); // distinct answers
    });

    it('starts a fresh worker after close()', async () => {
      const text = longText(80_000, 3);
      await tok.close();
      expect(Array.from(await tok.encodeToInt32(text))).toEqual(await tok.encode(text));
    });
  });
}

describe('Engine.generate with an Int32Array prompt', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-offthread-'));
  let engine: Engine;
  beforeAll(async () => {
    const ckpt = makeRandomTinyCheckpoint(join(tmp, 'ckpt'), { numLayers: 2, slidingWindow: 8, vocabSize: 64, seed: 5 });
    engine = await Engine.start({ modelDir: ckpt.dir, cacheDir: join(tmp, 'built'), intraOpThreads: 1 });
  });
  afterAll(async () => {
    await engine.shutdown();
    rmSync(tmp, { recursive: true, force: true });
  });

  async function tokens(req: SubmitRequest): Promise<{ ids: number[]; promptTokens: number }> {
    const ids: number[] = [];
    for await (const e of engine.generate(req)) {
      if (e.type === 'token') ids.push(e.tokenId);
      if (e.type === 'done') return { ids, promptTokens: e.promptTokens };
    }
    throw new Error('no done event');
  }

  it('generates what the same number[] prompt generates, and leaves the caller its ids', async () => {
    const prompt = Array.from({ length: 40 }, (_, i) => (i * 13 + 7) % 64);
    const asArray = await tokens({ requestId: 'arr', promptTokenIds: prompt, sampling: greedy(8), reportProgress: false });
    const typed = Int32Array.from(prompt);
    const asTyped = await tokens({ requestId: 'typed', promptTokenIds: typed, sampling: greedy(8), reportProgress: false });
    expect(asTyped).toEqual(asArray);
    expect(asTyped.promptTokens).toBe(40);
    expect(Array.from(typed)).toEqual(prompt); // copied to the worker, not transferred away
  });
});

describe('the tokenizer worker when idle', () => {
  it('stops after its idle time and starts again for the next long text, with the same ids', async () => {
    const tok = await TextTokenizer.load(TINY_DIR);
    const encoder = new OffThreadEncoder({ dir: TINY_DIR, options: {} }, 100);
    try {
      const text = longText(70_000, 5);
      const expected = await tok.encode(text);
      expect(Array.from(await encoder.encode(text))).toEqual(expected);
      expect(encoder.running).toBe(true);
      for (let i = 0; i < 200 && encoder.running; i++) await new Promise((r) => setTimeout(r, 50));
      expect(encoder.running).toBe(false);
      expect(Array.from(await encoder.encode(text))).toEqual(expected);
      expect(encoder.running).toBe(true);
    } finally {
      await encoder.close();
      await tok.close();
    }
    expect(encoder.running).toBe(false);
  });
});
