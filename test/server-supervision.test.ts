// Supervision through the real server (listening, the official openai client and plain fetch), with
// faults injected by the engine's test-only `faults` option (src/engine/faults.ts), triggered by the
// sampling seed a client sends: a step that throws fails only its request with a 500 envelope that
// shows no internals; a worker that dies or hangs turns readiness (/health) 503 before the failed
// request is even answered, is restarted (spikeserve:engine_restarts_total), and serves again; an
// engine that cannot recover fails liveness (/health/live).
import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import type { FaultKind, InjectedFault } from '../src/engine/faults.ts';
import type { EngineOptions } from '../src/engine/engine.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

const SEED = { 'throw-in-execute': 202, exit: 204, oom: 208, hang: 206 } as const satisfies Partial<Record<FaultKind, number>>;
const FAULTS: InjectedFault[] = (Object.keys(SEED) as (keyof typeof SEED)[]).map((kind) => ({ seed: SEED[kind], kind }));

let server: TestServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(engine: Partial<EngineOptions> = {}): Promise<{ s: TestServer; client: OpenAI; model: string }> {
  server = await startTestServer({ engine: { faults: FAULTS, workerHeapMb: 256, ...engine } });
  await server.listen();
  return { s: server, client: new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 }), model: server.config.servedModelName };
}

async function get(s: TestServer, path: string): Promise<{ status: number; body: { error?: { code?: string; type?: string } } }> {
  const res = await fetch(`${s.url}${path}`);
  return { status: res.status, body: (await res.json()) as { error?: { code?: string; type?: string } } };
}

/** Polls /health until it answers `status` (the deadline only stops a hung test). */
async function untilHealth(s: TestServer, status: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  while ((await get(s, '/health')).status !== status) {
    if (Date.now() > deadline) throw new Error(`/health never answered ${status}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The value of one spikeserve series in /metrics. */
async function metric(s: TestServer, name: string): Promise<number> {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`spikeserve:${name}{`));
  if (line === undefined) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ').pop());
}

/** Starts a streamed completion that runs until the server ends it; `text` resolves with its SSE text. */
async function endlessStream(s: TestServer): Promise<{ text: Promise<string> }> {
  const res = await fetch(`${s.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'And it came to pass', max_tokens: 1_000_000, ignore_eos: true, stream: true }),
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!text.includes('"text"')) text += decoder.decode((await reader.read()).value, { stream: true });
  const rest = async (): Promise<string> => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return text;
      text += decoder.decode(value, { stream: true });
    }
  };
  return { text: rest() };
}

describe('a step that throws', () => {
  it('fails only its request with a 500 envelope without internals; readiness stays 200 and the next request is served', async () => {
    const { s, client, model } = await start();
    const ok = await client.completions.create({ model, prompt: 'In the beginning', max_tokens: 6, temperature: 0 });

    const res = await fetch(`${s.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'In the beginning', max_tokens: 6, seed: SEED['throw-in-execute'] }),
    });
    expect(res.status).toBe(500);
    const raw = await res.text();
    expect(JSON.parse(raw)).toEqual({ error: { message: 'internal server error', type: 'server_error', param: null, code: null } });
    expect(raw).not.toMatch(/injected|fault|Error|at /);

    // Streamed: the SDK reads the error event and throws it.
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, seed: SEED['throw-in-execute'], stream: true }).catch((e: unknown) => e);
    let streamError: unknown = stream instanceof Error ? stream : null;
    if (streamError === null) {
      try {
        for await (const _ of stream as AsyncIterable<unknown>);
      } catch (err) {
        streamError = err;
      }
    }
    expect(streamError).toBeInstanceOf(OpenAI.APIError);
    expect((streamError as Error).message).toContain('internal server error');
    expect((streamError as Error).message).not.toContain('injected');

    expect((await get(s, '/health')).status).toBe(200);
    const again = await client.completions.create({ model, prompt: 'In the beginning', max_tokens: 6, temperature: 0 });
    expect(again.choices[0]?.text).toBe(ok.choices[0]?.text);
    expect(await metric(s, 'engine_restarts_total')).toBe(0);
    await waitEngineIdle(s.engine);
  });
});

describe('a lost inference worker', () => {
  it.each(['exit', 'oom', 'hang'] as const)('%s: readiness 503 before the failure is answered, in-flight requests fail, restarted, served again', async (kind) => {
    const { s, client, model } = await start(kind === 'hang' ? { supervision: { stepTimeoutMs: 1000 } } : {});
    const before = await client.completions.create({ model, prompt: 'In the beginning', max_tokens: 6, temperature: 0 });
    const inflight = await endlessStream(s);
    // (waitEngineIdle, which other tests end with, does see a busy engine.)
    await expect(waitEngineIdle(s.engine, 100)).rejects.toThrow(/not idle after 0.1 s: \{"running":1/);

    const failed = await client.completions.create({ model, prompt: 'x', max_tokens: 4, seed: SEED[kind] }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(OpenAI.InternalServerError);
    // By the time the failed request is answered, the server no longer reports ready...
    const health = await get(s, '/health');
    expect(health.status).toBe(503);
    expect(health.body.error).toMatchObject({ type: 'service_unavailable_error', code: 'engine_restarting' });
    // ...but it is alive (a restart is under way), and new requests get a retryable 503.
    expect((await get(s, '/health/live')).status).toBe(200);
    const refused = await client.completions.create({ model, prompt: 'x', max_tokens: 1 }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ status: 503, code: 'engine_restarting' });
    // The stream that was running ends with an error event and [DONE].
    const text = await inflight.text;
    expect(text).toContain('"error":{"message":"internal server error"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);

    await untilHealth(s, 200);
    const after = await client.completions.create({ model, prompt: 'In the beginning', max_tokens: 6, temperature: 0 });
    expect(after.choices[0]?.text).toBe(before.choices[0]?.text);
    expect(await metric(s, 'engine_restarts_total')).toBe(1);
    await waitEngineIdle(s.engine);
    expect(await metric(s, 'num_requests_running')).toBe(0);
  });

  it('fails liveness once the engine has failed more often than allowed, and answers 503 engine_failed', async () => {
    const { s, client, model } = await start({ supervision: { maxRestarts: 0 } });
    expect((await get(s, '/health/live')).status).toBe(200);
    await client.completions.create({ model, prompt: 'x', max_tokens: 4, seed: SEED.exit }).catch(() => undefined);
    const live = await get(s, '/health/live');
    expect(live.status).toBe(503);
    expect(live.body.error).toMatchObject({ type: 'service_unavailable_error', code: 'engine_failed' });
    expect((await get(s, '/health')).body.error?.code).toBe('engine_failed');
    const refused = await client.completions.create({ model, prompt: 'x', max_tokens: 1 }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ status: 503, code: 'engine_failed' });
    expect(await metric(s, 'engine_restarts_total')).toBe(0);
  });
});
