// Reasoning in chat replies (src/routes/chat-completions/reasoning.ts): <think>…</think> becomes
// reasoning_content, whole and streamed; the parser split at every character; the reasoning mode read
// from the rendered prompt; and a reasoning answer streamed over HTTP to the official openai client:
// reasoning_content chunks first, then content. The HTTP test serves the real app, tokenizer and
// template of a tiny Qwen3.5 test model; its engine replays a fixed reply, since a random-weight model
// cannot be made to reason (test/qwen3_5-serving.test.ts runs the real engine).
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import type { EngineHealth, EngineStats, PrefixCacheDeletion, PrefixCacheEntryInfo, SubmitRequest, TokenEvent } from '../src/engine/types.ts';
import { buildApp } from '../src/main/app.ts';
import { loadChatAssets } from '../src/routes/chat-template.ts';
import { chatChunks, chatCompletion, type ChatFormatContext } from '../src/routes/chat-completions/format.ts';
import { reasoningMode, ReasoningParser, splitReasoning } from '../src/routes/chat-completions/reasoning.ts';
import { TokenText } from '../src/routes/common/logprobs.ts';
import { parseServerConfig } from '../src/server/config.ts';
import type { GenerationEvent } from '../src/server/generation.ts';
import { ServerMetrics } from '../src/server/metrics.ts';
import type { EnginePort, TokenizerPort } from '../src/server/ports.ts';
import { QWEN3_5_TEST_TEMPLATE, makeQwen3_5TestModel } from './helpers/qwen3_5-test-model.ts';

const IN_REASONING = { startsInReasoning: true };
const NOT_YET = { startsInReasoning: false };
const REPLY = '\nThe user asks why.\nI should answer briefly.\n</think>\n\nBecause it is.';

describe('ReasoningParser', () => {
  it('splits a reply that starts inside the prompt\'s <think> block', () => {
    expect(splitReasoning(REPLY, IN_REASONING)).toEqual({ reasoning: 'The user asks why.\nI should answer briefly.', content: 'Because it is.' });
  });

  it('takes an opening <think> the model wrote itself, and leaves replies without one as content', () => {
    expect(splitReasoning(`  <think>${REPLY}`, NOT_YET)).toEqual({ reasoning: 'The user asks why.\nI should answer briefly.', content: 'Because it is.' });
    expect(splitReasoning('Just an answer, no <think> here.', NOT_YET)).toEqual({ reasoning: null, content: 'Just an answer, no <think> here.' });
  });

  it('a reply cut inside its reasoning is all reasoning', () => {
    expect(splitReasoning('\nStill thinking about </th', IN_REASONING)).toEqual({ reasoning: 'Still thinking about </th', content: '' });
  });

  it.each([[IN_REASONING, REPLY], [NOT_YET, `<think>${REPLY}`]])('streamed one character at a time gives the same split and never half a tag (%j)', (mode, reply) => {
    const whole = splitReasoning(reply, mode);
    for (const size of [1, 2, 3, 7]) {
      const parser = new ReasoningParser(mode);
      let reasoning = '';
      let content = '';
      for (let i = 0; i < reply.length; i += size) {
        const out = parser.push(reply.slice(i, i + size));
        reasoning += out.reasoning;
        content += out.content;
        expect(out.reasoning + out.content).not.toMatch(/<\/?t?h?i?n?k?>?$|<\/think>|<think>/);
      }
      const end = parser.finish();
      expect(reasoning + end.reasoning).toBe('\nThe user asks why.\nI should answer briefly.\n');
      expect(content + end.content).toBe(whole.content);
    }
  });

  it('reads the mode from the rendered prompt; templates without </think> are not parsed', () => {
    expect(reasoningMode(QWEN3_5_TEST_TEMPLATE, '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n')).toEqual(IN_REASONING);
    expect(reasoningMode(QWEN3_5_TEST_TEMPLATE, '<|im_start|>assistant\n<think>\n\n</think>\n\n')).toEqual(NOT_YET);
    expect(reasoningMode('{{ messages[0].content }}', '<think>\n')).toBeNull();
    expect(reasoningMode(null, '<think>\n')).toBeNull();
  });
});

describe('chat formatting with reasoning', () => {
  async function* events(pieces: readonly string[]): AsyncGenerator<GenerationEvent> {
    for (const text of pieces) yield { type: 'delta', index: 0, text, tokens: [] };
    yield { type: 'finish', index: 0, finishReason: 'stop', promptTokens: 5, completionTokens: pieces.length, cachedTokens: 0 };
  }
  const ctx: ChatFormatContext = {
    id: 'chatcmpl-test', created: 1_700_000_000, model: 'test', n: 1, promptTokens: 5, withLogprobs: false,
    tokenText: new TokenText({ tokenBytes: () => new Uint8Array(0) } as unknown as TokenizerPort, false),
    parseToolCalls: false, reasoning: IN_REASONING,
  };
  const pieces = REPLY.match(/[\s\S]{1,4}/g) ?? [];

  it('whole: message.reasoning_content and content', async () => {
    const res = await chatCompletion(events(pieces), ctx);
    expect(res.choices[0]?.message).toEqual({ role: 'assistant', content: 'Because it is.', reasoning_content: 'The user asks why.\nI should answer briefly.' });
  });

  it('streamed: reasoning_content deltas, then content deltas', async () => {
    const kinds: string[] = [];
    for await (const c of chatChunks(events(pieces), ctx, { includeUsage: false, includeProgress: false, returnProgress: false })) {
      const delta = (c as { choices: { delta: Record<string, unknown> }[] }).choices[0]?.delta ?? {};
      if (typeof delta['reasoning_content'] === 'string') kinds.push('reasoning');
      if (typeof delta['content'] === 'string' && delta['content'] !== '') kinds.push('content');
    }
    expect(kinds.indexOf('content')).toBeGreaterThan(kinds.lastIndexOf('reasoning'));
    expect(kinds.filter((k) => k === 'reasoning').length).toBeGreaterThan(3);
  });
});

/** Replays `reply` (as token ids) for every request. */
class ReplayEngine implements EnginePort {
  readonly maxModelLen = 4096;
  constructor(readonly config: EnginePort['config'], private readonly reply: readonly number[]) {}
  async *generate(req: SubmitRequest): AsyncIterable<TokenEvent> {
    for (const tokenId of this.reply) yield { type: 'token', tokenId };
    const timing = { queueSeconds: 0, prefillSeconds: 0, decodeSeconds: 0 };
    yield { type: 'done', finishReason: 'stop', stopTokenId: null, promptTokens: req.promptTokenIds.length, completionTokens: this.reply.length, cachedTokens: 0, timing };
  }
  abort(): void {}
  stats(): EngineStats {
    return { numRunning: 0, numWaiting: 0, waitingPromptTokens: 0, kvPagesUsed: 0, kvPagesTotal: 0, stateSlotsUsed: 0, stateSlotsTotal: 0, stateBytesInUse: 0, prefixCacheBytes: 0, spikeZeros: 0, spikeValues: 0, numPreemptions: 0 };
  }
  health(): EngineHealth {
    return { condition: 'ready', restarts: 0, lastFailure: null };
  }
  async listPrefixCache(): Promise<PrefixCacheEntryInfo[]> {
    return [];
  }
  async deletePrefixCache(): Promise<PrefixCacheDeletion> {
    return { memory: false, disk: false };
  }
  async shutdown(): Promise<void> {}
}

describe('a reasoning answer over HTTP (openai client, stream)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-reasoning-'));
  let app: ReturnType<typeof buildApp>;
  let client: OpenAI;
  let model: string;
  beforeAll(async () => {
    const dir = join(tmp, 'model');
    const ckpt = makeQwen3_5TestModel(dir);
    const tokenizer = await TextTokenizer.load(dir);
    const reply = Array.from(await tokenizer.encodeToInt32(REPLY, { addSpecialTokens: false }));
    const config = parseServerConfig(['--model', dir, '--port', '0'], {});
    model = config.servedModelName;
    app = buildApp({
      engine: new ReplayEngine(parseModelConfig(ckpt.rawConfig), reply), tokenizer, chatAssets: await loadChatAssets(dir, tokenizer),
      config, metrics: new ServerMetrics(model), version: 'test', logger: false,
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    client = new OpenAI({ baseURL: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1`, apiKey: 'none', maxRetries: 0 });
  });
  afterAll(async () => {
    await app.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('streams reasoning_content, then content; the whole answer splits the same way', async () => {
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Why?' }], stream: true });
    const order: string[] = [];
    let reasoning = '';
    let content = '';
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
      if (delta?.reasoning_content !== undefined) {
        reasoning += delta.reasoning_content;
        order.push('reasoning');
      }
      if (typeof delta?.content === 'string' && delta.content !== '') {
        content += delta.content;
        order.push('content');
      }
    }
    expect(reasoning.trim()).toBe('The user asks why.\nI should answer briefly.');
    expect(content).toBe('Because it is.');
    expect(order[0]).toBe('reasoning');
    expect(order.indexOf('content')).toBeGreaterThan(order.lastIndexOf('reasoning'));
    const whole = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Why?' }] });
    expect(whole.choices[0]?.message).toMatchObject({ content: 'Because it is.', reasoning_content: 'The user asks why.\nI should answer briefly.' });
  });
});
