// `n > 1` computes the prompt once: the other choices wait for the first one's prefill and resume from
// its snapshot a token before the prompt's end. The prefix-cache metrics (prompt tokens looked up vs
// resumed) show what was computed: one prompt, plus one token per other choice.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

const PROMPT_TOKENS = 65_536;
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ engine: { maxModelLen: 1 << 20 } });
});
afterAll(async () => server?.close());

function sample(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function scrape(): Promise<string> {
  return (await server.app.inject({ method: 'GET', url: '/metrics' })).body;
}

describe('n > 1', () => {
  it(`n = 4 on a ${PROMPT_TOKENS}-token prompt computes the prompt once`, async () => {
    const V = server.engine.config.vocabSize;
    const prompt = Array.from({ length: PROMPT_TOKENS }, (_, i) => 10 + ((i * 7919 + ((i * i) % 13)) % (V - 20)));
    const before = await scrape();
    const res = await server.app.inject({
      method: 'POST',
      url: '/v1/completions',
      payload: { prompt, n: 4, max_tokens: 4, temperature: 1, seed: 7, ignore_eos: true },
    });
    expect(res.statusCode).toBe(200);
    const body = res.json() as { choices: { index: number; text: string }[]; usage: { prompt_tokens: number; completion_tokens: number } };
    expect(body.choices).toHaveLength(4);
    expect(body.usage.completion_tokens).toBe(16);
    await waitEngineIdle(server.engine);
    const after = await scrape();
    const delta = (name: string): number => sample(after, name) - sample(before, name);
    const looked = delta('spikeserve:prefix_cache_queries_total');
    const resumed = delta('spikeserve:prefix_cache_hits_total');
    expect(looked).toBe(4 * PROMPT_TOKENS);
    // Choices 1–3 resumed all but the prompt's last token from choice 0's snapshot.
    expect(resumed).toBe(3 * (PROMPT_TOKENS - 1));
    expect(looked - resumed).toBe(PROMPT_TOKENS + 3); // computed: the prompt once, then a token per other choice
  });
});
