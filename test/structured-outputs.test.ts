// Structured outputs end to end (the real server, the default model, the official openai SDK):
// chat.completions.parse with a zod schema; 20 seeded random JSON Schemas sampled at temperature 1,
// all at once, every answer checked by ajv (an independent validator); json_object; a streamed
// json_schema answer; vLLM's structured_outputs (choice, regex, EBNF grammar) on both endpoints;
// tool_choice required / named and parallel_tool_calls; and the failures: a schema XGrammar cannot
// compile and an unknown keyword in strict mode are 400s naming the field (the server goes on
// serving), and an aborted constrained stream frees its grammar matcher.
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { randomSchema, type JsonSchema } from './helpers/random-schema.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

let server: TestServer;
let client: OpenAI;
let model: string;

beforeAll(async () => {
  server = await startTestServer();
  await server.listen();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  model = server.config.servedModelName;
});
afterAll(async () => server?.close());

/** Validation errors of `data` against `schema` (ajv, strict: unknown keywords in our schemas fail too). */
function validationErrors(schema: JsonSchema, data: unknown): string[] {
  const validate = new Ajv({ strict: true, allErrors: true }).compile(schema);
  return validate(data) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message ?? e.keyword}`);
}

const user = (content: string): OpenAI.Chat.Completions.ChatCompletionMessageParam[] => [{ role: 'user', content }];

describe('response_format', () => {
  it('chat.completions.parse with a zod schema returns the parsed object', async () => {
    const Person = z.object({ name: z.string().max(16), age: z.number().int().min(0).max(120), member: z.boolean() });
    const res = await client.chat.completions.parse({
      model,
      messages: user('Describe a person as JSON.'),
      response_format: zodResponseFormat(Person, 'person'),
      max_tokens: 256,
      seed: 1,
    });
    const choice = res.choices[0]!;
    expect(choice.finish_reason).toBe('stop');
    expect(choice.message.parsed).not.toBeNull();
    expect(Person.parse(choice.message.parsed)).toEqual(choice.message.parsed);
  });

  it('20 seeded random schemas at temperature 1, sampled together: every answer validates', async () => {
    const schemas = Array.from({ length: 20 }, (_, i) => randomSchema(1000 + i));
    const answers = await Promise.all(
      schemas.map((schema, i) =>
        client.chat.completions.create({
          model,
          messages: user('Fill in this record.'),
          response_format: { type: 'json_schema', json_schema: { name: `record_${i}`, schema, strict: true } },
          temperature: 1,
          seed: i,
          max_tokens: 1024,
        }),
      ),
    );
    answers.forEach((res, i) => {
      const choice = res.choices[0]!;
      expect(choice.finish_reason, `schema ${i}`).toBe('stop');
      const data: unknown = JSON.parse(choice.message.content ?? '');
      expect(validationErrors(schemas[i]!, data), `schema ${i}: ${JSON.stringify(schemas[i])}\nanswer: ${choice.message.content}`).toEqual([]);
    });
  });

  it('json_object answers are JSON objects (logit_bias still applies)', async () => {
    // The tiny default model never learned to close a JSON object: left alone it writes keys and
    // values until max_tokens. A bias towards `}` and `"` (sampling options apply on top of the
    // grammar) makes it end; the grammar alone makes what it writes an object.
    const [close] = await server.tokenizer.encode('}', { addSpecialTokens: false });
    const [quote] = await server.tokenizer.encode('"', { addSpecialTokens: false });
    for (const seed of [1, 2, 3, 4]) {
      const res = await client.chat.completions.create({
        model,
        messages: user('Reply with a JSON object.'),
        response_format: { type: 'json_object' },
        logit_bias: { [String(close)]: 14, [String(quote)]: 6 },
        seed,
        max_tokens: 1024,
      });
      expect(res.choices[0]!.finish_reason).toBe('stop');
      const value: unknown = JSON.parse(res.choices[0]!.message.content ?? '');
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
    }
  });

  it('a streamed json_schema answer validates', async () => {
    const schema = randomSchema(7);
    const stream = await client.chat.completions.create({
      model,
      messages: user('Fill in this record.'),
      response_format: { type: 'json_schema', json_schema: { name: 'record', schema, strict: true } },
      stream: true,
      seed: 3,
      max_tokens: 1024,
    });
    let text = '';
    let finish: string | null = null;
    let numChunks = 0;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      numChunks++;
    }
    expect(numChunks).toBeGreaterThan(3);
    expect(finish).toBe('stop');
    expect(validationErrors(schema, JSON.parse(text))).toEqual([]);
  });

  it('max_tokens cuts the JSON: finish_reason length', async () => {
    const res = await client.chat.completions.create({
      model,
      messages: user('Fill in this record.'),
      response_format: { type: 'json_schema', json_schema: { name: 'r', schema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] } } },
      max_tokens: 4,
      seed: 1,
    });
    expect(res.choices[0]!.finish_reason).toBe('length');
    expect(res.choices[0]!.message.content).toMatch(/^\{"te/);
    expect(() => JSON.parse(res.choices[0]!.message.content ?? '')).toThrow();
  });
});

describe('structured_outputs (vLLM)', () => {
  it('choice, regex and an EBNF grammar, on chat and text completions', async () => {
    const choices = ['positive', 'negative', 'neutral'];
    for (const seed of [1, 2, 3]) {
      const res = await client.chat.completions.create({ model, messages: user('Sentiment?'), seed, max_tokens: 16, structured_outputs: { choice: choices } } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
      expect(choices).toContain(res.choices[0]!.message.content);
      expect(res.choices[0]!.finish_reason).toBe('stop');
    }
    const regex = await client.completions.create({ model, prompt: 'Order number:', seed: 1, max_tokens: 32, structured_outputs: { regex: '[A-Z]{2}-[0-9]{3,5}' } } as OpenAI.Completions.CompletionCreateParamsNonStreaming);
    expect(regex.choices[0]!.text).toMatch(/^[A-Z]{2}-[0-9]{3,5}$/);
    const grammar = 'root ::= "(" num (" + " num)* ")"\nnum ::= [1-9] [0-9]?';
    const ebnf = await client.completions.create({ model, prompt: 'A sum:', seed: 2, max_tokens: 64, structured_outputs: { grammar } } as OpenAI.Completions.CompletionCreateParamsNonStreaming);
    expect(ebnf.choices[0]!.text).toMatch(/^\((?:[1-9][0-9]?)(?: \+ [1-9][0-9]?)*\)$/);
    const json = await client.completions.create({ model, prompt: 'JSON:', seed: 2, max_tokens: 64, response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'object', properties: { n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['n'] } } } } as OpenAI.Completions.CompletionCreateParamsNonStreaming);
    expect(JSON.parse(json.choices[0]!.text)).toEqual({ n: expect.any(Number) });
  });
});

describe('tool_choice', () => {
  const weather = { type: 'object', properties: { city: { type: 'string', maxLength: 20 }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } }, required: ['city', 'unit'], additionalProperties: false };
  const time = { type: 'object', properties: { zone: { type: 'string', enum: ['UTC', 'CET', 'PST'] } }, required: ['zone'], additionalProperties: false };
  const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
    { type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: weather, strict: true } },
    { type: 'function', function: { name: 'get_time', description: 'Time in a zone', parameters: time } },
  ];
  const schemaOf: Record<string, JsonSchema> = { get_weather: weather, get_time: time };

  function expectValidCalls(res: OpenAI.Chat.Completions.ChatCompletion, names: readonly string[]): number {
    const choice = res.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    const calls = choice.message.tool_calls ?? [];
    expect(calls.length).toBeGreaterThan(0);
    for (const call of calls) {
      if (call.type !== 'function') throw new Error('not a function call');
      expect(names).toContain(call.function.name);
      expect(validationErrors(schemaOf[call.function.name]!, JSON.parse(call.function.arguments))).toEqual([]);
      expect(call.id).toMatch(/^call_/);
    }
    return calls.length;
  }

  it("'required' gives calls of the offered tools whose arguments validate; parallel_tool_calls false gives one", async () => {
    for (const seed of [1, 2]) {
      const res = await client.chat.completions.create({ model, messages: user('Weather in Paris?'), tools, tool_choice: 'required', parallel_tool_calls: false, seed, max_tokens: 256 });
      expect(expectValidCalls(res, ['get_weather', 'get_time'])).toBe(1);
    }
    // Parallel calls go on until the model ends its turn, which the tiny model rarely does on its own:
    // a bias towards <|im_end|> (allowed only between complete calls) lets it.
    const endOfTurn = server.tokenizer.tokenToId('<|im_end|>');
    expect(endOfTurn).not.toBeNull();
    const numCalls: number[] = [];
    for (const [seed, bias] of [[6, 8], [5, 12]] as const) {
      const parallel = await client.chat.completions.create({ model, messages: user('Weather in Paris and the time in CET?'), tools, tool_choice: 'required', seed, logit_bias: { [String(endOfTurn)]: bias }, max_tokens: 1024 });
      numCalls.push(expectValidCalls(parallel, ['get_weather', 'get_time']));
    }
    expect(Math.max(...numCalls)).toBeGreaterThan(1); // several calls in one reply
  });

  it('a named function gives exactly one call of it, streamed too', async () => {
    const named = { type: 'function' as const, function: { name: 'get_time' } };
    const res = await client.chat.completions.create({ model, messages: user('What time is it?'), tools, tool_choice: named, seed: 3, max_tokens: 256 });
    expect(expectValidCalls(res, ['get_time'])).toBe(1);
    const stream = client.chat.completions.stream({ model, messages: user('What time is it?'), tools, tool_choice: named, seed: 4, max_tokens: 256 });
    const final = await stream.finalChatCompletion();
    expect(expectValidCalls(final, ['get_time'])).toBe(1);
  });

  it('a named function that is not offered is a 400 naming tool_choice', async () => {
    const err = await client.chat.completions.create({ model, messages: user('hi'), tools, tool_choice: { type: 'function', function: { name: 'nope' } }, max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('tool_choice');
  });
});

describe('failures', () => {
  async function badRequest(body: Record<string, unknown>): Promise<InstanceType<typeof OpenAI.BadRequestError>> {
    const err = await client.chat.completions.create({ model, messages: user('hi'), max_tokens: 8, ...body } as unknown as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    return err as InstanceType<typeof OpenAI.BadRequestError>;
  }

  it('a schema XGrammar cannot compile is a 400 naming response_format with its reason; the server goes on serving', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ type: 'object', properties: { a: { type: 'integer', minimum: 5, maximum: 1 } } }, /minimum greater than maximum/],
      [{ type: 'colour' }, /Unsupported type "colour"/],
      [{ type: 'object', properties: { a: { $ref: '#/$defs/missing' } } }, /\$defs/],
      [{ type: 'string', pattern: '[a-z' }, /Unclosed/],
    ];
    for (const [schema, reason] of cases) {
      const err = await badRequest({ response_format: { type: 'json_schema', json_schema: { name: 'bad', schema } } });
      expect(err.param).toBe('response_format');
      expect(err.message).toMatch(reason);
    }
    const stream = await badRequest({ stream: true, response_format: { type: 'json_schema', json_schema: { name: 'bad', schema: { type: 'colour' } } } });
    expect(stream.param).toBe('response_format');
    const regex = await badRequest({ structured_outputs: { regex: '(?=a)b' } });
    expect(regex.param).toBe('structured_outputs.regex');
    expect(regex.message).toMatch(/Lookahead is not supported/);
    const ebnf = await badRequest({ structured_outputs: { grammar: 'root ::= "a" |' } });
    expect(ebnf.param).toBe('structured_outputs.grammar');
    // Still serving, constrained and not.
    const ok = await client.chat.completions.create({ model, messages: user('Yes or no?'), max_tokens: 8, seed: 1, structured_outputs: { choice: ['yes', 'no'] } } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
    expect(['yes', 'no']).toContain(ok.choices[0]!.message.content);
    const plain = await client.chat.completions.create({ model, messages: user('Hello'), max_tokens: 4 });
    expect(plain.choices[0]!.message.role).toBe('assistant');
  });

  it('strict mode refuses unknown keywords (response_format and tools); non-strict ignores them', async () => {
    const schema = { type: 'object', properties: { tags: { type: 'array', items: { type: 'string', maxLength: 4 }, maxItems: 2, uniqueItems: true } }, required: ['tags'] };
    const strict = await badRequest({ response_format: { type: 'json_schema', json_schema: { name: 's', schema, strict: true } } });
    expect(strict.param).toBe('response_format');
    expect(strict.message).toMatch(/'uniqueItems' \(at 'properties\.tags\.items'|uniqueItems.*properties\.tags/);
    const tool = await badRequest({ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { x: { type: 'integer', multipleOf: 3 } } }, strict: true } }], tool_choice: 'required' });
    expect(tool.param).toBe('tools');
    expect(tool.message).toMatch(/multipleOf/);
    const lax = await client.chat.completions.create({ model, messages: user('Tags?'), max_tokens: 64, seed: 1, response_format: { type: 'json_schema', json_schema: { name: 's', schema, strict: false } } });
    expect(lax.choices[0]!.finish_reason).toBe('stop');
    expect(JSON.parse(lax.choices[0]!.message.content ?? '')).toEqual({ tags: expect.any(Array) });
  });

  it('response_format and structured_outputs together, or with a forced tool call, are 400s', async () => {
    expect((await badRequest({ response_format: { type: 'json_object' }, structured_outputs: { choice: ['a'] } })).param).toBe('structured_outputs');
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    expect((await badRequest({ response_format: { type: 'json_object' }, tools, tool_choice: 'required' })).param).toBe('tool_choice');
  });

  it('a constrained stream aborted mid-way frees its grammar matcher', async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      {
        model,
        messages: user('Write a long record.'),
        response_format: { type: 'json_schema', json_schema: { name: 'long', schema: { type: 'array', items: { type: 'integer', minimum: 10, maximum: 99 }, minItems: 500 } } },
        stream: true,
        max_tokens: 4000,
        seed: 1,
      },
      { signal: controller.signal },
    );
    let numChunks = 0;
    let matchersWhileStreaming = -1;
    // The SDK ends the iteration quietly when its signal aborts.
    for await (const _chunk of stream) {
      if (++numChunks === 5) {
        matchersWhileStreaming = server.engine.stats().grammarMatchers ?? -1;
        controller.abort();
      }
    }
    expect(numChunks).toBe(5); // it was cut, not finished (500 numbers take far more chunks)
    expect(matchersWhileStreaming).toBe(1);
    await waitEngineIdle(server.engine);
    for (let i = 0; i < 100 && (server.engine.stats().grammarMatchers ?? -1) !== 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(server.engine.stats().grammarMatchers).toBe(0);
    expect(server.engine.stats().numRunning).toBe(0);
  });
});
