// Admission before expensive work, on a listening server with --max-queue 3 and --max-waiting-tokens
// 400 (the engine's own queue bound left at its default, so every 429 here is the server's): the engine
// reports the prompt tokens waiting; a request that would overflow either budget is a 429 with
// Retry-After (before its body is even complete when the queue is full or its Content-Length says it is
// too big), a request that could never fit is a 400, and requests still being read count too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawHalfSentBody } from './helpers/raw-http.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

let server: TestServer;
let port: number;
beforeAll(async () => {
  server = await startTestServer({ flags: ['--max-queue', '3', '--max-waiting-tokens', '400'], engine: { maxNumSeqs: 1, maxModelLen: 1 << 20 } });
  await server.listen();
  port = Number(new URL(server.url).port);
});
afterAll(async () => server?.close());

const ids = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => 3 + ((i * 31 + seed) % 200));

/** A streamed completion left running (or waiting) until abort() is called. */
function background(body: Record<string, unknown>): { abort(): void; done: Promise<unknown> } {
  const ctl = new AbortController();
  const done = fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
    signal: ctl.signal,
  })
    .then((res) => res.text())
    .catch((e: unknown) => e);
  return { abort: () => ctl.abort(), done };
}

async function post(body: Record<string, unknown>): Promise<{ status: number; retryAfter: string | null; json: { error?: { code: string; param: string | null; message: string } } }> {
  const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), json: (await res.json()) as { error?: { code: string; param: string | null; message: string } } };
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

/** Reads a raw response head and its body (Content-Length framed). */
function readResponse(socket: import('node:net').Socket): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('error', reject);
    socket.on('data', (d: string) => {
      text += d;
      const head = text.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(text)?.[1];
      if (head >= 0 && length !== undefined && text.length >= head + 4 + Number(length)) {
        resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]), body: text.slice(head + 4) });
      }
    });
  });
}

describe('admission budgets', () => {
  it('429s over the queue or the waiting tokens, 400s what could never fit, and counts requests still being read', async () => {
    const running = background({ prompt: 'a', max_tokens: 1_000_000, ignore_eos: true });
    const waiting: ReturnType<typeof background>[] = [];
    try {
      await until(() => server.engine.stats().numRunning === 1);
      waiting.push(background({ prompt: ids(100, 1), max_tokens: 1 }), background({ prompt: ids(150, 2), max_tokens: 1 }));
      await checkBudgets(waiting);
    } finally {
      running.abort();
      for (const w of waiting) w.abort();
      await Promise.all([running.done, ...waiting.map((w) => w.done)]);
    }
    await waitEngineIdle(server.engine);
    expect(server.engine.stats().waitingPromptTokens).toBe(0);
    expect(server.app.admission.numPreparing).toBe(0);
    expect(server.app.admission.numPreparingTokens).toBe(0);
    // Everything released: a request is served again.
    expect((await post({ prompt: ids(300, 7), max_tokens: 2, ignore_eos: true })).status).toBe(200);
  });
});

/** With one request running and `waiting` (100 and 150 prompt tokens) queued behind it. */
async function checkBudgets(waiting: ReturnType<typeof background>[]): Promise<void> {
  {
    await until(() => server.engine.stats().numWaiting === 2);
    // The engine's own count of the prompt tokens waiting.
    expect(server.engine.stats().waitingPromptTokens).toBe(250);

    // 250 waiting + 200 > 400: refused once tokenized.
    const tooMany = await post({ prompt: ids(200, 3), max_tokens: 1 });
    expect(tooMany.status).toBe(429);
    expect(tooMany.retryAfter).toBe('1');
    expect(tooMany.json.error).toMatchObject({ code: 'waiting_tokens_full', param: null });
    // n choices are n requests: 2 waiting + 2 > 3.
    expect((await post({ prompt: ids(10, 4), max_tokens: 1, n: 2 })).json.error?.code).toBe('queue_full');
    // More than the whole budget: a 400, whatever is waiting (n choices count n times: 2 × 201 > 400).
    // One-digit ids keep the body small enough for the early estimate to let it through.
    for (const [length, n] of [[401, 1], [201, 2]] as const) {
      const never = await post({ prompt: Array.from({ length }, () => 5), max_tokens: 1, n });
      expect(never.status).toBe(400);
      expect(never.json.error).toMatchObject({ param: 'prompt', code: 'context_length_exceeded' });
      expect(never.json.error?.message).toContain('--max-waiting-tokens');
    }

    // A body that says it is too big is refused before it is sent: 250 + 2000/8 > 400.
    const big = rawHalfSentBody(port, '/v1/completions', 2000, '{"prompt": [');
    const bigAnswer = await readResponse(big.socket);
    expect(bigAnswer.status).toBe(429);
    expect(JSON.parse(bigAnswer.body).error.code).toBe('waiting_tokens_full');
    big.socket.destroy();

    // A request whose body is still arriving holds its place: 2 waiting + 1 being read = the queue.
    const reading = rawHalfSentBody(port, '/v1/completions', 100, '{"prompt": "ab');
    await until(() => server.app.admission.numPreparing === 1);
    const queueFull = await post({ prompt: 'b', max_tokens: 1 });
    expect(queueFull.status).toBe(429);
    expect(queueFull.json.error?.code).toBe('queue_full');
    reading.socket.destroy(); // the client gives up: its place is freed
    await until(() => server.app.admission.numPreparing === 0);

    // A third waiting request fits (350 tokens); a fourth is refused before its body is complete.
    waiting.push(background({ prompt: ids(100, 6), max_tokens: 1 }));
    await until(() => server.engine.stats().numWaiting === 3);
    const fourth = rawHalfSentBody(port, '/v1/completions', 100, '{"prompt": "ab');
    const fourthAnswer = await readResponse(fourth.socket);
    expect(fourthAnswer.status).toBe(429);
    expect(JSON.parse(fourthAnswer.body).error.code).toBe('queue_full');
    fourth.socket.destroy();
  }
}
