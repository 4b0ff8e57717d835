// Tool calls in chat replies (src/routes/chat-completions/tool-calls.ts): the Hermes-style parser,
// whole and split at every character; the chat formatter's non-streamed message and its streamed
// chunks, the latter accumulated by the official openai SDK's own stream reader, and
// parallel_tool_calls: false keeping one call; and the route with the real server: tools rendered into
// the prompt, tool_choice 'none', and 'required' / a named function without tools refused (forced calls
// themselves: test/structured-outputs.test.ts).
import OpenAI from 'openai';
import { ChatCompletionStream } from 'openai/lib/ChatCompletionStream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chatChunks, chatCompletion, type ChatFormatContext } from '../src/routes/chat-completions/format.ts';
import { parseToolCalls, ToolCallParser, type ToolCall } from '../src/routes/chat-completions/tool-calls.ts';
import { TokenText } from '../src/routes/common/logprobs.ts';
import type { GenerationEvent } from '../src/server/generation.ts';
import type { TokenizerPort } from '../src/server/ports.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

const CALL_A = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>';
const CALL_B = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>';

const named = (calls: readonly ToolCall[]): [string, unknown][] => calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]);

describe('ToolCallParser', () => {
  it('splits content and calls; ids are unique call_ ids', () => {
    const { content, calls } = parseToolCalls(`Let me check.\n${CALL_A}\n${CALL_B}`);
    expect(content).toBe('Let me check.');
    expect(named(calls)).toEqual([
      ['get_weather', { city: 'Paris', unit: 'celsius' }],
      ['get_time', { zone: 'CET' }],
    ]);
    expect(calls.every((c) => /^call_[0-9a-f]{24}$/.test(c.id) && c.type === 'function')).toBe(true);
    expect(new Set(calls.map((c) => c.id)).size).toBe(2);
  });

  it('gives null content when the reply is only calls, and plain text back untouched', () => {
    expect(parseToolCalls(`${CALL_A}\n`).content).toBeNull();
    expect(parseToolCalls('Just words, a < sign and <tool no call.')).toEqual({ content: 'Just words, a < sign and <tool no call.', calls: [] });
  });

  it.each([
    ['JSON that does not parse', '<tool_call>\n{"name": "f", "arguments": {</tool_call>'],
    ['a body without a name', '<tool_call>{"arguments": {}}</tool_call>'],
    ['an unterminated block', 'before <tool_call>\n{"name": "f"'],
  ])('keeps %s as content, nothing lost', (_what, text) => {
    expect(parseToolCalls(text)).toEqual({ content: text, calls: [] });
  });

  it('streamed in pieces split at every character gives the same content and calls, never half a tag', () => {
    const text = `Sure <b>.${CALL_A}between${CALL_B} after <tool_c`;
    const whole = parseToolCalls(text);
    for (let cut = 1; cut < text.length; cut++) {
      for (const pieces of [[text.slice(0, cut), text.slice(cut)], Array.from(text)]) {
        const parser = new ToolCallParser();
        let content = '';
        const calls: ToolCall[] = [];
        for (const piece of pieces) {
          const r = parser.push(piece);
          expect(r.content).not.toMatch(/<tool_call|<\/tool_call/);
          content += r.content;
          calls.push(...r.calls);
        }
        content += parser.finish().content;
        expect(content).toBe('Sure <b>.between after <tool_c');
        expect(named(calls)).toEqual(named(whole.calls));
      }
    }
  });
});

/** The events of one choice whose reply text arrives in the given pieces. */
async function* events(pieces: readonly string[], finishReason: 'stop' | 'length' = 'stop'): AsyncGenerator<GenerationEvent> {
  for (const text of pieces) yield { type: 'delta', index: 0, text, tokens: [] };
  yield { type: 'finish', index: 0, finishReason, promptTokens: 5, completionTokens: pieces.length, cachedTokens: 0 };
}

const ctx = (parseToolCalls: boolean): ChatFormatContext => ({
  id: 'chatcmpl-test',
  created: 1_700_000_000,
  model: 'test',
  n: 1,
  promptTokens: 5,
  withLogprobs: false,
  tokenText: new TokenText({ tokenBytes: () => new Uint8Array(0) } as unknown as TokenizerPort, false), // unused: no logprobs
  parseToolCalls,
});

const REPLY = ['Checking', ' now.\n<tool', '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>'];

describe('chat formatter with tools', () => {
  it('non-streamed: message.tool_calls, content outside the block, finish_reason tool_calls', async () => {
    const res = await chatCompletion(events(REPLY), ctx(true));
    const choice = res.choices[0];
    expect(choice?.message.content).toBe('Checking now.');
    expect(named(choice?.message.tool_calls ?? [])).toEqual([['get_weather', { city: 'Paris' }]]);
    expect(choice?.finish_reason).toBe('tool_calls');
    // Cut by max_tokens: the call is reported, the reason stays 'length'.
    expect((await chatCompletion(events(REPLY, 'length'), ctx(true))).choices[0]?.finish_reason).toBe('length');
    // Without tools in the request the text is left alone.
    const plain = await chatCompletion(events(REPLY), ctx(false));
    expect(plain.choices[0]?.message).toEqual({ role: 'assistant', content: REPLY.join('') });
    expect(plain.choices[0]?.finish_reason).toBe('stop');
  });

  it('parallel_tool_calls false: one call is kept, whole and streamed', async () => {
    const two = [`${CALL_A}\n`, CALL_B];
    const whole = await chatCompletion(events(two), { ...ctx(true), maxToolCalls: 1 });
    expect(named(whole.choices[0]?.message.tool_calls ?? [])).toEqual([['get_weather', { city: 'Paris', unit: 'celsius' }]]);
    const all = await chatCompletion(events(two), ctx(true));
    expect(all.choices[0]?.message.tool_calls).toHaveLength(2);
    const deltas: unknown[] = [];
    for await (const c of chatChunks(events(two), { ...ctx(true), maxToolCalls: 1 }, { includeUsage: false, includeProgress: false, returnProgress: false })) {
      const delta = (c as { choices: { delta: { tool_calls?: unknown[] } }[] }).choices[0]?.delta;
      if (delta?.tool_calls !== undefined) deltas.push(...delta.tool_calls);
    }
    expect(deltas).toHaveLength(1);
  });

  it('streamed: the openai SDK accumulates the same message from the chunks', async () => {
    const chunks: object[] = [];
    for await (const c of chatChunks(events(REPLY), ctx(true), { includeUsage: false, includeProgress: false, returnProgress: false })) chunks.push(c);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const c of chunks) controller.enqueue(new TextEncoder().encode(`${JSON.stringify(c)}\n`));
        controller.close();
      },
    });
    const final = await ChatCompletionStream.fromReadableStream(body).finalChatCompletion();
    const message = final.choices[0]?.message;
    expect(message?.content).toBe('Checking now.\n');
    expect(message?.tool_calls?.map((c) => (c.type === 'function' ? [c.function.name, JSON.parse(c.function.arguments)] : null))).toEqual([['get_weather', { city: 'Paris' }]]);
    expect(message?.tool_calls?.[0]?.id).toMatch(/^call_/);
    expect(final.choices[0]?.finish_reason).toBe('tool_calls');
  });
});

describe('chat route with tools (real server, openai SDK)', () => {
  let server: TestServer;
  let client: OpenAI;
  const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
    { type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
  ];
  beforeAll(async () => {
    server = await startTestServer();
    await server.listen();
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  afterAll(async () => server?.close());

  it('renders the tools into the prompt; tool_choice none leaves them out; replies are valid chat completions', async () => {
    const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '18 C, sunny' },
    ];
    const model = server.config.servedModelName;
    const auto = await client.chat.completions.create({ model, messages, tools, max_tokens: 4, temperature: 0 });
    const none = await client.chat.completions.create({ model, messages, tools, tool_choice: 'none', max_tokens: 4, temperature: 0 });
    const without = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
    expect(auto.usage?.prompt_tokens).toBeGreaterThan((without.usage?.prompt_tokens ?? 0) + 20); // the tool signatures
    expect(none.usage?.prompt_tokens).toBe(without.usage?.prompt_tokens);
    for (const res of [auto, none, without]) {
      expect(['stop', 'length', 'tool_calls']).toContain(res.choices[0]?.finish_reason);
      expect(res.choices[0]?.message.role).toBe('assistant');
    }
  });

  it.each([['required' as const], [{ type: 'function' as const, function: { name: 'get_weather' } }]])('tool_choice %j without tools is a 400 naming tool_choice', async (choice) => {
    const err = await client.chat.completions
      .create({ model: server.config.servedModelName, messages: [{ role: 'user', content: 'hi' }], tool_choice: choice, max_tokens: 2 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('tool_choice');
    expect((err as Error).message).toMatch(/needs at least one tool/);
  });
});
