// End to end with the official `openai` SDK against a listening server around the real Engine:
// chat and completions (streamed and not, usage chunk), models.list, the SDK's typed errors
// (400/401/404/429), seeded and greedy sampling checked against the engine itself, prompt logprobs
// checked against an independent log-softmax of the Model's own logits, client aborts that leave
// nothing behind in the engine, and a WebSocket round trip equal to the SSE stream.
import { createRequire } from 'node:module';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Model } from '../src/engine/model/model.ts';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { newSequence, prefill } from '../src/engine/model/sequence.ts';
import { CACHE_DIR, startTestServer, testModelDir, waitEngineIdle, type TestServer } from './helpers/server.ts';
import { greedy } from './helpers/sampling.ts';

const KEY = 'sk-e2e';
const MAX_QUEUE = 3;
let server: TestServer;
let client: OpenAI;
let model: string;

beforeAll(async () => {
  // Two sequences at a time and three waiting: small enough to saturate in the 429 test.
  server = await startTestServer({ flags: ['--api-key', KEY], engine: { maxNumSeqs: 2, maxQueue: MAX_QUEUE, maxModelLen: 1 << 20 } });
  await server.listen();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  model = server.config.servedModelName;
});
afterAll(async () => server?.close());

/** Nothing held: a request frees its memory one step after its answer (it folds its last token into a prefix snapshot). */
async function expectIdle(): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const s = server.engine.stats();
    if (s.numRunning + s.numWaiting + s.kvPagesUsed + s.stateSlotsUsed === 0) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  const s = server.engine.stats();
  expect({ running: s.numRunning, waiting: s.numWaiting, pages: s.kvPagesUsed, slots: s.stateSlotsUsed, stateBytes: s.stateBytesInUse }).toEqual({
    running: 0,
    waiting: 0,
    pages: 0,
    slots: 0,
    stateBytes: 0,
  });
}

describe('openai SDK: chat completions', () => {
  it('answers without streaming', async () => {
    const res = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 8, temperature: 0 });
    expect(res.object).toBe('chat.completion');
    expect(res.model).toBe(model);
    expect(res.choices[0]?.message.role).toBe('assistant');
    expect(typeof res.choices[0]?.message.content).toBe('string');
    expect(['stop', 'length']).toContain(res.choices[0]?.finish_reason);
    expect(res.usage?.prompt_tokens).toBeGreaterThan(0);
    expect(res.usage?.total_tokens).toBe((res.usage?.prompt_tokens ?? 0) + (res.usage?.completion_tokens ?? 0));
    expect(res.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(0);
  });

  it('streams, ending with the usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Count with me' }],
      max_tokens: 10,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(new Set(chunks.map((c) => c.created)).size).toBe(1);
    expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason != null);
    expect(finish.map((c) => c.choices[0]?.finish_reason)).toEqual(['length']);
    const last = chunks.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage?.completion_tokens).toBe(10);

    // The streamed text is the non-streamed text.
    const whole = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Count with me' }], max_tokens: 10, temperature: 0, ignore_eos: true } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(whole.choices[0]?.message.content);
  });

  it('gives the same text for the same seed, n choices with their own seeds', async () => {
    const params = { model, messages: [{ role: 'user' as const, content: 'Tell me a story' }], max_tokens: 16, temperature: 1, seed: 1234, ignore_eos: true };
    const a = await client.chat.completions.create(params as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const b = await client.chat.completions.create(params as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(b.choices[0]?.message.content).toBe(a.choices[0]?.message.content);
    const three = await client.chat.completions.create({ ...params, n: 3 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(three.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(three.usage?.completion_tokens).toBe(48);
    // Choice i is sampled with seed + i: the same text as a single request with that seed, and the
    // three differ from each other.
    const texts = three.choices.map((c) => c.message.content);
    expect(new Set(texts).size).toBe(3);
    for (const [i, text] of texts.entries()) {
      const single = i === 0 ? a : await client.chat.completions.create({ ...params, seed: 1234 + i } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      expect(text, `choice ${i}`).toBe(single.choices[0]?.message.content);
    }
  });

  it('a new chat with the same long system message and another question resumes from the system part', async () => {
    const doc = Array.from({ length: 40 }, (_, i) => `Clause ${i + 1}: the tenant keeps the garden tidy and the gate shut.`).join(' ');
    const ask = (question: string) =>
      client.chat.completions.create({ model, messages: [{ role: 'system', content: doc }, { role: 'user', content: question }], max_tokens: 2, temperature: 0 });
    const first = await ask('Who keeps the garden tidy, and what about the gate that opens onto the lane behind the house?');
    const second = await ask('Which clause is about the gate?');
    expect(first.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const cached = second.usage?.prompt_tokens_details?.cached_tokens ?? 0;
    // Everything up to the last whole page (64 tokens) before the user message came from the snapshot.
    const systemTokens = (await server.tokenizer.encode(`<|im_start|>system\n${doc}<|im_end|>\n`, { addSpecialTokens: false })).length;
    expect(cached).toBe(Math.floor(systemTokens / 64) * 64);
    expect(cached).toBeGreaterThan(256);
  });

  it('returns chat logprobs in the OpenAI shape', async () => {
    const res = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3, ignore_eos: true } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const content = res.choices[0]?.logprobs?.content ?? [];
    expect(content).toHaveLength(4);
    for (const entry of content) {
      expect(entry.logprob).toBeLessThanOrEqual(0);
      expect(Array.isArray(entry.bytes)).toBe(true);
      expect(entry.top_logprobs).toHaveLength(3);
      // Greedy: the chosen token is the most likely one.
      expect(entry.logprob).toBeCloseTo(Math.max(...entry.top_logprobs.map((t) => t.logprob)), 5);
    }
  });
});

describe('openai SDK: completions and models', () => {
  it('lists the served model', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual([model]);
    expect((list.data[0] as unknown as { max_model_len: number }).max_model_len).toBe(server.engine.maxModelLen);
    expect(list.data[0]?.owned_by).toBe('spikeserve');
    expect((await client.models.retrieve(model)).id).toBe(model);
    await expect(client.models.retrieve('other')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it('completes a text prompt', async () => {
    const res = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 5, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(res.object).toBe('text_completion');
    expect(res.choices[0]?.finish_reason).toBe('length');
    expect(res.usage?.completion_tokens).toBe(5);
  });

  it('temperature 0 gives the engine\'s own greedy continuation (token-id prompt)', async () => {
    const prompt = (await server.tokenizer.encode('The quick brown fox', { addSpecialTokens: false })).slice(0, 8);
    const res = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: 0, return_tokens_as_token_ids: true } as OpenAI.CompletionCreateParamsNonStreaming);
    const apiIds = (res.choices[0]?.logprobs?.tokens ?? []).map((t) => Number(t.replace('token_id:', '')));
    const engineIds: number[] = [];
    for await (const ev of server.engine.generate({ requestId: 'e2e-greedy-ref', promptTokenIds: prompt, sampling: greedy(12), reportProgress: false })) {
      if (ev.type === 'token') engineIds.push(ev.tokenId);
    }
    expect(apiIds).toEqual(engineIds);
    expect(res.choices[0]?.text).toBe(server.tokenizer.decode(engineIds, { skipSpecialTokens: true }));
  });

  it('echo + logprobs give each prompt token the log-softmax of the Model\'s own logits', async () => {
    const prompt = (await server.tokenizer.encode('Logprobs of every prompt token, please.', { addSpecialTokens: false })).slice(0, 12);
    const res = await client.completions.create({ model, prompt, max_tokens: 1, temperature: 0, echo: true, logprobs: 2 } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = res.choices[0]?.logprobs;
    expect(lp?.tokens).toHaveLength(prompt.length + 1);
    expect(lp?.token_logprobs?.[0]).toBeNull();
    expect(lp?.top_logprobs?.[0]).toBeNull();
    expect(res.choices[0]?.text.startsWith(server.tokenizer.decode(prompt, { skipSpecialTokens: false }))).toBe(true);

    // Independent reference: one Model forward over the prompt, log-softmax in float64.
    const m = await Model.load(openCheckpoint(testModelDir()), { cacheDir: CACHE_DIR, intraOpThreads: 1 });
    try {
      const logits = await prefill(m, newSequence(m), prompt, { allLogits: true });
      const V = m.config.vocabSize;
      for (let i = 1; i < prompt.length; i++) {
        const row = logits.subarray((i - 1) * V, i * V);
        let max = -Infinity;
        for (const x of row) max = Math.max(max, x);
        let sum = 0;
        for (const x of row) sum += Math.exp(x - max);
        const expected = (row[prompt[i] as number] as number) - max - Math.log(sum);
        expect(lp?.token_logprobs?.[i]).toBeCloseTo(expected, 3);
      }
    } finally {
      await m.close();
    }
  });
});

describe('openai SDK: typed errors', () => {
  it('BadRequestError names the param', async () => {
    const err = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], top_p: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('top_p');
  });

  it('AuthenticationError for a wrong key', async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(bad.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it('NotFoundError for an unknown model', async () => {
    const err = await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');
  });

  it('RateLimitError with Retry-After once the queue is full; the aborted streams free everything', async () => {
    const long = { model, messages: [{ role: 'user' as const, content: 'go on forever' }], max_tokens: 500_000, ignore_eos: true, stream: true as const };
    // Two running (maxNumSeqs 2): wait for their first chunks so both hold a slot.
    const running = [await client.chat.completions.create(long), await client.chat.completions.create(long)];
    const iters = running.map((s) => s[Symbol.asyncIterator]());
    for (const it of iters) await it.next();
    // MAX_QUEUE waiting: not awaited, their headers come only when they run.
    const waitingAbort = new AbortController();
    const waiting = Array.from({ length: MAX_QUEUE }, () => client.chat.completions.create(long, { signal: waitingAbort.signal }).catch((e: unknown) => e));
    for (let i = 0; i < 400 && server.engine.stats().numWaiting < MAX_QUEUE; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.engine.stats().numWaiting).toBe(MAX_QUEUE);

    const err = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect((err as InstanceType<typeof OpenAI.RateLimitError>).headers.get('retry-after')).toBe('1');

    for (const s of running) s.controller.abort();
    waitingAbort.abort();
    await Promise.all(waiting);
    await waitEngineIdle(server.engine);
    await expectIdle();
  });
});

describe('client aborts', () => {
  it('an SSE stream closed by the client leaves no sequence, page or slot in use', async () => {
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'stream a lot' }], max_tokens: 500_000, ignore_eos: true, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    let n = 0;
    for await (const _ of stream) if (++n === 3) break; // break closes the connection
    await waitEngineIdle(server.engine);
    await expectIdle();
  });

  it('a non-streamed request whose client goes away is aborted too', async () => {
    const ctl = new AbortController();
    const pending = fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ prompt: 'abc', max_tokens: 500_000, ignore_eos: true }),
      signal: ctl.signal,
    }).catch((e: unknown) => e);
    for (let i = 0; i < 400 && server.engine.stats().numRunning < 1; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.engine.stats().numRunning).toBe(1);
    ctl.abort();
    await pending;
    await waitEngineIdle(server.engine);
    await expectIdle();
  });
});

/** The part of the `ws` client used here (the package ships no types). */
interface WsClient {
  on(ev: 'open', cb: () => void): void;
  on(ev: 'message', cb: (data: Buffer) => void): void;
  on(ev: 'error', cb: (err: Error) => void): void;
  send(data: string): void;
  close(): void;
}
const WebSocketCtor = createRequire(import.meta.url)('ws') as new (url: string, opts?: { headers?: Record<string, string> }) => WsClient;

describe('WebSocket /v1/stream', () => {
  it('streams the same text as SSE, then [DONE]', async () => {
    const body = { model, messages: [{ role: 'user' as const, content: 'Same over both' }], max_tokens: 12, temperature: 0, ignore_eos: true };
    const sse = await client.chat.completions.create({ ...body, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    let sseText = '';
    for await (const c of sse) sseText += c.choices[0]?.delta.content ?? '';

    const ws = new WebSocketCtor(`${server.url.replace('http', 'ws')}/v1/stream`, { headers: { authorization: `Bearer ${KEY}` } });
    const messages: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => ws.send(JSON.stringify(body)));
      ws.on('message', (data) => {
        const text = data.toString('utf8');
        messages.push(text);
        if (text === '[DONE]') resolve();
      });
    });
    ws.close();
    const chunks = messages.slice(0, -1).map((m) => JSON.parse(m) as OpenAI.ChatCompletionChunk);
    expect(chunks[0]?.object).toBe('chat.completion.chunk');
    expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(sseText);
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('length');
  });

  it('answers a bad request with the error envelope and closing the socket aborts a running request', async () => {
    const ws = new WebSocketCtor(`${server.url.replace('http', 'ws')}/v1/stream?api_key=${KEY}`);
    const first = await new Promise<string>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => ws.send(JSON.stringify({ messages: [] })));
      ws.on('message', (data) => resolve(data.toString('utf8')));
    });
    expect(JSON.parse(first)).toMatchObject({ error: { type: 'invalid_request_error', param: 'messages' } });
    ws.send(JSON.stringify({ messages: [{ role: 'user', content: 'forever' }], max_tokens: 500_000, ignore_eos: true }));
    for (let i = 0; i < 400 && server.engine.stats().numRunning < 1; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.engine.stats().numRunning).toBe(1);
    ws.close();
    await waitEngineIdle(server.engine);
    await expectIdle();
  });
});
