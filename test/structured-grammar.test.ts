// The grammar machinery below the routes. (1) The masks the grammar worker computes for the default
// model's vocabulary equal an independent reference: the tokens whose bytes (TextTokenizer.tokenBytes)
// continue one of the allowed strings. (2) XGrammar's JSON Schema converter still writes length-bounded
// strings with the class jsonSafeStrings narrows, and after it no control character is allowed inside
// such a string. (3) The sampler applies a constraint's mask before sampling and accepts the token;
// logprobs stay those of the raw model; min_tokens yields when the grammar allows only stop tokens.
// A dead grammar worker fails its matchers and is replaced; without a tokenizer, opens are 400s.
// (4) The engine core with a fake model and a constraint whose masks are sometimes late: a held
// sequence is not decoded until its token is sampled, every token is fed exactly once and in order,
// and an unconstrained sequence in the same batch keeps decoding meanwhile.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestRejectedError } from '../src/engine/errors.ts';
import { EngineCore } from '../src/engine/engine-core.ts';
import { GrammarClient } from '../src/engine/grammar/grammar-client.ts';
import { jsonSafeStrings } from '../src/engine/grammar/grammar-recipe.ts';
import type { ConstraintState, TokenConstraint } from '../src/engine/grammar/token-constraint.ts';
import { loadXGrammar } from '../src/engine/grammar/xgrammar.ts';
import { parseModelConfig } from '../src/engine/model/config.ts';
import type { ForwardInput, ForwardOutput } from '../src/engine/model/forward.ts';
import { SequenceSampler } from '../src/engine/sampler.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import type { SamplingParams, TokenEvent } from '../src/engine/types.ts';
import { DEFAULT_MODEL_DIR } from '../src/server/config.ts';

const params = (over: Partial<SamplingParams> = {}): SamplingParams => ({
  temperature: 1, topP: 1, topK: 0, minP: 0, seed: 1, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
  logitBias: new Map(), logprobs: null, promptLogprobs: null, maxTokens: 64, minTokens: 0, stopTokenIds: [], ignoreEos: false, ...over,
});

describe('grammar worker masks (default model vocabulary)', () => {
  let tokenizer: TextTokenizer;
  let client: GrammarClient;
  const V = 4096;
  const EOS = [2, 0];
  beforeAll(async () => {
    tokenizer = await TextTokenizer.load(DEFAULT_MODEL_DIR);
    client = new GrammarClient({ modelDir: DEFAULT_MODEL_DIR, vocabSize: V, eosTokenIds: EOS, cacheEntries: 4, log: () => {} });
  });
  afterAll(async () => {
    await client.close();
    await tokenizer.close();
  });

  const utf8 = new TextDecoder('utf-8', { fatal: false });
  const bytesOf = (text: string): number[] => [...new TextEncoder().encode(text)];
  /** Ids whose logit survives the mask. */
  function allowed(m: { applyMask(l: Float32Array): void }): number[] {
    const logits = new Float32Array(V);
    m.applyMask(logits);
    const ids: number[] = [];
    logits.forEach((l, id) => l !== -Infinity && ids.push(id));
    return ids;
  }
  /** Reference, in bytes: non-special ids whose bytes extend `done` to a prefix of a target; the stop ids once `done` is one. */
  function reference(targets: readonly string[], done: readonly number[]): number[] {
    const targetBytes = targets.map(bytesOf);
    const isPrefix = (xs: readonly number[], of: readonly number[]): boolean => xs.length <= of.length && xs.every((x, i) => of[i] === x);
    const ids: number[] = [];
    for (let id = 0; id < V; id++) {
      if (EOS.includes(id)) {
        if (targetBytes.some((t) => t.length === done.length && isPrefix(done, t))) ids.push(id);
        continue;
      }
      const bytes = tokenizer.tokenBytes(id);
      if (tokenizer.isSpecial(id) || bytes.length === 0) continue;
      if (targetBytes.some((t) => isPrefix([...done, ...bytes], t))) ids.push(id);
    }
    return ids;
  }

  it('a choice: every mask along the way equals the reference; the end allows only stop tokens', async () => {
    const choices = ['yes', 'no', 'maybe later', 'nöö'];
    for (const target of ['maybe later', 'nöö']) {
      const m = await client.open({ param: 'p', kind: 'choice', choices }, EOS);
      const goal = bytesOf(target);
      const done: number[] = [];
      while (done.length < goal.length) {
        expect(m.poll(5000)).toBe('ready');
        const ref = reference(choices, done);
        expect(allowed(m)).toEqual(ref);
        // The longest allowed token that continues towards the goal, as a model might pick.
        const next = ref
          .filter((id) => !EOS.includes(id))
          .map((id) => ({ id, bytes: [...tokenizer.tokenBytes(id)] }))
          .filter(({ bytes }) => bytes.every((b, i) => goal[done.length + i] === b))
          .sort((a, b) => b.bytes.length - a.bytes.length)[0];
        if (next === undefined) throw new Error(`no allowed token continues ${JSON.stringify(utf8.decode(Uint8Array.from(done)))}`);
        m.accept(next.id);
        done.push(...next.bytes);
      }
      expect(m.poll(5000)).toBe('ready');
      expect(allowed(m)).toEqual([...EOS].sort((a, b) => a - b));
      m.close();
    }
  });

  it('a grammar worker that dies fails its matchers; the next open starts a new one', async () => {
    const m = await client.open({ param: 'p', kind: 'choice', choices: ['yes'] }, EOS);
    expect(m.poll(5000)).toBe('ready');
    await m.session.worker.terminate();
    expect(m.poll(0)).toBe('failed');
    m.close(); // as the engine does when the request fails
    const again = await client.open({ param: 'p', kind: 'choice', choices: ['yes'] }, EOS);
    expect(again.session).not.toBe(m.session);
    expect(again.poll(5000)).toBe('ready');
    expect(client.numMatchers).toBe(1);
    again.close();
    expect(client.numMatchers).toBe(0);
    // The grammar worker frees it when the close message arrives.
    for (let i = 0; i < 200 && client.numWorkerMatchers !== 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(client.numWorkerMatchers).toBe(0);
  });

  it('without a tokenizer structured outputs are a 400 naming the field, every time', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'no-tokenizer-'));
    const bare = new GrammarClient({ modelDir: dir, vocabSize: V, eosTokenIds: EOS, cacheEntries: 1, log: () => {} });
    try {
      for (let i = 0; i < 2; i++) {
        const err = await bare.open({ param: 'response_format', kind: 'json_object' }, EOS).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(RequestRejectedError);
        expect((err as RequestRejectedError).param).toBe('response_format');
        expect((err as Error).message).toMatch(/structured outputs are not available/);
      }
    } finally {
      await bare.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the converter still bounds strings with the class jsonSafeStrings narrows; after it no control character fits', async () => {
    const xg = loadXGrammar();
    const schema = JSON.stringify({ type: 'object', properties: { a: { type: 'string', maxLength: 5 } }, required: ['a'] });
    const ebnf = await xg.Testings._jsonSchemaToEBNF(schema, false, -1, [', ', ': '], true);
    expect(ebnf).toContain(String.raw`[^"\\\r\n]{0,5}`);
    expect(jsonSafeStrings(ebnf)).toContain(String.raw`[^"\\\0-\x1f]{0,5}`);
    const m = await client.open({ param: 'p', kind: 'json_schema', schema }, EOS);
    for (const id of await tokenizer.encode('{"a": "', { addSpecialTokens: false })) {
      expect(m.poll(5000)).toBe('ready');
      m.accept(id);
    }
    expect(m.poll(5000)).toBe('ready');
    const ok = new Set(allowed(m));
    for (let id = 0; id < V; id++) {
      const bytes = tokenizer.tokenBytes(id);
      if (bytes.some((b) => b < 0x20)) expect(ok.has(id), `token ${id} ${JSON.stringify(utf8.decode(bytes))}`).toBe(false);
    }
    const [x] = await tokenizer.encode('x', { addSpecialTokens: false });
    expect(ok.has(x!)).toBe(true);
    m.close();
  });
});

/** A constraint that allows the ids in `allowed`, is 'pending' on the first poll of every `lateEvery`-th token, and completes after `length` tokens. */
class FakeConstraint implements TokenConstraint {
  readonly accepted: number[] = [];
  numPolls = 0;
  closed = false;
  private polledThisToken = false;
  constructor(
    private readonly allowedIds: (id: number) => boolean,
    private readonly lateEvery: number,
    private readonly length: number,
  ) {}
  poll(): ConstraintState {
    this.numPolls++;
    if (this.accepted.length >= this.length) return 'complete';
    if (this.accepted.length % this.lateEvery === 1 && !this.polledThisToken) {
      this.polledThisToken = true;
      return 'pending';
    }
    return 'ready';
  }
  applyMask(logits: Float32Array): void {
    for (let t = 0; t < logits.length; t++) if (!this.allowedIds(t)) logits[t] = -Infinity;
  }
  accept(tokenId: number): void {
    this.accepted.push(tokenId);
    this.polledThisToken = false;
  }
  close(): void {
    this.closed = true;
  }
}

describe('sampler with a constraint', () => {
  it('only allowed tokens are sampled, each is accepted, logprobs are the raw model', () => {
    const c = new FakeConstraint((t) => t % 3 === 0, 1000, 1000);
    const s = new SequenceSampler(params({ logprobs: 0, topK: 20 }), [], [], c);
    const logits = Float32Array.from({ length: 64 }, (_, t) => Math.sin(t));
    const raw = [...logits];
    const maxRaw = Math.max(...raw);
    const logZ = maxRaw + Math.log(raw.reduce((a, l) => a + Math.exp(l - maxRaw), 0));
    for (let i = 0; i < 50; i++) {
      const out = s.sample(Float32Array.from(raw));
      expect(out.tokenId % 3).toBe(0);
      expect(out.logprob).toBeCloseTo(raw[out.tokenId]! - logZ, 5);
    }
    expect(c.accepted).toHaveLength(50);
  });

  it('min_tokens yields to a grammar that allows only stop tokens', () => {
    const stop = 7;
    const c = new FakeConstraint((t) => t === stop, 1000, 1000);
    const s = new SequenceSampler(params({ minTokens: 5 }), [], [stop], c);
    expect(s.sample(new Float32Array(16)).tokenId).toBe(stop);
    const free = new SequenceSampler(params({ minTokens: 5, temperature: 0 }), [], [stop]);
    const logits = new Float32Array(16);
    logits[stop] = 10;
    expect(free.sample(logits).tokenId).not.toBe(stop);
  });
});

describe('engine core: late masks hold a sequence, never the step loop', () => {
  const V = 32;
  const config = parseModelConfig({
    model_type: 'gla_swa', vocab_size: V, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 1, num_key_value_heads: 1,
    intermediate_size: 8, attn_layers: [], rope_theta: 10000, norm_eps: 1e-6, eos_token_id: 31,
  });
  const stateFloats = config.numKvHeads * config.headDim * config.headDim;

  /** Greedy next token = (last fed token + 1) mod V; records every row it is fed. */
  class FakeModel {
    readonly fed = new Map<number, number[]>(); // first prompt token (a row's tag) → tokens fed
    constructor(private readonly tagOf: (tokens: readonly number[]) => number) {}
    async run(input: ForwardInput): Promise<ForwardOutput> {
      const { batchSize: B, chunkTokens: T } = input;
      const logits = new Float32Array(B * V);
      for (let b = 0; b < B; b++) {
        const row = [...input.tokenIds.subarray(b * T, (b + 1) * T)];
        const tag = input.positions[b * T] === 0 ? row[0]! : this.tagOf(row);
        const fed = this.fed.get(tag) ?? [];
        fed.push(...row);
        this.fed.set(tag, fed);
        logits[b * V + ((row[T - 1]! + 1) % V)] = 10;
      }
      return { logits, states: [new Float32Array(B * stateFloats)], presentKeys: [], presentValues: [] };
    }
  }

  it('tokens are sampled once each, fed in order, and the other stream goes on while one is held', async () => {
    const events = new Map<string, TokenEvent[]>();
    // Rows are told apart by the parity of what they were fed: prompt [0] walks 0,1,2… ; prompt [16] walks 16,17,…
    const streamOf = new Map<number, number>();
    const model = new FakeModel((row) => streamOf.get(row[0]!) ?? -1);
    const core = new EngineCore(model, config, { maxNumSeqs: 4, kvPages: 4, prefixCacheBytes: 0 }, (id, ev) => {
      const list = events.get(id) ?? [];
      list.push(ev);
      events.set(id, list);
      if (ev.type === 'token') streamOf.set(ev.tokenId, id === 'c' ? 0 : 16);
    });
    const constraint = new FakeConstraint(() => true, 2, 10); // every other token's mask is late; 10 tokens then complete
    core.submit({ requestId: 'c', promptTokenIds: [0], sampling: params({ temperature: 0, maxTokens: 50, ignoreEos: true }), reportProgress: false }, constraint);
    core.submit({ requestId: 'f', promptTokenIds: [16], sampling: params({ temperature: 0, maxTokens: 15, ignoreEos: true }), reportProgress: false });
    let heldSteps = 0;
    for (let i = 0; i < 200 && core.hasWork; i++) {
      if (core.numAwaitingGrammar > 0) heldSteps++;
      if (!(await core.step()) && core.numAwaitingGrammar === 0) break;
    }
    expect(core.hasWork).toBe(false);
    const tokensOf = (id: string): number[] => (events.get(id) ?? []).flatMap((e) => (e.type === 'token' ? [e.tokenId] : []));
    const doneOf = (id: string) => (events.get(id) ?? []).find((e) => e.type === 'done');
    expect(tokensOf('c')).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(constraint.accepted).toEqual(tokensOf('c'));
    expect(doneOf('c')).toMatchObject({ finishReason: 'stop', stopTokenId: null });
    expect(constraint.closed).toBe(true);
    // Fed: the prompt, then each sampled token once (the last, 10, ends the grammar after one more run).
    expect(model.fed.get(0)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(tokensOf('f')).toEqual(Array.from({ length: 15 }, (_, i) => 17 + i).map((t) => t % V));
    expect(heldSteps).toBeGreaterThan(3);
  });
});
