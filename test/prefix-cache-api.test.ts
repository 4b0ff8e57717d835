// The prefix-cache API (src/routes/prefix-cache/) on the real server and engine with a snapshot
// folder: behind the API key; warm a chat's system document without generating (answers once the
// snapshot is in memory and on disk); list it (tokens, bytes, where, hits); a chat with that document
// resumes from it; streamed warm-ups send progress events then the result; delete it (then 404);
// bad input gets OpenAI-style 4xx envelopes.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/server.ts';

const dir = mkdtempSync(join(tmpdir(), 'spikeserve-prefix-api-'));
let server: TestServer;
const auth = { authorization: 'Bearer k1' };

beforeAll(async () => {
  server = await startTestServer({ flags: ['--api-key', 'k1'], engine: { prefixCacheDir: dir, maxModelLen: 1 << 16 } });
});
afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A long system document of numbered sentences (hundreds of tokens). */
const documentText = (n: number, salt: string): string =>
  Array.from({ length: n }, (_, i) => `Line ${i} of the ${salt} record says the river rose ${(i * 37) % 101} inches.`).join(' ');

interface WarmBody {
  id: string;
  object: string;
  prompt_tokens: number;
  cached_tokens: number;
  computed_tokens: number;
  where: string[];
}
interface Entry {
  id: string;
  tokens: number;
  bytes: number;
  where: string[];
  hits: number;
  last_used_at: number;
}

async function list(): Promise<Entry[]> {
  const res = await server.app.inject({ method: 'GET', url: '/v1/prefix-cache?limit=50', headers: auth });
  expect(res.statusCode).toBe(200);
  const body = res.json() as { object: string; data: Entry[] };
  expect(body.object).toBe('list');
  return body.data;
}

describe('prefix-cache API', () => {
  it('needs the API key on every method', async () => {
    for (const [method, url] of [
      ['GET', '/v1/prefix-cache'],
      ['POST', '/v1/prefix-cache'],
      ['DELETE', '/v1/prefix-cache/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'],
    ] as const) {
      const res = await server.app.inject(method === 'POST' ? { method, url, payload: { prompt: 'x' } } : { method, url });
      expect(res.statusCode, `${method} ${url}`).toBe(401);
      expect(res.json()).toMatchObject({ error: { type: 'authentication_error' } });
    }
  });

  it('warms a chat document, lists it, serves a chat from it, and deletes it', async () => {
    const doc = documentText(60, 'harbour');
    const warm = await server.app.inject({ method: 'POST', url: '/v1/prefix-cache', headers: auth, payload: { messages: [{ role: 'system', content: doc }] } });
    expect(warm.statusCode).toBe(200);
    const w = warm.json() as WarmBody;
    expect(w.object).toBe('prefix_cache.entry');
    expect(w.id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(w.cached_tokens % 64).toBe(0); // whole pages
    expect(w.prompt_tokens - w.cached_tokens).toBeLessThan(64);
    expect(w.cached_tokens).toBeGreaterThan(0);
    expect(w.computed_tokens).toBe(w.cached_tokens);
    expect(w.where).toEqual(['memory', 'disk']);
    // On disk as soon as the answer came: one file in the model's folder.
    const [modelFolder] = readdirSync(dir);
    expect(readdirSync(join(dir, modelFolder ?? ''))).toContain(`${w.id}.snap`);

    let entry = (await list()).find((e) => e.id === w.id);
    expect(entry).toMatchObject({ tokens: w.cached_tokens, where: ['memory', 'disk'], hits: 0 });
    expect(entry?.bytes).toBeGreaterThan(0);
    expect(entry?.last_used_at).toBeGreaterThan(0);

    // A chat with the same document and a question resumes after the warmed tokens.
    const chat = await server.app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: auth,
      payload: { messages: [{ role: 'system', content: doc }, { role: 'user', content: 'How high did the river rise?' }], max_tokens: 4, temperature: 0 },
    });
    expect(chat.statusCode).toBe(200);
    expect((chat.json() as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens).toBe(w.cached_tokens);
    entry = (await list()).find((e) => e.id === w.id);
    expect(entry?.hits).toBe(1);

    // Warming it again computes nothing: the snapshot is there (and on disk).
    const again = (await server.app.inject({ method: 'POST', url: '/v1/prefix-cache', headers: auth, payload: { messages: [{ role: 'system', content: doc }] } })).json() as WarmBody;
    expect(again).toMatchObject({ id: w.id, cached_tokens: w.cached_tokens, computed_tokens: 0, where: ['memory', 'disk'] });

    const del = await server.app.inject({ method: 'DELETE', url: `/v1/prefix-cache/${w.id}`, headers: auth });
    expect(del.statusCode).toBe(200);
    expect(del.json()).toEqual({ id: w.id, object: 'prefix_cache.entry.deleted', deleted: true, where: ['memory', 'disk'] });
    expect((await list()).some((e) => e.id === w.id)).toBe(false);
    expect(readdirSync(join(dir, modelFolder ?? ''))).not.toContain(`${w.id}.snap`);
    const gone = await server.app.inject({ method: 'DELETE', url: `/v1/prefix-cache/${w.id}`, headers: auth });
    expect(gone.statusCode).toBe(404);
    expect(gone.json()).toMatchObject({ error: { type: 'not_found_error', param: 'id', code: 'snapshot_not_found' } });
  });

  it('streams a long warm-up as progress events, then the result, then [DONE]', async () => {
    // 8,192 tokens take well over the 250 ms between progress events on any CPU here.
    const ids = Array.from({ length: 8192 }, (_, i) => 32 + ((i * 131) % 200));
    const res = await server.app.inject({ method: 'POST', url: '/v1/prefix-cache', headers: auth, payload: { prompt: ids, stream: true } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const frames = res.body.split('\n\n').filter((f) => f.startsWith('data: ')).map((f) => f.slice(6));
    expect(frames[frames.length - 1]).toBe('[DONE]');
    const objects = frames.slice(0, -1).map((f) => JSON.parse(f) as { object: string; processed_tokens?: number; cached_tokens?: number });
    const result = objects[objects.length - 1] as unknown as WarmBody;
    expect(result).toMatchObject({ object: 'prefix_cache.entry', prompt_tokens: 8192, cached_tokens: 8192, computed_tokens: 8192 });
    const progress = objects.slice(0, -1);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((p) => p.object === 'prefill.progress')).toBe(true);
    const processed = progress.map((p) => p.processed_tokens ?? -1);
    expect([...processed].sort((a, b) => a - b)).toEqual(processed);
  });

  it.each([
    ['a prompt shorter than one page', { prompt: [1, 2, 3] }, 400, 'prompt'],
    ['an empty message list', { messages: [] }, 400, null],
    ['a token id outside the vocabulary', { prompt: [1_000_000] }, 400, 'prompt'],
    ['another model', { model: 'nope', prompt: 'hello' }, 404, 'model'],
  ])('refuses %s with an OpenAI error envelope', async (_name, payload, status, param) => {
    const res = await server.app.inject({ method: 'POST', url: '/v1/prefix-cache', headers: auth, payload });
    expect(res.statusCode).toBe(status);
    const body = res.json() as { error: { message: string; type: string; param: string | null } };
    expect(body.error.message.length).toBeGreaterThan(0);
    if (param !== null) expect(body.error.param).toBe(param);
  });

  it('refuses a malformed id and a bad limit', async () => {
    const bad = await server.app.inject({ method: 'DELETE', url: '/v1/prefix-cache/not-an-id', headers: auth });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toMatchObject({ error: { type: 'invalid_request_error' } });
    const limit = await server.app.inject({ method: 'GET', url: '/v1/prefix-cache?limit=0', headers: auth });
    expect(limit.statusCode).toBe(400);
    expect(limit.json()).toMatchObject({ error: { type: 'invalid_request_error', param: 'limit' } });
  });
});
