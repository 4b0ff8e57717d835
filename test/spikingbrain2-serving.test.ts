// SpikingBrain 2.0 (sse_swa_moba) served for real: the Engine (worker thread; the hybrid layers' window
// pages reserved per sequence, the MoBA and full layers' growing pages allotted lazily, SSE states in
// state slots, prefix snapshots) on the tiny crosscheck checkpoint with the released configs' options
// (test/fixtures/spikingbrain2-crosscheck/released-options: layer 0 full, layer 3 MoBA, 1, 2 and 4
// hybrid; W = 4 keys, MoBA chunks of C = 6, top-2), against the float64 reference
// (helpers/reference-spikingbrain2.ts). Prompt tokens use MoBA selection, generated tokens attend
// densely (the reference's `{ moba: false }`). Tolerance: 1e-4 on logprobs.
// Prompts of 40 tokens are past K·C = 12 (MoBA leaves chunks out) and many windows.
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvGroup } from '../src/cache/kv-group.ts';
import { Engine } from '../src/engine/engine.ts';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { kvGroupSpecs } from '../src/engine/model/layer-plan.ts';
import type { GenerateRequest, PromptLogprobEntry, TokenEvent } from '../src/engine/types.ts';
import { buildApp } from '../src/main/app.ts';
import { loadChatAssets } from '../src/routes/chat-template.ts';
import { parseServerConfig } from '../src/server/config.ts';
import { ServerMetrics } from '../src/server/metrics.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { openSpikingBrain2Dir, SpikingBrain2Reference } from './helpers/reference-spikingbrain2.ts';
import { greedy } from './helpers/sampling.ts';
import { byteAlphabet } from './helpers/server.ts';
import { logSoftmax } from './helpers/numerics.ts';
import { collect, done } from './helpers/engine-events.ts';

const TOL = 1e-4;
const FIXTURE = join(import.meta.dirname, 'fixtures', 'spikingbrain2-crosscheck', 'released-options');
const V = 48;
const PAGE_TOKENS = 4;

const tmp = mkdtempSync(join(tmpdir(), 'spikeserve-spb2-serve-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The fixture plus a byte-level tokenizer of its 48 ids (no merges): enough to serve token-id prompts. */
function modelDir(): string {
  const dir = join(tmp, 'model');
  cpSync(FIXTURE, dir, { recursive: true });
  const vocab: Record<string, number> = {};
  byteAlphabet()
    .slice(0, V)
    .forEach((ch, id) => (vocab[ch] = id));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  }));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ added_tokens_decoder: {} }));
  return dir;
}

function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % V);
}

function promptLogprobs(events: readonly TokenEvent[]): readonly (PromptLogprobEntry | null)[] {
  const e = events.find((x) => x.type === 'prompt_logprobs');
  if (e?.type !== 'prompt_logprobs') throw new Error('no prompt_logprobs event');
  return e.entries;
}

/** Logprobs of each generated token (sampling.logprobs set). */
function tokenLogprobs(events: readonly TokenEvent[]): number[] {
  return events.flatMap((e) => (e.type === 'token' ? [e.logprob ?? Number.NaN] : []));
}

/**
 * The checker's own reference: log-softmax of the float64 logits after each of `ids`, teacher-forced
 * from position 0; ids[i] selects MoBA chunks iff it is a prompt token (i < numPrompt).
 */
function referenceLogprobs(dir: string, ids: readonly number[], numPrompt: number): Float64Array[] {
  const ref = new SpikingBrain2Reference(openSpikingBrain2Dir(dir));
  return ids.map((t, i) => logSoftmax(ref.step(t, { moba: i < numPrompt })));
}

let nextId = 0;
const request = (p: readonly number[], maxTokens: number, extra: Parameters<typeof greedy>[1] = {}): GenerateRequest => ({
  requestId: `spb2-${nextId++}`, promptTokenIds: p, sampling: greedy(maxTokens, extra), reportProgress: false,
});

let dir = '';
beforeAll(() => {
  dir = modelDir();
});
const startEngine = (opts: Partial<Parameters<typeof Engine.start>[0]>): Promise<Engine> =>
  Engine.start({ modelDir: dir, cacheDir: join(tmp, 'built'), intraOpThreads: 1, pageTokens: PAGE_TOKENS, ...opts });

describe('SpikingBrain 2.0 through the Engine (window + growing KV groups, MoBA prompt selection)', () => {
  let chunked: Engine; // prefill chunks of 5 tokens
  let oneShot: Engine; // a 40-token prompt in one chunk; generated tokens on the decode graph
  beforeAll(async () => {
    chunked = await startEngine({ prefillChunkTokens: 5, maxBatchedTokens: 40, maxNumSeqs: 8 });
    oneShot = await startEngine({ prefillChunkTokens: 64, maxBatchedTokens: 64, maxNumSeqs: 8, decodeIntraOpThreads: 1 });
  });
  afterAll(async () => {
    await chunked?.shutdown();
    await oneShot?.shutdown();
  });

  it('prompt logprobs and greedy tokens equal the float64 reference (prompt MoBA, generated dense), chunked and one-shot', async () => {
    const p = prompt(40, 1);
    for (const engine of [chunked, oneShot]) {
      const { tokens, events } = await collect(engine, request(p, 8, { promptLogprobs: 1, logprobs: 1 }));
      expect(tokens).toHaveLength(8);
      const ref = referenceLogprobs(dir, [...p, ...tokens], p.length);
      const entries = promptLogprobs(events);
      expect(entries).toHaveLength(p.length);
      expect(entries[0]).toBeNull();
      let maxDiff = 0;
      for (let i = 1; i < p.length; i++) maxDiff = Math.max(maxDiff, Math.abs(entries[i]!.logprob - ref[i - 1]![p[i]!]!));
      const lps = tokenLogprobs(events);
      tokens.forEach((t, j) => {
        const row = ref[p.length - 1 + j]!;
        maxDiff = Math.max(maxDiff, Math.abs(lps[j]! - row[t]!));
        expect(Math.max(...row) - row[t]!).toBeLessThan(TOL); // greedy: the reference's argmax
      });
      expect(maxDiff).toBeLessThan(TOL);
    }
  });

  it('chunked prefill (chunks of 5 around W = 4 and C = 6) gives the one-shot prompt logprobs and tokens', async () => {
    const p = prompt(37, 2);
    const a = await collect(chunked, request(p, 6, { promptLogprobs: 3, logprobs: 3 }));
    const b = await collect(oneShot, request(p, 6, { promptLogprobs: 3, logprobs: 3 }));
    expect(a.tokens).toEqual(b.tokens);
    const ea = promptLogprobs(a.events);
    const eb = promptLogprobs(b.events);
    for (let i = 1; i < p.length; i++) {
      expect(Math.abs(ea[i]!.logprob - eb[i]!.logprob)).toBeLessThan(TOL);
      expect(ea[i]!.top.map((x) => x.tokenId)).toEqual(eb[i]!.top.map((x) => x.tokenId));
    }
    tokenLogprobs(a.events).forEach((lp, j) => expect(Math.abs(lp - tokenLogprobs(b.events)[j]!)).toBeLessThan(TOL));
  });

  it('a repeated prompt resumes from its prefix snapshot (SSE states, window and growing pages) with the same tokens and logprobs', async () => {
    const doc = prompt(41, 40);
    const first = await collect(chunked, request(doc, 6, { logprobs: 1 }));
    const again = await collect(chunked, request(doc, 6, { logprobs: 1 }));
    expect(done(first.events).cachedTokens).toBe(0);
    expect(done(again.events).cachedTokens).toBe(40); // the exact snapshot one token before the prompt's end
    expect(again.tokens).toEqual(first.tokens);
    tokenLogprobs(again.events).forEach((lp, j) => expect(Math.abs(lp - tokenLogprobs(first.events)[j]!)).toBeLessThan(TOL));
    // And both are the reference's.
    const ref = referenceLogprobs(dir, [...doc, ...first.tokens], doc.length);
    first.tokens.forEach((t, j) => expect(Math.abs(tokenLogprobs(again.events)[j]! - ref[doc.length - 1 + j]![t]!)).toBeLessThan(TOL));
  });

  it('a next turn (prompt + reply + more) gives what a fresh compute gives: the reply is a prompt token now (MoBA), not resumed dense', async () => {
    const turn1 = prompt(30, 50);
    const reply = (await collect(chunked, request(turn1, 7))).tokens;
    const turn2 = [...turn1, ...reply, ...prompt(9, 51)];
    const resumed = await collect(chunked, request(turn2, 5, { logprobs: 1 }));
    expect(done(resumed.events).cachedTokens).toBeGreaterThan(0);
    const ref = referenceLogprobs(dir, [...turn2, ...resumed.tokens], turn2.length);
    resumed.tokens.forEach((t, j) => expect(Math.abs(tokenLogprobs(resumed.events)[j]! - ref[turn2.length - 1 + j]![t]!)).toBeLessThan(TOL));
  });

  it('8 concurrent requests of mixed lengths give exactly the tokens they give one at a time', async () => {
    const reqs = Array.from({ length: 8 }, (_, i) => ({ p: prompt(1 + ((i * 37) % 50), i + 3), max: 3 + ((i * 5) % 9) }));
    const alone: number[][] = [];
    for (const r of reqs) alone.push((await collect(chunked, request(r.p, r.max))).tokens);
    const together = await Promise.all(reqs.map((r) => collect(chunked, request(r.p, r.max))));
    expect(together.map((t) => t.tokens)).toEqual(alone);
  });
});

describe('SpikingBrain 2.0 with a small growing-KV pool (lazy pages, preemption)', () => {
  it('8 chats preempt each other and each still gets its greedy tokens as alone', async () => {
    // Window pages keep their default (8 sequences' reservations); the MoBA + full group gets 24 pages
    // × 4 tokens = 96 tokens of KV, where 8 chats of 10–17 + 24 tokens need ~300.
    const maxNumSeqs = 8;
    const prefillChunkTokens = 16;
    const [windowGroup, growingGroup] = kvGroupSpecs(openCheckpoint(dir).config);
    expect(windowGroup?.kind).toBe('window');
    expect(growingGroup?.kind).toBe('full');
    const pageBytes = (g: NonNullable<typeof windowGroup>): number => g.numLayers * 2 * g.numKvHeads * g.headDim * PAGE_TOKENS * 4;
    const kvCacheBytes = KvGroup.defaultPages(windowGroup!, maxNumSeqs, prefillChunkTokens, PAGE_TOKENS) * pageBytes(windowGroup!) + 24 * pageBytes(growingGroup!);
    // Decode steps on the decode graph (dense MoBA layers, one mask per attention kind over the shared past).
    const engine = await startEngine({ kvCacheBytes, prefillChunkTokens, maxBatchedTokens: 64, maxNumSeqs, prefixCacheBytes: 0, decodeIntraOpThreads: 1 });
    try {
      const chats = Array.from({ length: 8 }, (_, i) => prompt(10 + i, 70 + i));
      const alone: number[][] = [];
      for (const p of chats) alone.push((await collect(engine, request(p, 24))).tokens);
      expect(engine.stats().numPreemptions).toBe(0);
      const together = await Promise.all(chats.map((p) => collect(engine, request(p, 24))));
      expect(together.map((r) => r.tokens)).toEqual(alone);
      expect(engine.stats().numPreemptions).toBeGreaterThan(0);
      // One of them against the reference: its recomputed generated tokens stayed dense.
      const ref = referenceLogprobs(dir, [...chats[7]!, ...alone[7]!], chats[7]!.length);
      alone[7]!.forEach((t, j) => {
        const row = ref[chats[7]!.length - 1 + j]!;
        expect(Math.max(...row) - row[t]!).toBeLessThan(TOL);
      });
    } finally {
      await engine.shutdown();
    }
  });
});

describe('SpikingBrain 2.0 served through /v1/completions', () => {
  let engine: Engine;
  let app: ReturnType<typeof buildApp>;
  let url = '';
  beforeAll(async () => {
    engine = await startEngine({ prefillChunkTokens: 7, maxBatchedTokens: 40, maxNumSeqs: 4 });
    const tokenizer = await TextTokenizer.load(dir);
    const config = parseServerConfig(['--model', dir, '--port', '0'], {});
    app = buildApp({ engine, tokenizer, chatAssets: await loadChatAssets(dir, tokenizer), config, metrics: new ServerMetrics(config.servedModelName), version: 'test', logger: false });
    await app.listen({ host: '127.0.0.1', port: 0 });
    url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await app?.close();
    await engine?.shutdown();
  });

  it('token-id prompt, echo + logprobs: every position equals an independent float64 check', async () => {
    const p = prompt(33, 7);
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: p, max_tokens: 5, temperature: 0, ignore_eos: true, echo: true, logprobs: 5, return_tokens_as_token_ids: true }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { choices: { logprobs: { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: (Record<string, number> | null)[] } }[] };
    const lp = body.choices[0]!.logprobs;
    const ids = lp.tokens.map((t) => Number(t.replace('token_id:', '')));
    expect(ids.slice(0, p.length)).toEqual(p);
    expect(ids).toHaveLength(p.length + 5);
    expect(lp.token_logprobs[0]).toBeNull();
    const ref = referenceLogprobs(dir, ids, p.length);
    let maxDiff = 0;
    for (let i = 1; i < ids.length; i++) {
      const row = ref[i - 1]!;
      maxDiff = Math.max(maxDiff, Math.abs(lp.token_logprobs[i]! - row[ids[i]!]!));
      const top = lp.top_logprobs[i]!;
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(5);
      for (const [tok, value] of Object.entries(top)) maxDiff = Math.max(maxDiff, Math.abs(value - row[Number(tok.replace('token_id:', ''))]!));
      const best = row.indexOf(Math.max(...row));
      expect(Object.keys(top)).toContain(`token_id:${best}`);
      if (i >= p.length) expect(Math.max(...row) - row[ids[i]!]!).toBeLessThan(TOL);
    }
    expect(maxDiff).toBeLessThan(TOL);
  });
});
