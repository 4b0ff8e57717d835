// Large answers are written in slices, not serialized in one block on the HTTP thread
// (src/routes/common/json-slices.ts), and response schemas are given to Fastify's serializer without
// unions (src/routes/common/serializer-schemas.ts). Both must leave the bytes on the wire as they were:
// the sliced writer makes JSON.stringify's text (fast-check, cuts inside strings and between the
// halves of a surrogate pair), every route's schema loses its unions and serializes answers to the
// same bytes, and each sliced answer (echo + logprobs, chat logprobs, /detokenize, /tokenize) is
// exactly what the route's original response schema serializes its content to.
import fc from 'fast-check';
import Fastify, { type RouteOptions } from 'fastify';
import type { TSchema } from 'typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { ChatCompletionResponse } from '../src/routes/chat-completions/schema.ts';
import { jsonSlices, SLICE_CHARS, stringJsonPieces } from '../src/routes/common/json-slices.ts';
import { appendLegacy, emptyLegacyLogprobs, TokenText } from '../src/routes/common/logprobs.ts';
import { serializerSchema } from '../src/routes/common/serializer-schemas.ts';
import { CompletionResponse } from '../src/routes/completions/schema.ts';
import type { EnginePort, TokenizerPort } from '../src/server/ports.ts';
import { buildTestApp, startTestServer, testModelDir, type TestServer } from './helpers/server.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** What Fastify's serializer writes for `value` under `schema` (an app of one route). */
async function serialized(schema: unknown, value: unknown): Promise<string> {
  const app = Fastify();
  app.get('/', { schema: { response: { 200: schema as TSchema } } }, async () => value);
  const res = await app.inject({ method: 'GET', url: '/' });
  await app.close();
  if (res.statusCode !== 200) throw new Error(`the serializer failed: ${res.body}`);
  return res.body;
}

describe('jsonSlices: the text of JSON.stringify, in slices', () => {
  it('equals JSON.stringify for any JSON value, whatever the slice size', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.integer({ min: 1, max: 64 }), (value, sliceChars) => {
        const slices = [...jsonSlices(value, sliceChars)];
        expect(slices.join('')).toBe(JSON.stringify(value));
      }),
      { numRuns: 500 },
    );
  });

  it('cuts long strings into slices but never between the halves of a surrogate pair', () => {
    const text = `a"\\\n\u0001${'😀'.repeat(50)}\ud800x\udc00${'é'.repeat(30)}`; // pairs, lone halves, escapes
    for (let maxChars = 1; maxChars <= 12; maxChars++) {
      const pieces = [...stringJsonPieces(text, maxChars)];
      expect(pieces.join('')).toBe(JSON.stringify(text));
      expect(pieces.length).toBeGreaterThan(2);
      expect(pieces.join('')).not.toMatch(/\\ud83d/); // the emoji's high half was never escaped alone
    }
    const sliced = [...jsonSlices({ a: [text, 1], b: text }, 7)];
    expect(sliced.join('')).toBe(JSON.stringify({ a: [text, 1], b: text }));
    expect(Math.max(...sliced.map((s) => s.length))).toBeLessThan(64); // a slice holds ~7 characters of input, escaped
  });

  it('leaves out what JSON.stringify leaves out, and writes a missing array item as null', () => {
    const value = { a: undefined, b: [undefined, () => 1, Symbol('s'), Number.NaN, -0, Infinity], c: null, d: { e: undefined } };
    expect([...jsonSlices(value, 4)].join('')).toBe(JSON.stringify(value));
    expect([...jsonSlices(undefined)]).toEqual([]);
    const long = [...jsonSlices('x'.repeat(3 * SLICE_CHARS))]; // '"' and a third, two thirds, the last third and '"'
    expect(long.length).toBe(4);
    expect(Math.max(...long.map((s) => s.length))).toBeLessThanOrEqual(SLICE_CHARS + 1);
  });
});

describe('legacy logprob records', () => {
  it('keep JavaScript key order (array-index keys first) and duplicates as before; a token spelled __proto__ is a key too', () => {
    const texts = ['b', '7', 'a', '__proto__', 'b', '10', 'x y'];
    const tokenizer = { tokenBytes: (id: number) => new TextEncoder().encode(texts[id] ?? '') } as unknown as TokenizerPort;
    const into = emptyLegacyLogprobs();
    const top = texts.map((_, tokenId) => ({ tokenId, logprob: -tokenId }));
    appendLegacy(into, [{ tokenId: 0, logprob: -0.5, top }], new TokenText(tokenizer, false), 0);
    const literal: Record<string, number> = {};
    for (const t of top) literal[texts[t.tokenId] as string] = -t.tokenId; // the record as an object literal made it
    expect(JSON.stringify(into.top_logprobs[0])).toBe('{"7":-1,"10":-5,"b":-4,"a":-2,"__proto__":-3,"x y":-6}');
    expect(JSON.stringify(into.top_logprobs[0])).toBe(JSON.stringify(literal).replace('"a":-2,', '"a":-2,"__proto__":-3,'));
  });
});

describe('response schemas for the serializer', () => {
  it('no route keeps a union in a response schema', async () => {
    const tokenizer = await TextTokenizer.load(testModelDir());
    const never = new Promise<EnginePort>(() => undefined);
    const { app } = await buildTestApp(never, tokenizer);
    const routes: RouteOptions[] = [];
    app.addHook('onRoute', (route) => {
      routes.push(route);
    });
    await app.ready();
    const withResponse = routes.filter((r) => r.schema?.response !== undefined);
    expect(withResponse.map((r) => r.url)).toEqual(expect.arrayContaining(['/v1/chat/completions', '/v1/completions', '/tokenize', '/detokenize', '/v1/models']));
    for (const r of withResponse) expect(JSON.stringify(r.schema?.response), r.url).not.toMatch(/"(anyOf|oneOf|allOf)"/);
    await app.close();
    await tokenizer.close();
  });

  it('the rewritten schemas serialize answers to the same bytes as the originals', async () => {
    const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, prompt_tokens_details: { cached_tokens: 0 } };
    const envelope = { id: 'x', created: 1, model: 'm', usage };
    const completions = [
      { ...envelope, object: 'text_completion', choices: [{ index: 0, text: 'a\nb"', logprobs: null, finish_reason: 'length' }] },
      {
        ...envelope,
        object: 'text_completion',
        choices: [
          {
            index: 0,
            text: 'ab',
            logprobs: { tokens: ['a', 'b\n'], token_logprobs: [null, -0.5], top_logprobs: [null, { 'b\n': -0.5, '1': -9999 }], text_offset: [0, 1] },
            finish_reason: 'stop',
          },
        ],
      },
    ];
    for (const answer of completions) expect(await serialized(serializerSchema(CompletionResponse), answer)).toBe(await serialized(CompletionResponse, answer));
    const top = { token: 'é', logprob: -1.25, bytes: [195, 169] };
    const chats = [
      { ...envelope, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: null, reasoning_content: 'r' }, logprobs: null, finish_reason: 'tool_calls' }] },
      {
        ...envelope,
        object: 'chat.completion',
        choices: [
          { index: 0, message: { role: 'assistant', content: 'é', tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }] }, logprobs: { content: [{ ...top, top_logprobs: [top] }] }, finish_reason: 'stop' },
          { index: 1, message: { role: 'assistant', content: '' }, logprobs: { content: [] }, finish_reason: 'length' },
        ],
      },
    ];
    for (const answer of chats) expect(await serialized(serializerSchema(ChatCompletionResponse), answer)).toBe(await serialized(ChatCompletionResponse, answer));
  });
});

describe('large answers on the wire', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ engine: { maxModelLen: 1 << 17 } });
  });
  afterAll(async () => server?.close());

  const post = async (url: string, payload: Json): Promise<{ status: number; body: string; chunked: boolean }> => {
    const res = await server.app.inject({ method: 'POST', url, payload });
    return { status: res.statusCode, body: res.body, chunked: res.headers['transfer-encoding'] === 'chunked' };
  };

  it('echo + 20 logprobs of 600 prompt tokens: sliced, the bytes the response schema writes', async () => {
    const prompt = Array.from({ length: 600 }, (_, i) => 3 + ((i * 7919) % 4000) % (server.tokenizer.vocabSize - 3));
    const res = await post('/v1/completions', { prompt, max_tokens: 2, ignore_eos: true, echo: true, logprobs: 20, temperature: 0 });
    expect(res.status).toBe(200);
    expect(res.chunked).toBe(true); // written in slices, not by the serializer
    const answer = JSON.parse(res.body) as Json;
    const lp = answer.choices[0].logprobs;
    expect(lp.tokens).toHaveLength(602);
    expect(lp.token_logprobs[0]).toBeNull();
    expect(Object.keys(lp.top_logprobs[1]).length).toBeGreaterThan(0);
    expect(res.body).toBe(await serialized(CompletionResponse, answer));
  });

  it('a small echo answer still goes through the serializer, to the same bytes', async () => {
    const res = await post('/v1/completions', { prompt: [5, 6, 7], max_tokens: 2, echo: true, logprobs: 2, temperature: 0 });
    expect(res.status).toBe(200);
    expect(res.chunked).toBe(false);
    expect(res.body).toBe(await serialized(CompletionResponse, JSON.parse(res.body)));
  });

  it('a chat answer with 20 alternatives for each of 200 tokens: sliced, the same bytes', async () => {
    const res = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 200, ignore_eos: true, logprobs: true, top_logprobs: 20, temperature: 0 });
    expect(res.status).toBe(200);
    expect(res.chunked).toBe(true);
    const answer = JSON.parse(res.body) as Json;
    expect(answer.choices[0].logprobs.content).toHaveLength(200);
    expect(res.body).toBe(await serialized(ChatCompletionResponse, answer));
  });

  it('/detokenize of 65,536 ids: sliced, the same bytes', async () => {
    const tokens = Array.from({ length: 65_536 }, (_, i) => 3 + ((i * 7919) % (server.tokenizer.vocabSize - 3)));
    const res = await post('/detokenize', { tokens });
    expect(res.status).toBe(200);
    expect(res.chunked).toBe(true);
    const answer = JSON.parse(res.body) as Json;
    expect(answer.prompt).toBe(server.tokenizer.decode(tokens, { skipSpecialTokens: false }));
    expect(res.body).toBe(await serialized({ type: 'object', properties: { prompt: { type: 'string' } } }, answer));
  });

  it('/tokenize of ~40,000 ids: sliced, the same bytes', async () => {
    const res = await post('/tokenize', { prompt: 'In the beginning God created the heaven and the earth. '.repeat(4000) });
    expect(res.status).toBe(200);
    expect(res.chunked).toBe(true);
    const answer = JSON.parse(res.body) as Json;
    expect(answer.count).toBeGreaterThan(16_384);
    const schema = { type: 'object', properties: { tokens: { type: 'array', items: { type: 'integer' } }, count: { type: 'integer' }, max_model_len: { anyOf: [{ type: 'integer' }, { type: 'null' }] } } };
    expect(res.body).toBe(await serialized(schema, answer));
  });
});
