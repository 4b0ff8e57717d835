// A tiny Qwen3.5 model served for real: the Engine (worker thread, paged KV for the full-attention
// layers, state slots for the GDN conv and delta-rule states, prefix snapshots) against the float64
// reference, /v1/completions with a token-id prompt, echo and logprobs checked position by position
// against the reference's own log-softmax, and chat replies split into reasoning_content and content.
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import type { GenerateRequest, TokenEvent } from '../src/engine/types.ts';
import { buildApp } from '../src/main/app.ts';
import { loadChatAssets } from '../src/routes/chat-template.ts';
import { parseServerConfig } from '../src/server/config.ts';
import { ServerMetrics } from '../src/server/metrics.ts';
import type { EnginePort } from '../src/server/ports.ts';
import { makeQwen3_5TestModel } from './helpers/qwen3_5-test-model.ts';
import { Qwen3_5Reference } from './helpers/reference-qwen3_5.ts';
import { greedy } from './helpers/sampling.ts';
import { logSoftmax } from './helpers/numerics.ts';
import { collect, done } from './helpers/engine-events.ts';

const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-q35-serve-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const V = 272;

function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % 256);
}

let nextId = 0;
const request = (p: readonly number[], maxTokens: number): GenerateRequest => ({ requestId: `q35-${nextId++}`, promptTokenIds: p, sampling: greedy(maxTokens), reportProgress: false });

describe.each([{ layout: 'text' as const }, { layout: 'multimodal' as const }])('Qwen3.5 ($layout layout) through the Engine', ({ layout }) => {
  let engine: Engine;
  let dir: string;
  beforeAll(async () => {
    dir = join(tmp, `engine-${layout}`);
    makeQwen3_5TestModel(dir, { qwen3_5Layout: layout, extraTensors: layout === 'multimodal' });
    engine = await Engine.start({ modelDir: dir, cacheDir: join(tmp, 'built'), intraOpThreads: 1, pageTokens: 4, prefillChunkTokens: 16, maxBatchedTokens: 40, maxNumSeqs: 8 });
  });
  afterAll(async () => engine.shutdown());

  it('generates the float64 reference model\'s greedy tokens (chunked prefill, paged full-attention KV)', async () => {
    const p = prompt(45, 1);
    const { tokens, events } = await collect(engine, request(p, 10));
    expect(tokens).toHaveLength(10);
    expect(done(events)).toMatchObject({ finishReason: 'length', promptTokens: 45, completionTokens: 10 });
    const ref = new Qwen3_5Reference(openCheckpoint(dir));
    let logits: Float64Array = new Float64Array(0);
    for (const t of p) logits = ref.step(t);
    for (const t of tokens) {
      expect(Math.max(...logits) - logits[t]!).toBeLessThan(1e-3);
      logits = ref.step(t);
    }
  });

  it('6 concurrent requests of mixed lengths give exactly the tokens they give one at a time', async () => {
    const reqs = Array.from({ length: 6 }, (_, i) => ({ p: prompt(1 + ((i * 37) % 70), i + 3), max: 3 + ((i * 5) % 9) }));
    const alone: number[][] = [];
    for (const r of reqs) alone.push((await collect(engine, request(r.p, r.max))).tokens);
    const together = await Promise.all(reqs.map((r) => collect(engine, request(r.p, r.max))));
    expect(together.map((t) => t.tokens)).toEqual(alone);
  });

  it('a repeated prompt resumes from its prefix snapshot (GDN states + KV pages) with the same tokens', async () => {
    const doc = prompt(61, 40);
    const first = await collect(engine, request(doc, 6));
    const again = await collect(engine, request(doc, 6));
    expect(done(again.events).cachedTokens).toBe(60); // the last whole page before the final token
    expect(again.tokens).toEqual(first.tokens);
  });
});

/** The app around an engine and the test model's tokenizer and template, listening on 127.0.0.1. */
async function serve(dir: string, engine: EnginePort) {
  const tokenizer = await TextTokenizer.load(dir);
  const config = parseServerConfig(['--model', dir, '--port', '0'], {});
  const app = buildApp({ engine, tokenizer, chatAssets: await loadChatAssets(dir, tokenizer), config, metrics: new ServerMetrics(config.servedModelName), version: 'test', logger: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return { app, url, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none' }), model: config.servedModelName };
}

describe('Qwen3.5 served through the OpenAI API', () => {
  let engine: Engine;
  let dir: string;
  let server: Awaited<ReturnType<typeof serve>>;
  beforeAll(async () => {
    dir = join(tmp, 'served');
    makeQwen3_5TestModel(dir, { qwen3_5Layout: 'multimodal', seed: 9 });
    engine = await Engine.start({ modelDir: dir, cacheDir: join(tmp, 'built'), intraOpThreads: 1, pageTokens: 4, maxModelLen: 512 });
    server = await serve(dir, engine);
  });
  afterAll(async () => {
    await server.app.close();
    await engine.shutdown();
  });

  it('/v1/completions, token-id prompt, echo + logprobs: every position\'s top logprobs equal the float64 reference\'s', async () => {
    const p = prompt(33, 7);
    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: p, max_tokens: 4, temperature: 0, ignore_eos: true, echo: true, logprobs: 5, return_tokens_as_token_ids: true }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { choices: { logprobs: { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[] } }[] };
    const lp = body.choices[0]!.logprobs;
    const ids = lp.tokens.map((t) => Number(t.replace('token_id:', '')));
    expect(ids.slice(0, p.length)).toEqual(p);
    expect(ids).toHaveLength(p.length + 4);
    expect(lp.token_logprobs[0]).toBeNull();
    // The checker's own reference: float64 logits → log-softmax, teacher-forced over prompt and completion.
    const ref = new Qwen3_5Reference(openCheckpoint(dir));
    let logprobs = logSoftmax(ref.step(ids[0]!));
    for (let i = 1; i < ids.length; i++) {
      expect(lp.token_logprobs[i]).toBeCloseTo(logprobs[ids[i]!]!, 3);
      const top = lp.top_logprobs[i]!;
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(5);
      for (const [tok, value] of Object.entries(top)) expect(value).toBeCloseTo(logprobs[Number(tok.replace('token_id:', ''))]!, 3);
      // The reference's most likely token is among the top entries, and generated tokens are its argmax.
      const best = logprobs.indexOf(Math.max(...logprobs));
      expect(Object.keys(top)).toContain(`token_id:${best}`);
      if (i >= p.length) expect(Math.max(...logprobs) - logprobs[ids[i]!]!).toBeLessThan(1e-3);
      logprobs = logSoftmax(ref.step(ids[i]!));
    }
  });

  it('chat with thinking on (the default): a reply cut by max_tokens is all reasoning_content', async () => {
    const res = await server.client.chat.completions.create({ model: server.model, messages: [{ role: 'user', content: 'Why?' }], max_tokens: 8, temperature: 0 });
    const message = res.choices[0]!.message as { content: string | null; reasoning_content?: string | null };
    expect(res.choices[0]!.finish_reason).toBe('length');
    expect(message.content).toBeNull();
    expect(typeof message.reasoning_content).toBe('string');
    expect(message.reasoning_content!.length).toBeGreaterThan(0);
  });

  it('chat with chat_template_kwargs.enable_thinking false: the reply is all content', async () => {
    const res = await server.client.chat.completions.create({
      model: server.model, messages: [{ role: 'user', content: 'Why?' }], max_tokens: 8, temperature: 0,
      chat_template_kwargs: { enable_thinking: false },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const message = res.choices[0]!.message as { content: string | null; reasoning_content?: string | null };
    expect(message.reasoning_content).toBeNull();
    expect(message.content!.length).toBeGreaterThan(0);
  });
});
