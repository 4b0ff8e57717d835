// Routes through app.inject() against the real Engine on a small model: chat and completions
// (stream and not), SSE framing, usage, n, stop strings, logprobs, tokenize/detokenize, models,
// health, version, metrics, request ids.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => server?.close());

function sseData(body: string): unknown[] {
  const out: unknown[] = [];
  for (const frame of body.split('\n\n')) {
    if (!frame.startsWith('data: ')) continue;
    const data = frame.slice(6);
    out.push(data === '[DONE]' ? '[DONE]' : JSON.parse(data));
  }
  return out;
}

describe('chat completions', () => {
  it('answers a non-streamed chat request', async () => {
    const res = await server.app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: { model: server.config.servedModelName, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0 },
    });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.object).toBe('chat.completion');
    expect(body.choices).toHaveLength(1);
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
    expect(res.headers['x-request-id']).toBeTruthy();
  });

  it('streams SSE chunks with role first, finish_reason, usage and [DONE]', async () => {
    const res = await server.app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/event-stream/);
    const events = sseData(res.body);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1) as { id: string; created: number; choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[]; usage: unknown }[];
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
    const usageChunk = chunks.at(-1);
    expect(usageChunk?.choices).toEqual([]);
    expect(usageChunk?.usage).toMatchObject({ completion_tokens: 6 });
    await waitEngineIdle(server.engine);
  });
});
