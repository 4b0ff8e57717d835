// Exact reuse of a conversation, end to end with the openai client on the default model: each turn
// resumes from the exact snapshot the previous turn left at its end (prompt + completion), so only
// the new message is prefilled; and the same prompt again resumes all but its last token. The
// model's replies are sent back as text, which the tokenizer would encode differently from the ids
// the model sampled; the server remembers those ids (src/routes/chat-completions/reply-ids.ts), also
// for streamed turns, heavy chats rendered in the prompt worker and large bodies parsed there, and
// /tokenize counts the same prompt tokens. Replies whose text is not the model's whole output (cut by
// a stop string, tool calls taken out) are not remembered.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import type { ChatCompletionCreateParamsNonStreaming, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import type { ChatTemplateMessage } from '../src/routes/chat-template.ts';
import { chatPromptTokens } from '../src/routes/chat-completions/prompt.ts';
import { buildTestApp, startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

let server: TestServer;
let client: OpenAI;

/** With `large`, the body carries 300 KB of a field the server ignores: past 256 KiB, the prompt worker parses it. */
function withPadding(large: boolean, params: ChatCompletionCreateParamsNonStreaming): ChatCompletionCreateParamsNonStreaming {
  return large ? ({ ...params, padding: 'x'.repeat(300_000) } as ChatCompletionCreateParamsNonStreaming) : params;
}

beforeAll(async () => {
  server = await startTestServer();
  await server.listen();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
});
afterAll(async () => server?.close());

describe('conversation reuse', () => {
  it('a 10-turn chat: every turn after the first has cached_tokens ≥ the previous turn\'s prompt + completion tokens', async () => {
    const questions = [
      'What does HARBOUR mean?',
      'And what does LANTERN mean?',
      'Tell me about the sea.',
      'What does ORCHARD mean?',
      'Who was Moses?',
      'What does MEADOW mean?',
      'Say something about the stars.',
      'What does ANCHOR mean?',
      'What is a river?',
      'What does THIMBLE mean?',
    ];
    const messages: ChatCompletionMessageParam[] = [{ role: 'system', content: 'You are a helpful assistant.' }];
    let previous: { prompt: number; completion: number } | null = null;
    const cached: number[] = [];
    for (const question of questions) {
      messages.push({ role: 'user', content: question });
      const reply = await client.chat.completions.create({ model: server.config.servedModelName, messages, max_tokens: 24, temperature: 0 });
      const usage = reply.usage!;
      const hit = usage.prompt_tokens_details?.cached_tokens ?? 0;
      cached.push(hit);
      if (previous !== null) expect(hit, `turn ${cached.length}`).toBeGreaterThanOrEqual(previous.prompt + previous.completion);
      expect(hit).toBeLessThan(usage.prompt_tokens);
      previous = { prompt: usage.prompt_tokens, completion: usage.completion_tokens };
      messages.push({ role: 'assistant', content: reply.choices[0]!.message.content ?? '' });
    }
    expect(cached[0]).toBe(0);
    await waitEngineIdle(server.engine);
  });

  it('streamed turns resume the same way', async () => {
    const messages: ChatCompletionMessageParam[] = [{ role: 'system', content: 'You answer in one sentence.' }];
    let previous: { prompt: number; completion: number } | null = null;
    for (const question of ['What does WILLOW mean?', 'And what does CANDLE mean?', 'Say something about bread.', 'What does PEBBLE mean?']) {
      messages.push({ role: 'user', content: question });
      const stream = await client.chat.completions.create({
        model: server.config.servedModelName,
        messages,
        max_tokens: 20,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let content = '';
      let usage: OpenAI.CompletionUsage | null | undefined = null;
      for await (const chunk of stream) {
        content += chunk.choices[0]?.delta?.content ?? '';
        if (chunk.usage) usage = chunk.usage;
      }
      const hit = usage!.prompt_tokens_details?.cached_tokens ?? 0;
      if (previous !== null) expect(hit).toBeGreaterThanOrEqual(previous.prompt + previous.completion);
      previous = { prompt: usage!.prompt_tokens, completion: usage!.completion_tokens };
      messages.push({ role: 'assistant', content });
    }
    await waitEngineIdle(server.engine);
  });

  it('heavy chats (rendered in the prompt worker) and large bodies (parsed there) resume too; /tokenize counts the same prompt', async () => {
    // 70 messages: past the inline limit of 64, so the prompt worker renders them.
    const messages: ChatCompletionMessageParam[] = [{ role: 'system', content: 'You keep notes.' }];
    for (let i = 0; i < 34; i++) messages.push({ role: 'user', content: `Note ${i}.` }, { role: 'assistant', content: `Noted ${i}.` });
    let previous: { prompt: number; completion: number } | null = null;
    for (const [turn, question] of ['What does HARBOUR mean?', 'What does LANTERN mean?', 'What does ORCHARD mean?'].entries()) {
      messages.push({ role: 'user', content: question });
      const reply = await client.chat.completions.create(withPadding(turn === 2, { model: server.config.servedModelName, messages, max_tokens: 24, temperature: 0 }));
      const usage = reply.usage!;
      const hit = usage.prompt_tokens_details?.cached_tokens ?? 0;
      if (previous !== null) expect(hit, `turn ${turn + 1}`).toBeGreaterThanOrEqual(previous.prompt + previous.completion);
      previous = { prompt: usage.prompt_tokens, completion: usage.completion_tokens };
      const content = reply.choices[0]!.message.content ?? '';
      expect(server.app.replies.get(content)).not.toBeNull();
      messages.push({ role: 'assistant', content });
    }
    await waitEngineIdle(server.engine);

    // These replies' ids happen to be what their text encodes to. A remembered reply whose ids are not
    // (one id per character) shows that the worker splices: it counts more prompt tokens than the text.
    const content = 'Noted, with thanks: the harbour is where ships rest.';
    const own: number[] = [];
    for (const ch of content) own.push(...(await server.tokenizer.encode(ch, { addSpecialTokens: false })));
    const canonical = await server.tokenizer.encode(content, { addSpecialTokens: false });
    expect(own.length).toBeGreaterThan(canonical.length);
    expect(server.app.replies.remember(content, own)).toBe(true);
    const chat: ChatCompletionMessageParam[] = [...messages, { role: 'assistant', content }, { role: 'user', content: 'Thanks.' }];
    const expected = await chatPromptTokens(server.app, { messages: chat as unknown as ChatTemplateMessage[], addGenerationPrompt: true });
    const plain = { tokenizer: server.app.tokenizer, chatAssets: server.app.chatAssets, serverConfig: server.app.serverConfig };
    const asText = await chatPromptTokens(plain, { messages: chat as unknown as ChatTemplateMessage[], addGenerationPrompt: true });
    expect(expected.length - asText.length).toBe(own.length - canonical.length);
    for (const large of [false, true]) {
      const reply = await client.chat.completions.create(withPadding(large, { model: server.config.servedModelName, messages: chat, max_tokens: 1, temperature: 0 }));
      expect(reply.usage!.prompt_tokens, large ? 'large body' : 'heavy chat').toBe(expected.length);
    }
    const tokenized = await server.app.inject({ method: 'POST', url: '/tokenize', payload: { messages: chat } });
    expect(tokenized.json().tokens).toEqual([...expected]);
    await waitEngineIdle(server.engine);
  });

  it('a reply cut by a stop string or made into tool calls is not remembered; --conversation-cache-entries 0 remembers none', async () => {
    const ask = async (extra: Record<string, unknown>) => {
      const res = await server.app.inject({
        method: 'POST',
        url: '/v1/chat/completions',
        payload: { messages: [{ role: 'user', content: 'What does HARBOUR mean?' }], max_tokens: 24, temperature: 0, ...extra },
      });
      expect(res.statusCode, res.body).toBe(200);
      return res.json() as { choices: { message: { content: string | null; tool_calls?: unknown[] }; finish_reason: string }[] };
    };
    const whole = await ask({});
    const text = whole.choices[0]!.message.content ?? '';
    expect(server.app.replies.get(text)).not.toBeNull();
    // A stop string inside the reply: the text ends before it, the ids went past it.
    const stop = text.split(' ')[1]!;
    const cut = await ask({ stop: [stop] });
    const cutText = cut.choices[0]!.message.content ?? '';
    expect(cutText.length).toBeLessThan(text.length);
    expect(server.app.replies.get(cutText)).toBeNull();
    const tools = [{ type: 'function', function: { name: 'define', parameters: { type: 'object', properties: { word: { enum: ['harbour'] } }, required: ['word'] } } }];
    const called = await ask({ tools, tool_choice: 'required', max_tokens: 64 });
    expect(called.choices[0]!.message.tool_calls?.length).toBeGreaterThan(0);
    expect(server.app.replies.get(called.choices[0]!.message.content ?? '')).toBeNull();

    const { app } = await buildTestApp(server.engine, server.tokenizer, ['--conversation-cache-entries', '0']);
    try {
      const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0 } });
      expect(res.statusCode).toBe(200);
      expect(app.replies.enabled).toBe(false);
      expect(app.replies.size).toBe(0);
    } finally {
      await app.close();
    }
    await waitEngineIdle(server.engine);
  });

  it('the same prompt again resumes all but its last token, with the same answer', async () => {
    const prompt = 'A short prompt that a client sends twice: the second time only its last token is computed.';
    const ask = () => client.completions.create({ model: server.config.servedModelName, prompt, max_tokens: 8, temperature: 0 });
    const first = await ask();
    const second = await ask();
    expect(first.usage!.prompt_tokens).toBeGreaterThan(8);
    const details = (second.usage as { prompt_tokens_details?: { cached_tokens?: number } }).prompt_tokens_details;
    expect(details?.cached_tokens).toBe(first.usage!.prompt_tokens - 1);
    expect(second.choices[0]!.text).toBe(first.choices[0]!.text);
  });
});
