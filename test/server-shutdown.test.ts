// Graceful shutdown of the real CLI in a child process: on SIGTERM a running stream finishes, new
// connections are refused, and the process exits 0; past the drain timeout the rest is aborted cleanly.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../src/server/config.ts';

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
  base: string;
  exit: Promise<number | null>;
  log: () => string;
}

async function startServer(drainSeconds: number): Promise<Server> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'serve', '--port', String(port), '--drain-timeout-seconds', String(drainSeconds), '--cache-dir', join(PACKAGE_ROOT, '.cache', 'test-onnx'), '--log-level', 'info'],
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
  return { child, base, exit, log: () => output };
}

/** Starts a streamed completion; resolves once its first data event arrived, with the rest to come. */
async function startStream(base: string, maxTokens: number): Promise<{ rest: Promise<string> }> {
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'And it came to pass', max_tokens: maxTokens, ignore_eos: true, temperature: 0, stream: true }),
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
