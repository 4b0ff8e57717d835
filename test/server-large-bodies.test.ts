// Bodies from 256 KiB on are parsed, validated and tokenized by the prompt worker, not the HTTP thread:
// every answer equals what the same request gets on the HTTP thread (the same prompt tokens, the same
// 400s for bad JSON, bad UTF-8, an invalid field or a limit), for chat, completions, /tokenize (whose
// long answer is streamed), /detokenize and a WebSocket message; a chunked body switches over mid-way;
// a heavy chat (many messages) is rendered there too; prompt ids come back in shared memory.
import http from 'node:http';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chatPromptTokens } from '../src/routes/chat-completions/prompt.ts';
import { PromptWorker } from '../src/routes/common/prompt-worker-client.ts';
import { startTestServer, testModelDir, waitEngineIdle, type TestServer } from './helpers/server.ts';

const MAX_MODEL_LEN = 1 << 16;
let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ flags: ['--body-limit-bytes', String(8 << 20)], engine: { maxModelLen: MAX_MODEL_LEN } });
  await server.listen();
});
afterAll(async () => server?.close());

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const VERSE = 'And it came to pass, in the days when the judges ruled, that there was a famine in the land. ';
/** ~`kib` KiB of text with special-token text in it (user content: encoded as plain text). */
const text = (kib: number): string => `${VERSE.repeat(Math.ceil((kib * 1024) / VERSE.length))} <|im_start|>system`;

/** Sends raw bytes (or pieces, chunked when `chunked`) and returns status and parsed JSON body. */
function send(path: string, body: Buffer | string, opts: { chunked?: boolean; contentType?: string } = {}): Promise<{ status: number; json: Json; raw: string }> {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { 'content-type': opts.contentType ?? 'application/json' };
    if (opts.chunked !== true) headers['content-length'] = bytes.length;
    const req = http.request(`${server.url}${path}`, { method: 'POST', headers }, (res) => {
      let raw = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (raw += d));
      res.on('end', () => {
        let json: Json = {};
        try {
          json = JSON.parse(raw) as Json;
        } catch {
          // not JSON: the test looks at raw
        }
        resolve({ status: res.statusCode ?? 0, json, raw });
      });
    });
    req.on('error', reject);
    if (opts.chunked === true) {
      for (let at = 0; at < bytes.length; at += 50_000) req.write(bytes.subarray(at, at + 50_000));
      req.end();
    } else req.end(bytes);
  });
}

const post = (path: string, payload: Json, opts: { chunked?: boolean } = {}): Promise<{ status: number; json: Json; raw: string }> => send(path, JSON.stringify(payload), opts);

describe('large bodies, parsed off the HTTP thread', () => {
  it('a chat of 1 MiB gets the prompt tokens the HTTP thread would make, also sent chunked', async () => {
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: text(1024) }];
    const expected = await chatPromptTokens(server.app, { messages, addGenerationPrompt: true });
    expect(expected.length).toBeGreaterThan(MAX_MODEL_LEN); // refused right after tokenizing: no long prefill
    for (const chunked of [false, true]) {
      const res = await post('/v1/chat/completions', { messages, max_tokens: 1 }, { chunked });
      expect(res.status).toBe(400);
      expect(res.json.error).toMatchObject({ param: 'messages', code: 'context_length_exceeded' });
      expect(res.json.error.message).toContain(`the prompt has ${expected.length} tokens`);
    }
    const tokenized = await post('/tokenize', { messages });
    expect(tokenized.status).toBe(200);
    expect(tokenized.json.count).toBe(expected.length);
    expect(tokenized.json.tokens).toEqual(Array.from(expected));
  });

  it('a prefix-cache warm-up: the worker makes the same prompt (same snapshot) as the HTTP thread, and the same 400s', async () => {
    const prompt = text(2);
    const handedOver = (): number => server.app.promptWorker.bodiesByRoute.get('prefix-cache') ?? 0;
    const before = handedOver();
    // Padding (an undeclared field, dropped) makes the body large: the prompt worker parses it.
    const viaWorker = await post('/v1/prefix-cache', { prompt, padding: 'x'.repeat(400_000) });
    expect(viaWorker.status).toBe(200);
    expect(viaWorker.json.computed_tokens).toBeGreaterThan(0);
    const inline = await post('/v1/prefix-cache', { prompt });
    expect(inline.status).toBe(200);
    expect(inline.json).toMatchObject({ id: viaWorker.json.id, prompt_tokens: viaWorker.json.prompt_tokens, computed_tokens: 0 });
    expect(handedOver()).toBe(before + 1);
    const messages = [{ role: 'system', content: prompt }];
    const fromMessages = await post('/v1/prefix-cache', { messages, padding: 'x'.repeat(400_000) });
    expect(fromMessages.status).toBe(200);
    expect(handedOver()).toBe(before + 2);
    expect(fromMessages.json.prompt_tokens).toBe((await chatPromptTokens(server.app, { messages, addGenerationPrompt: false })).length);
    const V = server.engine.config.vocabSize;
    const badIds = Array.from({ length: 80_000 }, (_, i) => (i === 70_000 ? V : 3 + (i % 200)));
    for (const body of [{ prompt: badIds }, { prompt: badIds.slice(60_000) }]) {
      const res = await post('/v1/prefix-cache', body);
      expect(res.status).toBe(400);
      expect(res.json.error).toMatchObject({ param: 'prompt' });
      expect(res.json.error.message).toContain(`holds token id ${V}`);
    }
    await waitEngineIdle(server.engine);
  });

  it('completions: a text prompt and a list of 100,000 token ids', async () => {
    const prompt = text(512);
    const ids = await server.tokenizer.encode(prompt);
    const fromText = await post('/v1/completions', { prompt, max_tokens: 1 });
    expect(fromText.json.error?.message).toContain(`the prompt has ${ids.length} tokens`);
    const tokenIds = Array.from({ length: 100_000 }, (_, i) => 3 + ((i * 7919) % 200));
    const fromIds = await post('/v1/completions', { prompt: tokenIds, max_tokens: 1 });
    expect(fromIds.status).toBe(400);
    expect(fromIds.json.error.message).toContain('the prompt has 100000 tokens');
    const outside = await post('/v1/completions', { prompt: [...tokenIds, 99_999_999], max_tokens: 1 });
    expect(outside.json.error).toMatchObject({ param: 'prompt' });
    expect(outside.json.error.message).toContain('token id 99999999');
  });

  it('gives the HTTP thread’s 400s: bad JSON, bad UTF-8, an invalid field, a limit, a template error', async () => {
    const big = text(400);
    const badJson = await send('/v1/chat/completions', `{"messages": [{"role": "user", "content": ${JSON.stringify(big)}}`);
    expect(badJson.json.error).toMatchObject({ code: 'invalid_json', param: null });
    const badUtf8 = Buffer.concat([Buffer.from(`{"messages": [{"role": "user", "content": "${big}`), Buffer.from([0xff, 0xfe]), Buffer.from('"}]}')]);
    expect((await send('/v1/chat/completions', badUtf8)).json.error).toMatchObject({ code: 'invalid_utf8' });
    const invalid = await post('/v1/chat/completions', { messages: [{ role: 'user', content: big }], temperature: 'hot' });
    expect(invalid.status).toBe(400);
    expect(invalid.json.error.param).toBe('temperature');
    const tooMany = await post('/v1/chat/completions', { messages: Array.from({ length: 3000 }, () => ({ role: 'user', content: VERSE })) });
    expect(tooMany.json.error).toMatchObject({ param: 'messages', code: 'array_above_max_length' });
    const imagePart = await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'text', text: big }, { type: 'image_url', image_url: { url: 'x' } }] }] });
    expect(imagePart.json.error).toMatchObject({ param: 'messages', code: 'chat_template_error' });
    // The route's own earlier checks still come first: an unknown model is a 404.
    expect((await post('/v1/chat/completions', { model: 'gpt-9', messages: [{ role: 'user', content: big }] })).status).toBe(404);
  });

  it('/tokenize streams a long answer that parses to the tokenizer’s ids; /detokenize decodes a long list', async () => {
    const prompt = VERSE.repeat(8000); // ~740 KiB, > 65,536 ids
    const expected = await server.tokenizer.encode(prompt);
    expect(expected.length).toBeGreaterThan(65_536);
    const res = await post('/tokenize', { prompt });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ tokens: expected, count: expected.length, max_model_len: MAX_MODEL_LEN });
    const back = await post('/detokenize', { tokens: expected.slice(0, 200_000) });
    expect(back.json).toEqual({ prompt: server.tokenizer.decode(expected.slice(0, 200_000), { skipSpecialTokens: false }) });
    const over = await post('/detokenize', { tokens: Array.from({ length: 262_145 }, () => 5) });
    expect(over.json.error).toMatchObject({ param: 'tokens', code: 'array_above_max_length' });
  });

  it('a heavy chat (many messages) is rendered in the worker, with the same prompt tokens', async () => {
    const messages = Array.from({ length: 101 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `${i}: ${VERSE}` }));
    const expected = await chatPromptTokens(server.app, { messages, addGenerationPrompt: true });
    const res = await post('/v1/chat/completions', { messages, max_tokens: 2, ignore_eos: true });
    expect(res.status).toBe(200);
    expect(res.json.usage.prompt_tokens).toBe(expected.length);
    await waitEngineIdle(server.engine);
  });

  it('a large WebSocket message is read the same way', async () => {
    const WebSocket = createRequire(import.meta.url)('ws') as new (url: string) => { on(ev: string, cb: (d: Buffer) => void): void; send(s: string): void; close(): void };
    const messages = [{ role: 'user', content: text(600) }];
    const expected = await chatPromptTokens(server.app, { messages, addGenerationPrompt: true });
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    const first = await new Promise<string>((resolve) => {
      ws.on('open', () => ws.send(JSON.stringify({ messages, max_tokens: 1 })));
      ws.on('message', (d) => resolve(d.toString()));
    });
    ws.close();
    expect(JSON.parse(first).error.message).toContain(`the prompt has ${expected.length} tokens`);
  });

  it('echo + logprobs of 600 prompt tokens: streamed in slices, the same entries as the whole answer', async () => {
    const prompt = Array.from({ length: 600 }, (_, i) => 3 + ((i * 31) % 200));
    const body = { prompt, max_tokens: 1, echo: true, logprobs: 5, temperature: 0, ignore_eos: true };
    const whole = (await post('/v1/completions', body)).json.choices[0].logprobs;
    const streamed = await post('/v1/completions', { ...body, stream: true });
    const chunks = streamed.raw
      .split('\n\n')
      .filter((f) => f.startsWith('data: {'))
      .map((f) => JSON.parse(f.slice(6)) as Json);
    const echoChunks = chunks.filter((c) => c.choices[0]?.logprobs !== null && c.choices[0]?.logprobs.tokens.length > 1);
    expect(echoChunks.length).toBe(3); // 256 + 256 + 88
    expect(echoChunks.slice(1).every((c) => c.choices[0].text === '')).toBe(true);
    const merged = { tokens: [] as unknown[], token_logprobs: [] as unknown[], top_logprobs: [] as unknown[], text_offset: [] as unknown[] };
    for (const c of chunks) {
      const lp = c.choices[0]?.logprobs;
      if (lp === null || lp === undefined) continue;
      for (const k of Object.keys(merged) as (keyof typeof merged)[]) merged[k].push(...(lp[k] as unknown[]));
    }
    expect(merged).toEqual(whole);
  });

  it('hands the prompt over in shared memory', async () => {
    const worker = new PromptWorker({ modelDir: testModelDir(), chatAssets: server.app.chatAssets, serverConfig: server.config }, () => null);
    try {
      const messages = Array.from({ length: 80 }, () => ({ role: 'user' as const, content: VERSE }));
      const prompt = await worker.prepareChat({ messages });
      expect(prompt.ids.buffer).toBeInstanceOf(SharedArrayBuffer);
      expect(Array.from(prompt.ids)).toEqual(Array.from(await chatPromptTokens(server.app, { messages, addGenerationPrompt: true })));
    } finally {
      await worker.close();
    }
  });
});
