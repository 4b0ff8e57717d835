// Routes against the real Engine on a small model, mostly through app.inject(): chat and
// completions (stream and not), SSE framing, usage, n, stop strings, echo, tokenize/detokenize,
// models, health, version, metrics, request ids; then, on a listening server: keep-alive comments
// while a request waits, prefill progress events, and graceful drain (finish, or abort at deadline).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../src/engine/engine.ts';
import type { EnginePort } from '../src/server/ports.ts';
import { drainAndClose } from '../src/server/shutdown.ts';
import { buildTestApp, startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

const MAX_NUM_SEQS = 2;
let server: TestServer;
beforeAll(async () => {
  // Small prefill chunks make a long prompt take many steps (progress events); two sequences at a
  // time let a third request wait in the queue (keep-alive comments).
  server = await startTestServer({ engine: { maxNumSeqs: MAX_NUM_SEQS, prefillChunkTokens: 64, maxBatchedTokens: 128, maxModelLen: 1 << 20 } });
});
afterAll(async () => server?.close());

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function sseData(body: string): (Json | '[DONE]')[] {
  const out: (Json | '[DONE]')[] = [];
  for (const frame of body.split('\n\n')) {
    for (const line of frame.split('\n')) {
      if (!line.startsWith('data: ')) continue;
      const data = line.slice(6);
      out.push(data === '[DONE]' ? '[DONE]' : (JSON.parse(data) as Json));
    }
  }
  return out;
}

async function post(url: string, payload: Json, headers: Record<string, string> = {}): Promise<{ status: number; body: string; json: () => Json; headers: Record<string, unknown> }> {
  const res = await server.app.inject({ method: 'POST', url, payload, headers });
  return { status: res.statusCode, body: res.body, json: () => res.json() as Json, headers: res.headers };
}

const hi = [{ role: 'user', content: 'Hi' }];

describe('chat completions', () => {
  it('answers a non-streamed request', async () => {
    const res = await post('/v1/chat/completions', { model: server.config.servedModelName, messages: hi, max_tokens: 8, temperature: 0, ignore_eos: true });
    expect(res.status).toBe(200);
    const body = res.json();
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body.object).toBe('chat.completion');
    expect(body.choices).toHaveLength(1);
    expect(body.choices[0].message.role).toBe('assistant');
    expect(body.choices[0].finish_reason).toBe('length');
    expect(body.choices[0].logprobs).toBeNull();
    expect(body.usage).toMatchObject({ completion_tokens: 8, prompt_tokens_details: { cached_tokens: expect.any(Number) } });
  });

  it('streams chunks: role first, one id and created, finish_reason, usage chunk, [DONE]', async () => {
    const res = await post('/v1/chat/completions', { messages: hi, max_tokens: 6, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const events = sseData(res.body);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1) as Json[];
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(new Set(chunks.map((c) => c.created)).size).toBe(1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    expect(chunks[0]?.choices[0].delta).toEqual({ role: 'assistant', content: '' });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason)).toEqual(['length']);
    expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { completion_tokens: 6 } });
    const streamed = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    const whole = await post('/v1/chat/completions', { messages: hi, max_tokens: 6, temperature: 0, ignore_eos: true });
    expect(streamed).toBe(whole.json().choices[0].message.content);
  });

  it('streams n choices, each with its role chunk and finish_reason', async () => {
    const res = await post('/v1/chat/completions', { messages: hi, max_tokens: 4, n: 2, seed: 5, ignore_eos: true, stream: true });
    const chunks = sseData(res.body).slice(0, -1) as Json[];
    for (const index of [0, 1]) {
      const mine = chunks.filter((c) => c.choices[0].index === index);
      expect(mine[0]?.choices[0].delta.role).toBe('assistant');
      expect(mine.at(-1)?.choices[0].finish_reason).toBe('length');
    }
  });

  it('cuts the text at a stop string and finishes with "stop"', async () => {
    const base = { messages: hi, max_tokens: 24, temperature: 0, ignore_eos: true };
    const full = (await post('/v1/chat/completions', base)).json().choices[0].message.content as string;
    const chars = [...full];
    expect(chars.length).toBeGreaterThan(8);
    const stop = chars.slice(4, 6).join('');
    const res = (await post('/v1/chat/completions', { ...base, stop: [stop] })).json();
    expect(res.choices[0].finish_reason).toBe('stop');
    expect(res.choices[0].message.content).toBe(full.slice(0, full.indexOf(stop)));
    const streamed = sseData((await post('/v1/chat/completions', { ...base, stop, stream: true })).body).slice(0, -1) as Json[];
    expect(streamed.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe(full.slice(0, full.indexOf(stop)));
    await waitEngineIdle(server.engine);
    expect(server.engine.stats().numRunning).toBe(0);
  });
});

describe('completions', () => {
  it('echoes the prompt and streams text_completion chunks', async () => {
    const res = await post('/v1/completions', { prompt: 'abc', max_tokens: 3, temperature: 0, echo: true, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
    const chunks = sseData(res.body).slice(0, -1) as Json[];
    expect(chunks[0]?.object).toBe('text_completion');
    expect(chunks[0]?.choices[0].text).toBe('abc');
    const promptTokens = (await server.tokenizer.encode('abc')).length;
    expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { prompt_tokens: promptTokens, completion_tokens: 3 } });
    const whole = (await post('/v1/completions', { prompt: 'abc', max_tokens: 3, temperature: 0, echo: true, ignore_eos: true })).json();
    expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(whole.choices[0].text);
  });

  it('returns legacy logprobs with prompt tokens under echo, and token ids on request', async () => {
    const res = (await post('/v1/completions', { prompt: [97, 98, 99], max_tokens: 2, temperature: 0, echo: true, logprobs: 3, ignore_eos: true, return_tokens_as_token_ids: true })).json();
    const lp = res.choices[0].logprobs;
    expect(lp.tokens.slice(0, 3)).toEqual(['token_id:97', 'token_id:98', 'token_id:99']);
    expect(lp.tokens).toHaveLength(5);
    expect(lp.token_logprobs[0]).toBeNull();
    expect(lp.top_logprobs[0]).toBeNull();
    for (let i = 1; i < 5; i++) {
      expect(lp.token_logprobs[i]).toBeLessThanOrEqual(0);
      expect(Object.keys(lp.top_logprobs[i]).length).toBeGreaterThan(0);
      expect(lp.text_offset[i]).toBeGreaterThan(lp.text_offset[i - 1]);
    }
  });
});

describe('tokenize, detokenize, models, health, version, metrics, request ids', () => {
  it('tokenizes a prompt and chat messages, and detokenizes back', async () => {
    const t = (await post('/tokenize', { prompt: 'Hello world' })).json();
    expect(t.count).toBe(t.tokens.length);
    expect(t.max_model_len).toBe(server.engine.maxModelLen);
    expect((await post('/detokenize', { tokens: t.tokens })).json()).toEqual({ prompt: 'Hello world' });
    const m = (await post('/tokenize', { messages: hi })).json();
    const chat = (await post('/v1/chat/completions', { messages: hi, max_tokens: 1 })).json();
    expect(m.count).toBe(chat.usage.prompt_tokens);
  });

  it('lists the model and answers the probes', async () => {
    const models = (await server.app.inject({ method: 'GET', url: '/v1/models' })).json();
    expect(models).toMatchObject({ object: 'list', data: [{ id: server.config.servedModelName, object: 'model', owned_by: 'spikeserve', max_model_len: server.engine.maxModelLen }] });
    expect((await server.app.inject({ method: 'GET', url: '/health' })).json()).toEqual({ status: 'ok' });
    expect((await server.app.inject({ method: 'GET', url: '/version' })).json()).toEqual({ name: 'spikeserve', version: 'test' });
  });

  it('exposes Prometheus metrics fed by the requests', async () => {
    const ttftCount = async (): Promise<number> => {
      const res = await server.app.inject({ method: 'GET', url: '/metrics' });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/text\/plain/);
      return Number(/spikeserve:time_to_first_token_seconds_count\{[^}]*\} (\d+)/.exec(res.body)?.[1] ?? 0);
    };
    const before = await ttftCount();
    expect((await post('/v1/completions', { prompt: 'abc', max_tokens: 2, ignore_eos: true })).status).toBe(200);
    expect(await ttftCount()).toBe(before + 1);
  });

  it('keeps a sane incoming x-request-id and generates one otherwise', async () => {
    const kept = await server.app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'trace-abc.123' } });
    expect(kept.headers['x-request-id']).toBe('trace-abc.123');
    const fresh = await server.app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'bad id with spaces' } });
    expect(fresh.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });
});

/** A second app around the same engine (its close must not stop the shared one). */
async function secondApp(engine: EnginePort | Promise<EnginePort>, flags: string[] = []) {
  return (await buildTestApp(engine, server.tokenizer, flags)).app;
}

/** Starts a streamed request on a listening app; collects the raw SSE text. */
function rawStream(port: number, payload: Json): { text: () => string; done: Promise<string>; firstBytes: Promise<void>; destroy(): void } {
  let text = '';
  let req: http.ClientRequest;
  let gotBytes!: () => void;
  const firstBytes = new Promise<void>((r) => (gotBytes = r));
  const done = new Promise<string>((resolve, reject) => {
    req = http.request({ host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
        gotBytes();
      });
      res.on('end', () => resolve(text));
      // A stream this test destroys ends here; what arrived so far is the result.
      res.on('error', () => resolve(text));
    });
    req.on('error', (err) => (req.destroyed ? resolve(text) : reject(err)));
    req.end(JSON.stringify(payload));
  });
  return { text: () => text, done, firstBytes, destroy: () => req.destroy() };
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

describe('on a listening server', () => {
  it('sends : keep-alive comments while a request waits in the queue, then streams it', async () => {
    const app = await secondApp(server.engine, ['--keepalive-seconds', '0.05']);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const port = (app.server.address() as AddressInfo).port;
    try {
      const long = { messages: hi, max_tokens: 500_000, ignore_eos: true, stream: true };
      const busy = Array.from({ length: MAX_NUM_SEQS }, () => rawStream(port, long));
      await until(() => server.engine.stats().numRunning === MAX_NUM_SEQS);
      const waiting = rawStream(port, { messages: hi, max_tokens: 3, ignore_eos: true, stream: true });
      await until(() => waiting.text().includes(': keep-alive\n\n'));
      expect(waiting.text()).not.toContain('data:');
      for (const b of busy) b.destroy();
      const body = await waiting.done;
      const events = sseData(body);
      expect(events.at(-1)).toBe('[DONE]');
      expect((events.at(-2) as Json).choices[0].finish_reason).toBe('length');
    } finally {
      await app.close();
    }
    await waitEngineIdle(server.engine);
  });

  it('sends prefill.progress events before the first token when asked', async () => {
    // Thousands of tokens in chunks of 64: dozens of engine steps, so the prefill spans several
    // 250 ms progress intervals (progress is reported at most every 250 ms of prefill). A smaller
    // model prefills faster: the prompt grows until one prefill lasts long enough.
    const V = server.engine.config.vocabSize;
    let prompt: number[] = [];
    let events: Json[] = [];
    for (const length of [3000, 12_000, 48_000]) {
      prompt = Array.from({ length }, (_, i) => 3 + ((i * 7919) % (V - 3)));
      const res = await post('/v1/completions', { prompt, max_tokens: 2, ignore_eos: true, stream: true, stream_options: { include_progress: true } });
      expect(res.status).toBe(200);
      events = sseData(res.body).slice(0, -1) as Json[];
      if (events.some((e) => e.object === 'prefill.progress')) break;
    }
    const firstText = events.findIndex((e) => e.object === 'text_completion');
    const progress = events.filter((e) => e.object === 'prefill.progress');
    expect(progress.length).toBeGreaterThan(0);
    expect(events.findIndex((e) => e.object === 'prefill.progress')).toBeLessThan(firstText);
    for (const p of progress) {
      expect(p.total_tokens).toBe(prompt.length);
      expect(p.processed_tokens).toBeGreaterThan(0);
      expect(p.processed_tokens).toBeLessThan(prompt.length);
      expect(p.elapsed_seconds).toBeGreaterThan(0);
      expect(p.cached_tokens).toBeGreaterThanOrEqual(0);
    }
    // Without the option, none.
    const plain = sseData((await post('/v1/completions', { prompt: 'ab'.repeat(100), max_tokens: 2, stream: true })).body);
    expect(plain.some((e) => e !== '[DONE]' && e.object === 'prefill.progress')).toBe(false);
  });

  it('drains: /health turns 503, a running stream finishes, then the app closes', async () => {
    const app = await secondApp(server.engine);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const port = (app.server.address() as AddressInfo).port;
    const s = rawStream(port, { messages: hi, max_tokens: 40, ignore_eos: true, stream: true });
    await s.firstBytes;
    const drained = drainAndClose(app, { drainTimeoutSeconds: 60 });
    expect(app.serving.phase).toBe('draining');
    const health = await app.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(503);
    expect(health.json().error.code).toBe('draining');
    await drained;
    const events = sseData(await s.done);
    expect(events.at(-1)).toBe('[DONE]');
    expect((events.at(-2) as Json).choices[0].finish_reason).toBe('length');
    await waitEngineIdle(server.engine);
  });

  it('drains: a stream still running at the deadline is aborted with an error event', async () => {
    const app = await secondApp(server.engine);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const port = (app.server.address() as AddressInfo).port;
    const s = rawStream(port, { messages: hi, max_tokens: 500_000, ignore_eos: true, stream: true });
    await s.firstBytes;
    await drainAndClose(app, { drainTimeoutSeconds: 0.2 });
    const events = sseData(await s.done);
    expect(events.at(-1)).toBe('[DONE]');
    expect(events.at(-2)).toMatchObject({ error: { type: 'service_unavailable_error', code: 'draining' } });
    await waitEngineIdle(server.engine);
    expect(server.engine.stats().numRunning).toBe(0);
  });

  it('answers 503 with the envelope while the model loads', async () => {
    let resolve!: (e: EnginePort) => void;
    const app = await secondApp(new Promise<EnginePort>((r) => (resolve = r)));
    const health = await app.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(503);
    expect(health.json().error).toMatchObject({ type: 'service_unavailable_error', code: 'model_loading' });
    const chat = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { messages: hi } });
    expect(chat.statusCode).toBe(503);
    resolve(server.engine as Engine);
    await until(() => app.serving.phase === 'ready');
    expect((await app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200);
    await app.close();
  });
});
