// Clients that stop reading a stream, on a listening server with --max-stream-buffer-bytes at its
// minimum (64 KiB): an SSE client and a WebSocket client that pause after the first chunk are
// disconnected once their unread output passes the bound, their engine requests are aborted and
// freed, and the server never waits on them with a listener per write (no MaxListenersExceeded
// warning). A client that reads keeps its stream to the end.
import { connect } from 'node:net';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
let port: number;
const warnings: Error[] = [];
const onWarning = (w: Error): void => void warnings.push(w);
beforeAll(async () => {
  server = await startTestServer({ flags: ['--max-stream-buffer-bytes', '65536'], engine: { maxModelLen: 1 << 24 } });
  await server.listen();
  port = Number(new URL(server.url).port);
  process.on('warning', onWarning);
});
afterAll(async () => {
  process.off('warning', onWarning);
  await server?.close();
});

// The kernel takes a few MiB of a paused loopback connection before the server's own buffer grows:
// 16 choices with 20 alternatives per token (a few KiB a chunk) get there within seconds.
const FOREVER = { messages: [{ role: 'user', content: 'go on' }], max_tokens: 1_000_000, n: 16, ignore_eos: true, logprobs: true, top_logprobs: 20 };

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 9000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
}

function engineIdle(): boolean {
  const s = server.engine.stats();
  return s.numRunning + s.numWaiting + s.kvPagesUsed + s.stateSlotsUsed === 0;
}

describe('a client that stops reading', () => {
  it('over SSE is disconnected and its request freed', async () => {
    const socket = connect(port, '127.0.0.1');
    const body = JSON.stringify({ ...FOREVER, stream: true });
    let received = '';
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    socket.setEncoding('utf8');
    await new Promise<void>((resolve) => {
      let paused = false;
      socket.on('data', (d: string) => {
        received += d;
        if (!paused && received.includes('data: ')) {
          paused = true;
          socket.pause(); // from here on the client reads nothing, until resume() below
          resolve();
        }
      });
      socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });
    expect(server.engine.stats().numRunning).toBeGreaterThan(0);
    await until(engineIdle);
    expect(engineIdle()).toBe(true);
    socket.resume();
    await closed;
    expect(received).toContain('chat.completion.chunk');
    expect(received).not.toContain('[DONE]');
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });

  it('over a WebSocket is disconnected and its request freed', async () => {
    const WebSocket = createRequire(import.meta.url)('ws') as new (url: string) => {
      on(ev: string, cb: (...args: unknown[]) => void): void;
      send(data: string): void;
      pause(): void;
      resume(): void;
    };
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/stream`);
    const messages: string[] = [];
    const closed = new Promise<void>((resolve) => ws.on('close', () => resolve()));
    ws.on('error', () => undefined);
    await new Promise<void>((resolve) => {
      ws.on('open', () => ws.send(JSON.stringify(FOREVER)));
      ws.on('message', (data) => {
        messages.push(String(data));
        if (messages.length === 1) {
          ws.pause();
          resolve();
        }
      });
    });
    await until(engineIdle);
    expect(engineIdle()).toBe(true);
    ws.resume();
    await closed;
    expect(messages.some((m) => m === '[DONE]')).toBe(false);
  });

  it('a client that reads gets its whole stream under the same bound', async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...FOREVER, max_tokens: 100, stream: true }),
    });
    const text = await res.text();
    expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(text.match(/"finish_reason":"length"/g)).toHaveLength(16);
    await until(engineIdle);
    expect(engineIdle()).toBe(true);
  });
});
