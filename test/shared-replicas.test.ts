// Acceptance (issue "Replicas share prefix state"): two real server processes (`spikeserve serve`,
// the default model) on one snapshot folder. A reads a ~64K-token document once; B, started before
// and never restarted, answers another question about it from A's snapshot (cached_tokens ≥ 90% of
// the prompt) with the same answer A gives; the same through A's warm API. The times are printed,
// not asserted (the machine is shared): what B computed is proven by its token counts and metrics.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../src/server/config.ts';
import { CACHE_DIR } from './helpers/server.ts';

const KEY = 'sk-replicas';
const dir = mkdtempSync(join(tmpdir(), 'spikeserve-replicas-'));

interface Replica {
  readonly name: string;
  readonly child: ChildProcess;
  readonly url: string;
}

/** Starts `spikeserve serve` on a free port and resolves once it listens (the model may still load). */
async function startReplica(name: string): Promise<Replica> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SPIKESERVE_')) env[k] = v;
  mkdirSync(CACHE_DIR, { recursive: true });
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main/cli.ts'), 'serve', '--port', '0', '--api-key', KEY, '--prefix-cache-dir', join(dir, 'snapshots'), '--cache-dir', CACHE_DIR],
    { cwd: PACKAGE_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      log += d.toString();
      const m = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m !== null) resolve(m[1] as string);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`replica ${name} exited (${code}):\n${log.slice(-2000)}`)));
  });
  return { name, child, url };
}

async function waitReady(r: Replica): Promise<void> {
  for (;;) {
    const res = await fetch(`${r.url}/health`).catch(() => null);
    if (res?.status === 200) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function post(r: Replica, path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown>; seconds: number }> {
  const t0 = performance.now();
  const res = await fetch(`${r.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: JSON.stringify(body) });
  const json = (await res.json()) as Record<string, unknown>;
  return { status: res.status, json, seconds: (performance.now() - t0) / 1000 };
}

/** A metric's value from /metrics (summed over its series). */
async function metric(r: Replica, name: string): Promise<number> {
  const text = await (await fetch(`${r.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

/** Waits until a metric reaches `atLeast` (a condition the other replica depends on, not a time). */
async function untilMetric(r: Replica, name: string, atLeast: number): Promise<number> {
  for (;;) {
    const v = await metric(r, name);
    if (v >= atLeast) return v;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** KJV-style verses with varying numbers and names, about `words` words. */
function documentText(words: number, salt: number): string {
  const names = ['Moses', 'Aaron', 'Joshua', 'Samuel', 'David', 'Solomon', 'Elijah', 'Ruth', 'Naomi', 'Boaz'];
  const verbs = ['spake unto', 'went up with', 'blessed', 'sent word to', 'answered', 'remembered'];
  const things = ['the cattle', 'the tents', 'the silver', 'the vineyards', 'the wells', 'the altars'];
  const out: string[] = [];
  let n = 0;
  for (let i = 0; n < words; i++) {
    const x = (i * 7919 + salt * 104729) >>> 0;
    const verse = `And ${names[x % names.length]} ${verbs[(x >> 3) % verbs.length]} ${names[(x >> 5) % names.length]} in the ${(i % 40) + 1}th year, and counted ${things[(x >> 7) % things.length]}, ${(x % 977) + 3} in number.`;
    out.push(verse);
    n += verse.split(' ').length;
  }
  return out.join(' ');
}

let a: Replica;
let b: Replica;

beforeAll(async () => {
  // B first: it runs (with an empty memory cache) before A has read anything.
  b = await startReplica('B');
  a = await startReplica('A');
  await Promise.all([waitReady(a), waitReady(b)]);
}, 300_000);

afterAll(async () => {
  for (const r of [a, b]) {
    if (r === undefined) continue;
    r.child.kill('SIGTERM');
    await new Promise((resolve) => r.child.once('exit', resolve));
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A ~64K-token document (measured with the server's own tokenizer). */
async function document(salt: number): Promise<{ text: string; tokens: number }> {
  let words = 35_000; // ~1.8 tokens a word with the default model's tokenizer
  for (;;) {
    const text = documentText(words, salt);
    const r = await post(a, '/tokenize', { prompt: text });
    const tokens = r.json['count'] as number;
    if (tokens >= 60_000) return { text, tokens };
    words = Math.ceil((words * 64_000) / tokens);
  }
}

const chat = (doc: string, question: string) => ({ messages: [{ role: 'system', content: doc }, { role: 'user', content: question }], max_tokens: 12, temperature: 0 });
const usage = (json: Record<string, unknown>): { prompt: number; cached: number } => {
  const u = json['usage'] as { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  return { prompt: u.prompt_tokens, cached: u.prompt_tokens_details.cached_tokens };
};
const answer = (json: Record<string, unknown>): string => (json['choices'] as { message: { content: string } }[])[0]?.message.content ?? '';

describe('two replicas on one snapshot folder', () => {
  it('B answers another question about the document A read, from A’s snapshot', async () => {
    const doc = await document(1);
    const fromA = await post(a, '/v1/chat/completions', chat(doc.text, 'Who counted the silver?'));
    expect(fromA.status).toBe(200);
    expect(usage(fromA.json).cached).toBe(0);
    // A writes the document's snapshot through (≥ --prefix-share-min-tokens) off its step loop.
    await untilMetric(a, 'spikeserve:prefix_store_writes_total', 1);
    const fromB = await post(b, '/v1/chat/completions', chat(doc.text, 'Who blessed the wells?'));
    expect(fromB.status).toBe(200);
    const ub = usage(fromB.json);
    expect(ub.cached).toBeGreaterThanOrEqual(0.9 * ub.prompt);
    expect(await metric(b, 'spikeserve:prefix_store_hits_total')).toBe(1);
    expect(await metric(b, 'spikeserve:prefix_store_read_failures_total')).toBe(0);
    // A, asked the same question (from its memory snapshot), gives the same answer.
    const sameOnA = await post(a, '/v1/chat/completions', chat(doc.text, 'Who blessed the wells?'));
    expect(answer(sameOnA.json)).toBe(answer(fromB.json));
    process.stdout.write(
      `shared replicas: document ${doc.tokens} tokens; A cold ${fromA.seconds.toFixed(2)} s; B from A's snapshot ${fromB.seconds.toFixed(2)} s (${(fromB.seconds / fromA.seconds).toFixed(3)} of A), cached ${ub.cached}/${ub.prompt}\n`,
    );
  }, 600_000);

  it('the same through the warm API: A warms a document, B answers from it', async () => {
    const doc = await document(2);
    const warm = await post(a, '/v1/prefix-cache', { messages: [{ role: 'system', content: doc.text }] });
    expect(warm.status).toBe(200);
    expect(warm.json['where']).toEqual(['memory', 'disk']);
    const cachedTokens = warm.json['cached_tokens'] as number;
    expect(cachedTokens).toBeGreaterThan(0.95 * doc.tokens);
    const fromB = await post(b, '/v1/chat/completions', chat(doc.text, 'How many cattle were counted?'));
    expect(fromB.status).toBe(200);
    const ub = usage(fromB.json);
    expect(ub.cached).toBe(cachedTokens);
    expect(ub.cached).toBeGreaterThanOrEqual(0.9 * ub.prompt);
    // B lists it as on disk (and now in its memory too), with one hit.
    const listed = (await (await fetch(`${b.url}/v1/prefix-cache`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as { data: { id: string; where: string[]; hits: number }[] };
    expect(listed.data.find((e) => e.id === warm.json['id'])).toMatchObject({ where: ['memory', 'disk'], hits: 1 });
    process.stdout.write(`shared replicas, warm API: warm on A ${warm.seconds.toFixed(2)} s; B ${fromB.seconds.toFixed(2)} s, cached ${ub.cached}/${ub.prompt}\n`);
  }, 600_000);
});
