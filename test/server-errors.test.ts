// A table of malformed requests against the real server: each gets its HTTP status and the
// OpenAI error envelope with the right `type` and `param`, the server's log shows each answered by
// its error path, and the server keeps serving after all of them. The server here requires an API
// key, caps bodies at 16 KiB and the context at 64 tokens.
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

const KEY = 'sk-test-key';
const AUTH = { authorization: `Bearer ${KEY}` };
const MAX_MODEL_LEN = 64;

let server: TestServer;
/** The server's log lines, parsed. */
const logLines: Record<string, unknown>[] = [];
beforeAll(async () => {
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') logLines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  server = await startTestServer({
    flags: ['--api-key', `other-key,${KEY}`, '--body-limit-bytes', '16384'],
    engine: { maxModelLen: MAX_MODEL_LEN },
    logger: { level: 'info', stream },
  });
});
afterAll(async () => server?.close());

const chat = (extra: Record<string, unknown>): Record<string, unknown> => ({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, ...extra });

interface Case {
  readonly name: string;
  readonly url?: string;
  readonly method?: 'GET' | 'POST';
  /** An object is sent as JSON; a string or Buffer is sent raw. */
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
  readonly status: number;
  readonly type: string;
  readonly param?: string | null;
  readonly code?: string;
}

const CASES: Case[] = [
  { name: 'messages is a string', body: { messages: 'hi' }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'messages missing', body: { max_tokens: 3 }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'messages empty', body: { messages: [] }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'unknown role', body: { messages: [{ role: 'wizard', content: 'x' }] }, status: 400, type: 'invalid_request_error', param: 'messages[0].role' },
  { name: 'content is a number', body: { messages: [{ role: 'user', content: 42 }] }, status: 400, type: 'invalid_request_error', param: 'messages[0].content' },
  { name: 'role missing', body: { messages: [{ content: 'x' }] }, status: 400, type: 'invalid_request_error', param: 'messages[0].role' },
  { name: 'image content part', body: { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'n = 0', body: chat({ n: 0 }), status: 400, type: 'invalid_request_error', param: 'n' },
  { name: 'n = 17', body: chat({ n: 17 }), status: 400, type: 'invalid_request_error', param: 'n' },
  { name: 'negative max_tokens', body: chat({ max_tokens: -1 }), status: 400, type: 'invalid_request_error', param: 'max_tokens' },
  { name: 'fractional max_tokens', body: chat({ max_tokens: 1.5 }), status: 400, type: 'invalid_request_error', param: 'max_tokens' },
  { name: 'temperature is a string', body: chat({ temperature: 'hot' }), status: 400, type: 'invalid_request_error', param: 'temperature' },
  { name: 'temperature 3', body: chat({ temperature: 3 }), status: 400, type: 'invalid_request_error', param: 'temperature' },
  { name: 'top_p 2', body: chat({ top_p: 2 }), status: 400, type: 'invalid_request_error', param: 'top_p' },
  { name: 'top_p 0', body: chat({ top_p: 0 }), status: 400, type: 'invalid_request_error', param: 'top_p' },
  { name: 'top_k -2', body: chat({ top_k: -2 }), status: 400, type: 'invalid_request_error', param: 'top_k' },
  { name: 'min_p 1.5', body: chat({ min_p: 1.5 }), status: 400, type: 'invalid_request_error', param: 'min_p' },
  { name: 'top_logprobs 21', body: chat({ logprobs: true, top_logprobs: 21 }), status: 400, type: 'invalid_request_error', param: 'top_logprobs' },
  { name: 'top_logprobs without logprobs', body: chat({ top_logprobs: 2 }), status: 400, type: 'invalid_request_error', param: 'top_logprobs' },
  { name: 'huge logit_bias value', body: chat({ logit_bias: { '5': 1e6 } }), status: 400, type: 'invalid_request_error', param: 'logit_bias' },
  { name: 'logit_bias key not a token id', body: chat({ logit_bias: { abc: 1 } }), status: 400, type: 'invalid_request_error', param: 'logit_bias' },
  { name: 'logit_bias token outside the vocabulary', body: chat({ logit_bias: { '99999999': 1 } }), status: 400, type: 'invalid_request_error', param: 'logit_bias' },
  { name: '17 stop strings', body: chat({ stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }), status: 400, type: 'invalid_request_error', param: 'stop' },
  { name: 'stop is a number', body: chat({ stop: 7 }), status: 400, type: 'invalid_request_error', param: 'stop' },
  { name: 'presence_penalty 3', body: chat({ presence_penalty: 3 }), status: 400, type: 'invalid_request_error', param: 'presence_penalty' },
  { name: 'stream is a string', body: chat({ stream: 'yes' }), status: 400, type: 'invalid_request_error', param: 'stream' },
  { name: 'stream_options without stream', body: chat({ stream_options: { include_usage: true } }), status: 400, type: 'invalid_request_error', param: 'stream_options' },
  { name: 'stream_options with stream false', body: chat({ stream: false, stream_options: { include_progress: true } }), status: 400, type: 'invalid_request_error', param: 'stream_options' },
  { name: 'fractional seed', body: chat({ seed: 1.5 }), status: 400, type: 'invalid_request_error', param: 'seed' },
  { name: 'negative stop_token_ids', body: chat({ stop_token_ids: [-1] }), status: 400, type: 'invalid_request_error', param: 'stop_token_ids[0]' },
  { name: 'min_tokens above max_tokens', body: chat({ max_tokens: 2, min_tokens: 5 }), status: 400, type: 'invalid_request_error', param: 'min_tokens' },
  { name: 'response_format of an unknown type', body: chat({ response_format: { type: 'xml' } }), status: 400, type: 'invalid_request_error', param: 'response_format.type' },
  { name: 'response_format schema XGrammar cannot compile', body: chat({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'colour' } } } }), status: 400, type: 'invalid_request_error', param: 'response_format' },
  { name: 'prompt over the maximum length (chat)', body: chat({ messages: [{ role: 'user', content: 'x'.repeat(MAX_MODEL_LEN * 4) }] }), status: 400, type: 'invalid_request_error', param: 'messages', code: 'context_length_exceeded' },
  { name: 'invalid JSON', body: '{"messages": [', status: 400, type: 'invalid_request_error', param: null, code: 'invalid_json' },
  { name: 'non-UTF-8 bytes', body: Buffer.from([0x7b, 0x22, 0x6d, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), status: 400, type: 'invalid_request_error', param: null, code: 'invalid_utf8' },
  { name: 'empty body', body: '', status: 400, type: 'invalid_request_error', param: null },
  { name: 'body is a JSON array', body: '[1,2]', status: 400, type: 'invalid_request_error', param: null },
  { name: 'text/plain body', body: 'hello', headers: { 'content-type': 'text/plain' }, status: 415, type: 'invalid_request_error', code: 'unsupported_media_type' },
  { name: 'body over the limit', body: chat({ messages: [{ role: 'user', content: 'x'.repeat(20_000) }] }), status: 413, type: 'invalid_request_error', code: 'body_too_large' },
  { name: 'unknown model', body: chat({ model: 'gpt-9' }), status: 404, type: 'not_found_error', param: 'model', code: 'model_not_found' },
  { name: 'missing API key', body: chat({}), headers: { authorization: '' }, status: 401, type: 'authentication_error' },
  { name: 'wrong API key', body: chat({}), headers: { authorization: 'Bearer nope' }, status: 401, type: 'authentication_error' },
  { name: 'unknown route', url: '/v1/nothing-here', body: {}, status: 404, type: 'not_found_error' },
  { name: 'malformed URL', method: 'GET', url: '/v1/mod%zzels', status: 400, type: 'invalid_request_error', code: 'fst_err_bad_url' },
  { name: 'completions: prompt missing', url: '/v1/completions', body: { max_tokens: 2 }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'completions: empty token list', url: '/v1/completions', body: { prompt: [] }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'completions: two prompts', url: '/v1/completions', body: { prompt: ['a', 'b'] }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'completions: token id outside the vocabulary', url: '/v1/completions', body: { prompt: [1, 99999999] }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'completions: stream_options without stream', url: '/v1/completions', body: { prompt: 'a', stream_options: { include_usage: true } }, status: 400, type: 'invalid_request_error', param: 'stream_options' },
  { name: 'completions: logprobs 21', url: '/v1/completions', body: { prompt: 'a', logprobs: 21 }, status: 400, type: 'invalid_request_error', param: 'logprobs' },
  { name: 'completions: prompt over the maximum length', url: '/v1/completions', body: { prompt: Array.from({ length: MAX_MODEL_LEN }, () => 3) }, status: 400, type: 'invalid_request_error', param: 'prompt', code: 'context_length_exceeded' },
  { name: 'tokenize: neither prompt nor messages', url: '/tokenize', body: { text: 'a' }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'tokenize: prompt and messages "x"', url: '/tokenize', body: { prompt: 'Hello world', messages: 'x' }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'tokenize: prompt and messages null', url: '/tokenize', body: { prompt: 'Hello world', messages: null }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'tokenize: prompt and messages {}', url: '/tokenize', body: { prompt: 'Hello world', messages: {} }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'tokenize: prompt and messages []', url: '/tokenize', body: { prompt: 'Hello world', messages: [] }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'tokenize: prompt and valid messages', url: '/tokenize', body: { prompt: 'Hello world', messages: [{ role: 'user', content: 'hi' }] }, status: 400, type: 'invalid_request_error', param: 'messages' },
  { name: 'tokenize: prompt is a number', url: '/tokenize', body: { prompt: 5 }, status: 400, type: 'invalid_request_error', param: 'prompt' },
  { name: 'detokenize: token id outside the vocabulary', url: '/detokenize', body: { tokens: [99999999] }, status: 400, type: 'invalid_request_error', param: 'tokens' },
];

function send(c: Case) {
  const raw = typeof c.body === 'string' || Buffer.isBuffer(c.body);
  const headers: Record<string, string> = { ...AUTH, 'content-type': 'application/json', ...c.headers };
  if (headers['authorization'] === '') delete headers['authorization'];
  return server.app.inject({
    method: c.method ?? 'POST',
    url: c.url ?? '/v1/chat/completions',
    headers,
    payload: raw ? (c.body as string | Buffer) : JSON.stringify(c.body),
  });
}

describe('malformed requests', () => {
  it('the server answers at least 30 distinct malformed requests, each through its error path', async () => {
    const answered = new Set<string>();
    for (const c of CASES) {
      const res = await send(c);
      const id = res.headers['x-request-id'];
      expect(typeof id, c.name).toBe('string');
      // The error table's answer is logged with the request's id and the status it sent.
      const line = logLines.find((l) => l['reqId'] === id && l['status'] === res.statusCode && typeof l['msg'] === 'string');
      expect(line, c.name).toBeDefined();
      expect(res.statusCode, c.name).toBe(c.status);
      answered.add(`${res.statusCode} ${(res.json() as { error: { message: string } }).error.message}`);
    }
    expect(answered.size).toBeGreaterThanOrEqual(30);
  });

  it.each(CASES)('$name → $status $type', async (c) => {
    const res = await send(c);
    expect(res.statusCode).toBe(c.status);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    const body = res.json() as { error: { message: string; type: string; param: string | null; code: unknown } };
    expect(Object.keys(body)).toEqual(['error']);
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(body.error.type).toBe(c.type);
    expect(typeof body.error.message).toBe('string');
    expect(body.error.message.length).toBeGreaterThan(0);
    if (c.param !== undefined) expect(body.error.param).toBe(c.param);
    if (c.code !== undefined) expect(body.error.code).toBe(c.code);
  });

  it('keeps serving: a good request succeeds after the table, and nothing is left in the engine', async () => {
    const res = await server.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: AUTH, payload: chat({ max_tokens: 3, ignore_eos: true }) });
    expect(res.statusCode).toBe(200);
    expect(res.json().usage.completion_tokens).toBe(3);
    await waitEngineIdle(server.engine); // memory is freed one step after the answer (an exact prefix snapshot is taken)
    const s = server.engine.stats();
    expect([s.numRunning, s.numWaiting, s.stateSlotsUsed, s.kvPagesUsed]).toEqual([0, 0, 0, 0]);
  });

  it('leaves /health, /version, /metrics and / open without a key', async () => {
    for (const url of ['/health', '/version', '/metrics', '/']) {
      const res = await server.app.inject({ method: 'GET', url });
      expect(res.statusCode, url).toBe(200);
    }
    expect((await server.app.inject({ method: 'GET', url: '/v1/models' })).statusCode).toBe(401);
  });

  it('never shows internals on a 500', async () => {
    const app = server.app;
    const original = app.tokenizer.encode;
    // A tokenizer failure is a server fault: the client sees a generic message, the log the cause.
    (app.tokenizer as { encode: unknown }).encode = async () => {
      throw new Error('secret internal detail at /srv/x.ts:12');
    };
    try {
      const res = await app.inject({ method: 'POST', url: '/v1/completions', headers: AUTH, payload: { prompt: 'a' } });
      expect(res.statusCode).toBe(500);
      expect(res.json().error).toEqual({ message: 'internal server error', type: 'server_error', param: null, code: null });
      expect(res.body).not.toContain('secret');
    } finally {
      (app.tokenizer as { encode: unknown }).encode = original;
    }
  });
});
