// The server's request limits against the real server: each flag's limit is a 400 naming the field
// (with OpenAI's code for an array or a string above its maximum), a request at the limit is served,
// a 1M-token echo + logprobs request is a 400 (not a crash) and the engine refuses prompt logprobs of
// an over-long prompt on its own; the engine holds nothing afterwards.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestRejectedError } from '../src/engine/errors.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';
import { greedy } from './helpers/sampling.ts';

const LIMITS = [
  '--max-messages', '4',
  '--max-tools', '2',
  '--max-tools-bytes', '400',
  '--max-stop-strings', '2',
  '--max-stop-string-chars', '8',
  '--max-detokenize-tokens', '10',
  '--max-echo-tokens', '40',
  '--max-prompt-logprobs-tokens', '20',
]; // prettier-ignore

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ flags: LIMITS, engine: { maxModelLen: 1 << 24 } });
});
afterAll(async () => server?.close());

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

async function post(url: string, payload: Json): Promise<{ status: number; json: Json }> {
  const res = await server.app.inject({ method: 'POST', url, payload });
  return { status: res.statusCode, json: res.json() as Json };
}

const user = (content: string): Json => ({ role: 'user', content });
const tool = (name: string): Json => ({ type: 'function', function: { name, parameters: { type: 'object', properties: {} } } });
const chat = (extra: Json): Json => ({ messages: [user('hi')], max_tokens: 1, ...extra });

interface Case {
  readonly name: string;
  readonly url: string;
  readonly over: Json;
  readonly at: Json;
  readonly param: string;
  readonly code: string;
}

const CASES: Case[] = [
  { name: 'messages', url: '/v1/chat/completions', over: chat({ messages: Array.from({ length: 5 }, () => user('a')) }), at: chat({ messages: Array.from({ length: 4 }, () => user('a')) }), param: 'messages', code: 'array_above_max_length' },
  { name: 'messages (/tokenize)', url: '/tokenize', over: { messages: Array.from({ length: 5 }, () => user('a')) }, at: { messages: Array.from({ length: 4 }, () => user('a')) }, param: 'messages', code: 'array_above_max_length' },
  { name: 'tools', url: '/v1/chat/completions', over: chat({ tools: [tool('a'), tool('b'), tool('c')] }), at: chat({ tools: [tool('a'), tool('b')] }), param: 'tools', code: 'array_above_max_length' },
  { name: 'tools bytes', url: '/v1/chat/completions', over: chat({ tools: [tool('x'.repeat(400))] }), at: chat({ tools: [tool('x'.repeat(100))] }), param: 'tools', code: 'array_above_max_length' },
  { name: 'stop strings (chat)', url: '/v1/chat/completions', over: chat({ stop: ['a', 'b', 'c'] }), at: chat({ stop: ['a', 'b'] }), param: 'stop', code: 'array_above_max_length' },
  { name: 'stop string length (completions)', url: '/v1/completions', over: { prompt: 'a', max_tokens: 1, stop: 'x'.repeat(9) }, at: { prompt: 'a', max_tokens: 1, stop: 'x'.repeat(8) }, param: 'stop', code: 'string_above_max_length' },
  { name: 'detokenize length', url: '/detokenize', over: { tokens: Array.from({ length: 11 }, () => 65) }, at: { tokens: Array.from({ length: 10 }, () => 65) }, param: 'tokens', code: 'array_above_max_length' },
  { name: 'echo length', url: '/v1/completions', over: { prompt: Array.from({ length: 41 }, () => 65), max_tokens: 1, echo: true }, at: { prompt: Array.from({ length: 40 }, () => 65), max_tokens: 1, echo: true }, param: 'echo', code: 'echo_too_long' },
  { name: 'prompt logprobs length (token ids)', url: '/v1/completions', over: { prompt: Array.from({ length: 21 }, () => 65), max_tokens: 1, echo: true, logprobs: 1 }, at: { prompt: Array.from({ length: 20 }, () => 65), max_tokens: 1, echo: true, logprobs: 1 }, param: 'logprobs', code: 'prompt_logprobs_too_long' },
];

describe('request limits', () => {
  it.each(CASES)('$name: one over the limit is a 400 naming $param, at the limit it is served', async (c) => {
    const over = await post(c.url, c.over);
    expect(over.status).toBe(400);
    expect(over.json.error).toMatchObject({ type: 'invalid_request_error', param: c.param, code: c.code });
    expect(over.json.error.message).toMatch(/--max-|this server/);
    const at = await post(c.url, c.at);
    expect(at.status, JSON.stringify(at.json)).toBe(200);
  });

  it('prompt logprobs of a text prompt are limited by its token count', async () => {
    const text = 'And it came to pass. '.repeat(20);
    const numTokens = (await server.tokenizer.encode(text)).length;
    expect(numTokens).toBeGreaterThan(20);
    const res = await post('/v1/completions', { prompt: text, max_tokens: 1, echo: true, logprobs: 0 });
    expect(res.status).toBe(400);
    expect(res.json.error.param).toBe('logprobs');
    expect(res.json.error.message).toContain(`this one has ${numTokens}`);
  });

  it('a 1M-token echo + logprobs request is a 400, and the server serves the next request', async () => {
    const V = server.engine.config.vocabSize;
    const prompt = Array.from({ length: 1 << 20 }, (_, i) => 3 + ((i * 7919) % (V - 3)));
    const res = await post('/v1/completions', { prompt, max_tokens: 1, echo: true, logprobs: 5 });
    expect(res.status).toBe(400);
    expect(res.json.error).toMatchObject({ param: 'logprobs', code: 'prompt_logprobs_too_long' });
    const next = await post('/v1/completions', { prompt: 'abc', max_tokens: 2, ignore_eos: true });
    expect(next.status).toBe(200);
    expect(next.json.usage.completion_tokens).toBe(2);
    // The finished request still folds its last token into an end snapshot: wait for that step.
    await waitEngineIdle(server.engine);
  });

  it('the engine itself refuses prompt logprobs of a prompt over its limit (default 4096 tokens)', async () => {
    const promptTokenIds = Array.from({ length: 4097 }, (_, i) => 3 + (i % 50));
    const stream = server.engine.generate({ requestId: 'limits-engine-guard', promptTokenIds, sampling: greedy(1, { promptLogprobs: 1 }), reportProgress: false });
    const err = await stream[Symbol.asyncIterator]().next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RequestRejectedError);
    expect((err as RequestRejectedError).param).toBe('logprobs');
  });
});
