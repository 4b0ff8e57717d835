// SpikingBrain 2.0 (sse_swa_moba) behind the chat API, with the official `openai` client: a tiny random
// checkpoint with the released configs' options (test/fixtures/spikingbrain2-crosscheck/released-options:
// full, MoBA and hybrid SSE + window layers; W = 6 keys, MoBA chunks of C = 8, top-3) and a vocabulary
// that fits the byte-level test tokenizer with the ChatML template (helpers/server.ts). The chat prompts
// run past K·C = 24 tokens, so MoBA leaves chunks out, and are prefilled in chunks of 5 tokens.
//
// Each reply is checked token by token against the float64 reference (helpers/reference-spikingbrain2.ts)
// run on the prompt ids `/tokenize` gives for the same messages: prompt tokens MoBA-selected, generated
// ones dense. Tolerance 1e-4 on logprobs. A second turn (the reply sent back as an assistant message)
// must equal a fresh computation of its prompt, and resume at most the first turn's prompt (a MoBA
// model keeps no end-of-reply snapshot: its reply was computed densely, the next turn reads it as
// prompt tokens).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSpikingBrain2Checkpoint } from './helpers/checkpoint-writer.ts';
import { openSpikingBrain2Dir, SpikingBrain2Reference } from './helpers/reference-spikingbrain2.ts';
import { BYTE_VOCAB_SIZE, startTestServer, waitEngineIdle, writeByteTokenizer, type TestServer } from './helpers/server.ts';
import { logSoftmax } from './helpers/numerics.ts';

const TOL = 1e-4;
const FIXTURE_CONFIG = join(import.meta.dirname, 'fixtures', 'spikingbrain2-crosscheck', 'released-options', 'config.json');
const MAX_TOKENS = 10;

const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-spb2-chat-'));
const dir = join(tmp, 'model');
let server: TestServer;
let client: OpenAI;

beforeAll(async () => {
  const raw = JSON.parse(readFileSync(FIXTURE_CONFIG, 'utf8')) as Record<string, unknown>;
  writeSpikingBrain2Checkpoint(dir, { ...raw, vocab_size: BYTE_VOCAB_SIZE, bos_token_id: 257, eos_token_id: 256 }, 11);
  writeByteTokenizer(dir);
  server = await startTestServer({ modelDir: dir, engine: { pageTokens: 4, prefillChunkTokens: 5, maxBatchedTokens: 40, maxNumSeqs: 4 } });
  await server.listen();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
afterAll(async () => {
  await server?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** The reference's greedy reply to `promptIds` (stopping at the model's end of text), with each token's logprob. */
function referenceReply(promptIds: readonly number[], maxTokens: number): { ids: number[]; logprobs: number[] } {
  const ref = new SpikingBrain2Reference(openSpikingBrain2Dir(dir));
  let row: Float64Array = new Float64Array(0);
  for (const t of promptIds) row = logSoftmax(ref.step(t, { moba: true }));
  const ids: number[] = [];
  const logprobs: number[] = [];
  for (let j = 0; j < maxTokens; j++) {
    let best = 0;
    for (let v = 1; v < row.length; v++) if (row[v]! > row[best]!) best = v;
    ids.push(best);
    logprobs.push(row[best]!);
    if (best === 256) break; // <|endoftext|>, the generation config's eos
    row = logSoftmax(ref.step(best, { moba: false }));
  }
  return { ids, logprobs };
}

async function promptIds(messages: OpenAI.ChatCompletionMessageParam[]): Promise<number[]> {
  const res = await fetch(`${server.url}/tokenize`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages }) });
  expect(res.status).toBe(200);
  return ((await res.json()) as { tokens: number[] }).tokens;
}

/** The reply's token ids and logprobs from `return_tokens_as_token_ids` logprobs ("token_id:N"). */
function replyTokens(choice: OpenAI.ChatCompletion.Choice): { ids: number[]; logprobs: number[] } {
  const entries = choice.logprobs?.content ?? [];
  return { ids: entries.map((e) => Number(e.token.replace('token_id:', ''))), logprobs: entries.map((e) => e.logprob) };
}

function expectReference(got: { ids: number[]; logprobs: number[] }, want: { ids: number[]; logprobs: number[] }): void {
  // The server stops before emitting the eos token; the reference lists it.
  const wantIds = want.ids[want.ids.length - 1] === 256 ? want.ids.slice(0, -1) : want.ids;
  expect(got.ids).toEqual(wantIds);
  got.logprobs.forEach((lp, j) => expect(Math.abs(lp - want.logprobs[j]!)).toBeLessThan(TOL));
}

const chat = (messages: OpenAI.ChatCompletionMessageParam[]) =>
  client.chat.completions.create({
    model: server.config.servedModelName,
    messages,
    max_tokens: MAX_TOKENS,
    temperature: 0,
    logprobs: true,
    return_tokens_as_token_ids: true,
  } as OpenAI.ChatCompletionCreateParamsNonStreaming);

describe('SpikingBrain 2.0 through /v1/chat/completions (openai client)', () => {
  const turn1: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Summarise the spiking hybrid model in one line, please.' }];

  it('a chat reply is the float64 reference\'s greedy continuation of the rendered prompt (MoBA prompt, dense reply)', async () => {
    const ids = await promptIds(turn1);
    expect(ids.length).toBeGreaterThan(3 * 8); // past K·C: MoBA leaves chunks out
    const res = await chat(turn1);
    expect(res.usage?.prompt_tokens).toBe(ids.length);
    const got = replyTokens(res.choices[0]!);
    expect(got.ids.length).toBeGreaterThan(0);
    expectReference(got, referenceReply(ids, MAX_TOKENS));
    await waitEngineIdle(server.engine);
  });

  it('streamed, the same reply', async () => {
    const whole = await chat(turn1);
    const stream = await client.chat.completions.create({ model: server.config.servedModelName, messages: turn1, max_tokens: MAX_TOKENS, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe(whole.choices[0]?.message.content);
    await waitEngineIdle(server.engine);
  });

  it('a second turn equals a fresh computation of its prompt and resumes no more than the first prompt', async () => {
    const first = await chat(turn1);
    const firstPrompt = first.usage?.prompt_tokens ?? 0;
    const turn2: OpenAI.ChatCompletionMessageParam[] = [
      ...turn1,
      { role: 'assistant', content: first.choices[0]?.message.content ?? '' },
      { role: 'user', content: 'And in two words?' },
    ];
    const ids = await promptIds(turn2);
    const second = await chat(turn2);
    expect(second.usage?.prompt_tokens).toBe(ids.length);
    const cached = second.usage?.prompt_tokens_details?.cached_tokens ?? -1;
    expect(cached).toBeGreaterThan(0); // the first turn's prompt pages
    expect(cached).toBeLessThanOrEqual(firstPrompt); // not the reply (computed dense, read with MoBA now)
    expectReference(replyTokens(second.choices[0]!), referenceReply(ids, MAX_TOKENS));
    await waitEngineIdle(server.engine);
  });
});
