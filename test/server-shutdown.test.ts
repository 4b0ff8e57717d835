// Graceful shutdown of the real CLI in a child process: on SIGTERM a running stream finishes, new
// connections are refused, and the process exits 0; past the drain timeout the rest is aborted cleanly;
// connections in every state (idle keep-alive, mid-stream SSE, open WebSockets, a half-sent body) are
// closed by the deadline; refused WebSocket upgrades leave no socket behind, and the prefix snapshots
// are written on the way out.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../src/server/config.ts';
import { rawHalfSentBody, rawIdleKeepAlive, rawUpgrade } from './helpers/raw-http.ts';

const CLI = join(PACKAGE_ROOT, 'src', 'main', 'cli.ts');

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolvePort(addr.port) : reject(new Error('no port'))));
    });
  });
}

interface Server {
  child: ChildProcess;
  port: number;
  base: string;
  exit: Promise<number | null>;
  log: () => string;
}

async function startServer(drainSeconds: number, flags: readonly string[] = []): Promise<Server> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      CLI,
      'serve',
      '--port',
      String(port),
      '--drain-timeout-seconds',
      String(drainSeconds),
      '--cache-dir',
      join(PACKAGE_ROOT, '.cache', 'test-onnx'),
      '--log-level',
      'info',
      ...flags,
    ],
    { cwd: PACKAGE_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
  const exit = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 240_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early:\n${output}`);
    try {
      if ((await fetch(`${base}/health`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`server not healthy in time:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { child, port, base, exit, log: () => output };
}

/** Starts a streamed completion; resolves once its first data event arrived, with the rest to come. */
async function startStream(base: string, maxTokens: number, headers: Record<string, string> = {}, prompt = 'And it came to pass'): Promise<{ rest: Promise<string> }> {
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, ignore_eos: true, temperature: 0, stream: true }),
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!text.includes('data: ')) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  const rest = (async (): Promise<string> => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        text += decoder.decode(value, { stream: true });
      }
    } catch {
      return text; // the connection was cut
    }
  })();
  return { rest };
}

describe('SIGTERM on the real server process', () => {
  let server: Server | undefined;
  afterEach(() => {
    if (server?.child.exitCode === null) server.child.kill('SIGKILL');
    server = undefined;
  });

  it('lets an in-flight stream finish, refuses new connections, exits 0', async () => {
    server = await startServer(60);
    const { rest } = await startStream(server.base, 400);
    server.child.kill('SIGTERM');
    const body = await rest;
    expect(body).toContain('data: [DONE]');
    expect(body).toContain('"finish_reason":"length"');
    await expect(fetch(`${server.base}/health`)).rejects.toThrow();
    expect(await server.exit, server.log()).toBe(0);
  });

  it('aborts what is still running at the drain deadline and still exits 0', async () => {
    server = await startServer(1);
    const { rest } = await startStream(server.base, 1_000_000);
    server.child.kill('SIGTERM');
    const body = await rest;
    expect(body).not.toContain('"finish_reason":"length"');
    // A million tokens would take far longer than the test's timeout: exiting at all shows the abort.
    expect(await server.exit, server.log()).toBe(0);
  });
});

/** Open sockets of a process (Linux: links under /proc/PID/fd that name a socket). */
function socketCount(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      // closed while listing
    }
  }
  return n;
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else out.push(path);
  }
  return out;
}

/** The part of the `ws` client used here (the package ships no types). */
interface WsClient {
  on(ev: 'open', cb: () => void): void;
  on(ev: 'message', cb: (data: Buffer) => void): void;
  on(ev: 'close', cb: (code: number) => void): void;
  on(ev: 'error', cb: (err: Error) => void): void;
  send(data: string): void;
}
const WebSocketCtor = createRequire(import.meta.url)('ws') as new (url: string, opts?: { headers?: Record<string, string> }) => WsClient;

describe('SIGTERM with hostile and idle connections', () => {
  let server: Server | undefined;
  let dir: string | undefined;
  afterEach(() => {
    if (server?.child.exitCode === null) server.child.kill('SIGKILL');
    server = undefined;
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('20 refused WebSocket upgrades leave no socket open; SIGTERM then exits 0 and writes the prefix snapshots', async () => {
    const KEY = 'sk-shutdown';
    dir = mkdtempSync(join(tmpdir(), 'spikeserve-snapshots-'));
    server = await startServer(5, ['--api-key', KEY, '--prefix-cache-dir', dir]);
    const pid = server.child.pid as number;
    // A prompt of several pages leaves a prefix snapshot in memory, which shutdown writes to disk.
    const longPrompt = Array.from({ length: 40 }, (_, i) => `Verse ${i}: and the evening and the morning were the day.`).join(' ');
    const { rest } = await startStream(server.base, 2, { authorization: `Bearer ${KEY}` }, longPrompt);
    expect(await rest).toContain('data: [DONE]');
    expect(filesUnder(dir)).toEqual([]);

    const before = socketCount(pid);
    const refusals: [string, Record<string, string>][] = [
      ['/v1/stream', {}],
      ['/v1/stream', { Authorization: 'Bearer wrong' }],
      ['/v1/stream?api_key=wrong', {}],
    ];
    for (let i = 0; i < 20; i++) {
      const [path, headers] = refusals[i % refusals.length] as (typeof refusals)[number];
      const res = await rawUpgrade(server.port, path, headers);
      expect(res.status).toBe(401);
      await res.closedByServer;
      res.socket.destroy();
    }
    // Keep-alive connections of the earlier request may time out meanwhile: the count may fall, never grow.
    for (let i = 0; i < 100 && socketCount(pid) > before; i++) await new Promise((r) => setTimeout(r, 20));
    expect(socketCount(pid)).toBeLessThanOrEqual(before);

    server.child.kill('SIGTERM');
    expect(await server.exit, server.log()).toBe(0);
    expect(filesUnder(dir).length, server.log()).toBeGreaterThan(0);
  });

  it('exits 0 by the drain deadline with a connection in every state', async () => {
    server = await startServer(3);
    const { port, base } = server;
    const idle = await rawIdleKeepAlive(port, '/health');
    expect(idle.status).toBe(200);
    const sse = await startStream(base, 1_000_000);
    const upgraded = await rawUpgrade(port, '/v1/stream'); // a WebSocket client that never answers a close frame
    expect(upgraded.status).toBe(101);
    const halfSent = rawHalfSentBody(port, '/v1/completions', 1000, '{"prompt": "And it came');
    // A WebSocket with a request running: its stream is aborted at the deadline, then the socket closed.
    const ws = new WebSocketCtor(`${base.replace('http', 'ws')}/v1/stream`);
    const wsMessages: string[] = [];
    const wsClosed = new Promise<number>((resolve) => ws.on('close', resolve));
    ws.on('error', () => undefined);
    await new Promise<void>((resolve) => {
      ws.on('open', () => ws.send(JSON.stringify({ messages: [{ role: 'user', content: 'go on' }], max_tokens: 1_000_000, ignore_eos: true })));
      ws.on('message', (data) => {
        wsMessages.push(data.toString('utf8'));
        resolve();
      });
    });

    server.child.kill('SIGTERM');
    expect(await server.exit, server.log()).toBe(0);
    await Promise.all([idle.closedByServer, upgraded.closedByServer, halfSent.closedByServer, wsClosed]);
    const body = await sse.rest;
    expect(body).toContain('"code":"draining"');
    expect(body).not.toContain('"finish_reason":"length"');
    expect(wsMessages.some((m) => m.includes('"code":"draining"')), wsMessages.slice(-3).join('\n')).toBe(true);
    expect(server.log()).toContain('shut down cleanly');
  });
});
