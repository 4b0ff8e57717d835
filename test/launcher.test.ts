// bin/spikeserve.js runs the server from a JavaScript copy of src/ (bin/compile.js) instead of through
// tsx: the copy has a .js file for every .ts file and src/'s other files, imports between them point at
// the .js files, an unchanged tree reuses its copy, and the server started from it serves a chat
// completion from its engine worker (also compiled) and exits 0 on SIGTERM.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../src/server/config.ts';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

function compile(): string {
  return execFileSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'compile.js')], { encoding: 'utf8' }).trim();
}

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

describe('the compiled copy of src/', () => {
  it('has a .js file per .ts file and the other files, imports the .js files, and is reused while src/ is unchanged', () => {
    const dir = compile();
    expect(dir.startsWith(join(PACKAGE_ROOT, '.cache', 'js'))).toBe(true);
    const src = join(PACKAGE_ROOT, 'src');
    for (const file of filesUnder(src)) {
      const rel = relative(src, file);
      expect(existsSync(join(dir, rel.endsWith('.ts') ? rel.replace(/\.ts$/, '.js') : rel)), rel).toBe(true);
    }
    const cli = readFileSync(join(dir, 'main', 'cli.js'), 'utf8');
    expect(cli).toMatch(/from "\.\.\/server\/config\.js"/);
    expect(cli).not.toMatch(/from "[^"]*\.ts"/);
    const mtime = statSync(join(dir, 'main', 'cli.js')).mtimeMs;
    expect(compile()).toBe(dir);
    expect(statSync(join(dir, 'main', 'cli.js')).mtimeMs).toBe(mtime);
  });

  it('bin/spikeserve.js serves from it: /health, a chat completion, and exit 0 on SIGTERM', async () => {
    const port = await freePort();
    const child = spawn(
      process.execPath,
      [join(PACKAGE_ROOT, 'bin', 'spikeserve.js'), 'serve', '--port', String(port), '--cache-dir', join(PACKAGE_ROOT, '.cache', 'test-onnx'), '--log-level', 'info'],
      { cwd: PACKAGE_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    child.stdout.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr.on('data', (b: Buffer) => (output += b.toString()));
    const exit = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    try {
      const base = `http://127.0.0.1:${port}`;
      const deadline = Date.now() + 240_000;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`server exited early:\n${output}`);
        const ok = await fetch(`${base}/health`).then((r) => r.status === 200, () => false);
        if (ok) break;
        if (Date.now() > deadline) throw new Error(`server not healthy in time:\n${output}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const res = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 4, temperature: 0 }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { choices: { message: { content: string } }[]; usage: { completion_tokens: number } };
      expect(body.usage.completion_tokens).toBeGreaterThan(0);
      expect(typeof body.choices[0]?.message.content).toBe('string');
      // The engine worker started from the compiled copy and built what 'auto' picks for the tiny model.
      expect(output).toMatch(/weights int8, decode session of 1 thread on the decode graph/);
      expect(output).not.toMatch(/running the TypeScript sources through tsx/);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exit).toBe(0);
  });
});
