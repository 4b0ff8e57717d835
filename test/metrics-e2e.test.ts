// /metrics after real requests through the real engine: one TTFT observation per request, token
// counters equal to the usage the API returned, running/waiting gauges back to zero, the
// finished_reason label of each request, and Prometheus's own linter (`promtool check metrics`,
// Debian's prometheus package) on a scrape of the live server over HTTP.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';
import { onPath, requireTool } from './helpers/tools.ts';

const havePromtool = requireTool('metrics-e2e.test.ts', 'promtool', onPath('promtool'), 'apt-get install prometheus');

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});

/** The value of one sample line `name{labels} value`, matching every given label; 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([^{\s]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return 0;
}

async function scrape(): Promise<string> {
  const res = await server.app.inject({ method: 'GET', url: '/metrics' });
  expect(res.statusCode).toBe(200);
  return res.body;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

const LONG_PROMPT = Array.from({ length: 30 }, (_, i) => `Verse ${i}: and the evening and the morning were the day.`).join(' ');

async function complete(body: Record<string, unknown>): Promise<{ usage: Usage; finish: string }> {
  const res = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { prompt: 'And it came to pass', temperature: 0, ...body } });
  expect(res.statusCode).toBe(200);
  const json = res.json() as { usage: Usage; choices: { finish_reason: string }[] };
  return { usage: json.usage, finish: json.choices[0]?.finish_reason ?? '' };
}

describe('/metrics after real requests', () => {
  it('counts what the API returned', async () => {
    const model = server.config.servedModelName;
    const before = await scrape();
    const m = { model_name: model };

    const results = [
      await complete({ max_tokens: 5, ignore_eos: true }), // finishes on length
      await complete({ max_tokens: 7, ignore_eos: true }),
      await complete({ max_tokens: 40, stop: [' '] }), // a stop string ends it early
      // A long prompt twice: the second resumes from the first's prefix snapshot (a cache hit).
      await complete({ prompt: LONG_PROMPT, max_tokens: 2 }),
      await complete({ prompt: LONG_PROMPT, max_tokens: 2 }),
    ];
    expect(results[results.length - 1]?.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const chat = await server.app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: { messages: [{ role: 'user', content: "What does 'river' mean?" }], max_tokens: 64, temperature: 0 },
    });
    expect(chat.statusCode).toBe(200);
    const chatJson = chat.json() as { usage: Usage; choices: { finish_reason: string }[] };
    results.push({ usage: chatJson.usage, finish: chatJson.choices[0]?.finish_reason ?? '' });
    await waitEngineIdle(server.engine);
    const after = await scrape();

    const delta = (name: string, labels: Record<string, string> = m): number => sample(after, name, labels) - sample(before, name, labels);
    expect(delta('spikeserve:time_to_first_token_seconds_count')).toBe(results.length);
    expect(delta('spikeserve:e2e_request_latency_seconds_count')).toBe(results.length);
    expect(delta('spikeserve:prompt_tokens_total')).toBe(results.reduce((a, r) => a + r.usage.prompt_tokens, 0));
    expect(delta('spikeserve:generation_tokens_total')).toBe(results.reduce((a, r) => a + r.usage.completion_tokens, 0));
    expect(delta('spikeserve:prefix_cache_queries_total')).toBe(results.reduce((a, r) => a + r.usage.prompt_tokens, 0));
    expect(delta('spikeserve:prefix_cache_hits_total')).toBe(results.reduce((a, r) => a + r.usage.prompt_tokens_details.cached_tokens, 0));
    // Inter-token latencies between streamed tokens (an end-of-turn token counts in usage but is not streamed).
    expect(delta('spikeserve:inter_token_latency_seconds_count')).toBeGreaterThanOrEqual(results.reduce((a, r) => a + r.usage.completion_tokens - 2, 0));
    expect(delta('spikeserve:inter_token_latency_seconds_count')).toBeLessThanOrEqual(results.reduce((a, r) => a + r.usage.completion_tokens - 1, 0));

    const byReason = new Map<string, number>();
    for (const r of results) byReason.set(r.finish, (byReason.get(r.finish) ?? 0) + 1);
    expect(byReason.get('length')).toBe(4); // two short prompts and the two long ones (max_tokens 2)
    for (const [reason, count] of byReason) {
      expect(delta('spikeserve:request_success_total', { ...m, finished_reason: reason }), reason).toBe(count);
    }

    expect(sample(after, 'spikeserve:num_requests_running', m)).toBe(0);
    expect(sample(after, 'spikeserve:num_requests_waiting', m)).toBe(0);
    expect(sample(after, 'spikeserve:kv_pages_capacity', m)).toBeGreaterThan(0);
  });

  it('reports a request cut by its client as finished_reason abort', async () => {
    const m = { model_name: server.config.servedModelName };
    const before = await scrape();
    const url = await server.listen();
    const ctrl = new AbortController();
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'And it came to pass', max_tokens: 100_000, ignore_eos: true, stream: true }),
      signal: ctrl.signal,
    });
    const reader = res.body!.getReader();
    await reader.read(); // the first bytes: generation is running
    ctrl.abort();
    await waitEngineIdle(server.engine);
    await new Promise((r) => setTimeout(r, 100)); // the route records the abort after the engine's last event
    const after = await scrape();
    expect(sample(after, 'spikeserve:request_success_total', { ...m, finished_reason: 'abort' }) - sample(before, 'spikeserve:request_success_total', { ...m, finished_reason: 'abort' })).toBe(1);
    expect(sample(after, 'spikeserve:num_requests_running', m)).toBe(0);
  });

  it.skipIf(!havePromtool)('promtool check metrics finds nothing but the colon the spikeserve: prefix puts in every name', async () => {
    const url = await server.listen();
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain('spikeserve:time_to_first_token_seconds_count');
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    const lines = `${lint.stdout}\n${lint.stderr}`.split('\n').filter((l) => l.trim() !== '');
    // vLLM-style names keep the colon (dashboards port by a prefix swap); promtool warns about it.
    const colon = /^spikeserve:[a-z0-9_]+ metric names should not contain ':'$/;
    expect(lines.filter((l) => !colon.test(l))).toEqual([]);
    expect(lines.length).toBeGreaterThan(0); // the colon warnings themselves: promtool did lint the scrape
    expect([0, 3]).toContain(lint.status); // 3: lint problems found (the colons); 1 would be a parse error
  });
});
