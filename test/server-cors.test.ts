// CORS (--allowed-origins, src/server/cors.ts) with app.inject(): off by default; a listed origin gets
// its preflight answered before authentication and the Access-Control headers on the real request;
// an unlisted origin gets none; '*' allows any; bad values are refused at start-up.
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { ConfigError, parseServerConfig } from '../src/server/config.ts';
import type { EnginePort } from '../src/server/ports.ts';
import { buildTestApp, testModelDir } from './helpers/server.ts';

/** The app with an engine that is still loading (CORS does not need one). */
async function app(flags: readonly string[]) {
  const tokenizer = await TextTokenizer.load(testModelDir());
  const { app } = await buildTestApp(new Promise<EnginePort>(() => {}), tokenizer, flags);
  await app.ready();
  return app;
}

const PREFLIGHT = {
  method: 'OPTIONS' as const,
  url: '/v1/chat/completions',
  headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, x-stainless-os' },
};

describe('CORS', () => {
  it('is off by default: no Access-Control headers', async () => {
    const a = await app([]);
    const res = await a.inject({ method: 'GET', url: '/health', headers: { origin: 'https://app.example' } });
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
    await a.close();
  });

  it('answers a listed origin\'s preflight without an API key, and marks the authenticated request', async () => {
    const a = await app(['--allowed-origins', 'https://app.example, http://localhost:3000', '--api-key', 'sk-cors']);
    const pre = await a.inject(PREFLIGHT);
    expect(pre.statusCode).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(String(pre.headers['access-control-allow-methods'])).toContain('POST');
    expect(String(pre.headers['access-control-allow-headers'])).toContain('x-stainless-os');
    // The request itself still needs the key; both answers carry the CORS headers so the page can read them.
    const denied = await a.inject({ method: 'GET', url: '/v1/models', headers: { origin: 'https://app.example' } });
    expect(denied.statusCode).toBe(401);
    expect(denied.headers['access-control-allow-origin']).toBe('https://app.example');
    const allowed = await a.inject({ method: 'GET', url: '/v1/models', headers: { origin: 'http://localhost:3000', authorization: 'Bearer sk-cors' } });
    expect(allowed.headers['access-control-allow-origin']).toBe('http://localhost:3000');
    expect(String(allowed.headers['access-control-expose-headers'])).toContain('x-request-id');
    // An origin not on the list gets no grant.
    const other = await a.inject({ ...PREFLIGHT, headers: { ...PREFLIGHT.headers, origin: 'https://evil.example' } });
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
    await a.close();
  });

  it('* allows any origin', async () => {
    const a = await app(['--allowed-origins', '*']);
    const pre = await a.inject({ ...PREFLIGHT, headers: { ...PREFLIGHT.headers, origin: 'https://anything.example' } });
    expect(pre.statusCode).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe('*');
    await a.close();
  });

  it.each([['app.example'], ['https://app.example/path'], ['ftp://x']])('refuses %s at start-up', (origin) => {
    expect(() => parseServerConfig(['--allowed-origins', origin], {})).toThrow(ConfigError);
    expect(() => parseServerConfig(['--allowed-origins', origin], {})).toThrow(/--allowed-origins: ".*" is not an origin/);
  });
});
