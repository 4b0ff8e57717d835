// CORS in a real browser (headless Chromium via playwright-core): a page served from another origin
// calls the API with fetch() and an Authorization header — the preflight and the streamed answer go
// through when that origin is allowed, and the browser blocks the call when it is not.
// Skipped, saying why, where /usr/bin/chromium is absent (a failure under CI).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromiumTests, launchChromium } from './helpers/browser.ts';
import { startTestServer, waitEngineIdle, type TestServer } from './helpers/server.ts';

const runs = chromiumTests('server-cors-browser.test.ts');

describe.skipIf(!runs)('cross-origin calls from a browser page', () => {
  let api: TestServer;
  let site: Server;
  let siteUrl = '';
  let browser: Browser;

  beforeAll(async () => {
    // The page's origin: another port on 127.0.0.1 is another origin.
    site = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>app</title>'));
    await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
    siteUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
    api = await startTestServer({ flags: ['--allowed-origins', siteUrl, '--api-key', 'sk-browser'] });
    await api.listen();
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await api?.close();
    await new Promise((r) => site?.close(r));
  });

  /** Runs a streamed chat request from a page at `origin`; returns the SSE text or the error. */
  async function callFrom(origin: string): Promise<{ ok: boolean; text: string }> {
    const page = await browser.newPage();
    try {
      await page.goto(origin === siteUrl ? siteUrl : `${origin}/`);
      return await page.evaluate(async (apiUrl: string) => {
        try {
          const res = await fetch(`${apiUrl}/v1/chat/completions`, {
            method: 'POST',
            headers: { authorization: 'Bearer sk-browser', 'content-type': 'application/json' },
            body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, stream: true, ignore_eos: true }),
          });
          return { ok: res.ok, text: `${res.headers.get('x-request-id') ?? 'no-id'}\n${await res.text()}` };
        } catch (err) {
          return { ok: false, text: String(err) };
        }
      }, api.url);
    } finally {
      await page.close();
    }
  }

  it('an allowed origin streams the answer and can read x-request-id', async () => {
    const r = await callFrom(siteUrl);
    expect(r.ok).toBe(true);
    expect(r.text).not.toMatch(/^no-id/);
    expect(r.text).toContain('data: [DONE]');
    await waitEngineIdle(api.engine);
  });

  it('another origin is blocked by the browser', async () => {
    // A second page server on yet another port: not on the list.
    const other = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html>'));
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    try {
      const r = await callFrom(`http://127.0.0.1:${(other.address() as AddressInfo).port}`);
      expect(r.ok).toBe(false);
      expect(r.text).toMatch(/Failed to fetch/);
    } finally {
      await new Promise((r) => other.close(r));
    }
  });
});
