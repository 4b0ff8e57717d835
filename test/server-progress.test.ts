// Prefill progress on the wire, read through the official openai client as a llama.cpp client reads
// it: llama.cpp's `return_progress` chunks (an ordinary chunk of choice 0 with a top-level
// `prompt_progress: {total, cache, processed, time_ms}`), and our `prefill.progress` objects with
// their ETA; plus PrefillEta's arithmetic on synthetic reports.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrefillEta } from '../src/server/prefill-eta.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

describe('PrefillEta', () => {
  it('has no ETA before a rate is seen, then (total − processed) over the rate since the first report', () => {
    const eta = new PrefillEta();
    expect(eta.observe(100, 1000, 1.0)).toBeNull(); // first report: no rate yet
    expect(eta.observe(100, 1000, 1.5)).toBeNull(); // nothing computed since
    expect(eta.observe(300, 1000, 2.0)).toBeCloseTo(700 / 200, 12); // 200 tokens in 1 s
    expect(eta.observe(1000, 1000, 3.0)).toBe(0);
  });

  it('does not count tokens restored from a snapshot, nor the wait before the first report, as speed', () => {
    const eta = new PrefillEta();
    // 5,000 tokens restored at once and 100 computed, reported 30 s after submission (queued).
    expect(eta.observe(5100, 10_000, 30)).toBeNull();
    expect(eta.observe(5300, 10_000, 30.5)).toBeCloseTo(4700 / 400, 12); // 200 tokens in 0.5 s
  });
});

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

describe('prefill progress through the openai client', () => {
  let server: TestServer;
  let client: OpenAI;

  beforeAll(async () => {
    // Small prefill chunks: a long prompt takes many steps, so it spans several 250 ms reports.
    server = await startTestServer({ engine: { prefillChunkTokens: 64, maxBatchedTokens: 128, maxModelLen: 1 << 20 } });
    client = new OpenAI({ baseURL: `${await server.listen()}/v1`, apiKey: 'none', maxRetries: 0 });
  });
  afterAll(async () => server?.close());

  /** Every object of a stream, as the client yields them. */
  async function collect(stream: AsyncIterable<unknown>): Promise<Json[]> {
    const out: Json[] = [];
    for await (const chunk of stream) out.push(chunk as Json);
    return out;
  }

  /** A token prompt long enough to give at least `reports` progress reports (it grows until it does). */
  async function streamWithReports(body: Json, reports: number): Promise<{ prompt: number[]; chunks: Json[] }> {
    const V = server.engine.config.vocabSize;
    for (const length of [6000, 24_000, 96_000]) {
      const prompt = Array.from({ length }, (_, i) => 3 + ((i * 7919) % (V - 3)));
      const chunks = await collect(await client.completions.create({ model: server.config.servedModelName, prompt, max_tokens: 2, stream: true, ...body } as OpenAI.CompletionCreateParamsStreaming));
      if (chunks.filter((c) => c['prompt_progress'] !== undefined).length >= reports) return { prompt, chunks };
    }
    throw new Error(`no prompt gave ${reports} progress reports`);
  }

  it('completions: return_progress streams llama.cpp prompt_progress chunks, and prefill.progress carries an ETA', async () => {
    const { prompt, chunks } = await streamWithReports({ return_progress: true, stream_options: { include_progress: true } }, 3);
    const llama = chunks.filter((c) => c['prompt_progress'] !== undefined);
    const ours = chunks.filter((c) => c['object'] === 'prefill.progress');
    const firstText = chunks.findIndex((c) => c['object'] === 'text_completion' && c['prompt_progress'] === undefined);
    const lastProgress = chunks.findLastIndex((c) => c['prompt_progress'] !== undefined || c['object'] === 'prefill.progress');
    expect(firstText).toBeGreaterThan(lastProgress);
    expect(ours.length).toBe(llama.length); // one of each per report
    let last = { processed: 0, time_ms: 0 };
    for (const c of llama) {
      expect(c).toMatchObject({ id: chunks[firstText]?.['id'], object: 'text_completion', model: server.config.servedModelName });
      expect(c['choices']).toEqual([{ index: 0, text: '', logprobs: null, finish_reason: null }]);
      const p = c['prompt_progress'] as Json;
      expect(Object.keys(p)).toEqual(['total', 'cache', 'processed', 'time_ms']);
      for (const v of Object.values(p)) expect(Number.isInteger(v)).toBe(true);
      expect(p['total']).toBe(prompt.length);
      expect(p['cache']).toBeGreaterThanOrEqual(0);
      expect(p['processed']).toBeGreaterThan(Math.max(last.processed, p['cache'] as number));
      expect(p['processed']).toBeLessThan(prompt.length);
      expect(p['time_ms']).toBeGreaterThanOrEqual(last.time_ms);
      last = { processed: p['processed'] as number, time_ms: p['time_ms'] as number };
    }
    // The ETA: none at the first report; then (total − processed) / rate, the rate measured from the first report.
    const first = ours[0] as Json;
    expect(first['eta_seconds']).toBeNull();
    for (const o of ours.slice(1)) {
      const rate = (o['processed_tokens'] - first['processed_tokens']) / (o['elapsed_seconds'] - first['elapsed_seconds']);
      expect(o['eta_seconds']).toBeCloseTo((o['total_tokens'] - o['processed_tokens']) / rate, 6);
      expect(o['eta_seconds']).toBeGreaterThan(0);
    }
    await waitEngineIdle(server.engine);
  });

  it('chat: the progress chunk is an empty assistant delta, as llama-server sends it; nothing else asked, nothing else sent', async () => {
    const text = Array.from({ length: 400 }, (_, i) => `Verse ${i}: and the evening and the morning were the day.`).join(' ');
    const stream = await client.chat.completions.create({
      model: server.config.servedModelName,
      messages: [{ role: 'user', content: text }],
      max_tokens: 2,
      stream: true,
      return_progress: true,
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const chunks = await collect(stream);
    const llama = chunks.filter((c) => c['prompt_progress'] !== undefined);
    expect(llama.length).toBeGreaterThan(0);
    for (const c of llama) {
      expect(c['object']).toBe('chat.completion.chunk');
      expect(c['choices']).toEqual([{ index: 0, delta: { role: 'assistant', content: null }, logprobs: null, finish_reason: null }]);
    }
    expect(chunks.some((c) => c['object'] === 'prefill.progress')).toBe(false);
    expect(chunks.at(-1)?.['choices'][0]?.finish_reason).toBe('length');
    await waitEngineIdle(server.engine);
  });

  it('return_progress without a stream is ignored, as llama-server ignores it', async () => {
    const reply = await client.chat.completions.create({
      model: server.config.servedModelName,
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 2,
      return_progress: true,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(reply.object).toBe('chat.completion');
    expect((reply as unknown as Json)['prompt_progress']).toBeUndefined();
  });
});
