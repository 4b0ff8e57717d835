// Sockets on a listening server with --api-key: a refused WebSocket upgrade (no key, wrong key, wrong
// `?api_key=`, unknown path, bad URL) is answered and its socket closed by the server, so the number
// of open server sockets comes back to where it was; an accepted upgrade still works. And a key given
// as `?api_key=` never appears in the request log.
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawUpgrade, type RawResponse } from './helpers/raw-http.ts';
import { buildTestApp, startTestServer, type TestServer } from './helpers/server.ts';

const KEY = 'sk-conn';
let server: TestServer;
let port: number;
beforeAll(async () => {
  server = await startTestServer({ flags: ['--api-key', KEY] });
  await server.listen();
  port = Number(new URL(server.url).port);
});
afterAll(async () => server?.close());

function openConnections(): Promise<number> {
  return new Promise((resolve, reject) => server.app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
}

function upgrade(path: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return rawUpgrade(port, path, headers);
}

async function waitFor(cond: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 10));
}

describe('refused WebSocket upgrades', () => {
  it('close their sockets: 20 refusals leave the open-socket count where it was', async () => {
    const before = await openConnections();
    const refusals: [string, Record<string, string>, number][] = [
      ['/v1/stream', {}, 401],
      ['/v1/stream', { Authorization: 'Bearer wrong' }, 401],
      ['/v1/stream?api_key=wrong', {}, 401],
      ['/v1/no-such-route', { Authorization: `Bearer ${KEY}` }, 404],
    ];
    for (let i = 0; i < 20; i++) {
      const [path, headers, status] = refusals[i % refusals.length] as (typeof refusals)[number];
      const res = await upgrade(path, headers);
      expect(res.status, path).toBe(status);
      // The server ends the connection itself; the client has not closed anything yet.
      await res.closedByServer;
      res.socket.destroy();
    }
    await waitFor(async () => (await openConnections()) === before);
    expect(await openConnections()).toBe(before);
  });

  it('close the socket of a malformed upgrade request URL too', async () => {
    const before = await openConnections();
    const res = await upgrade('/v1/str%zzeam?api_key=%zz%', {});
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    await res.closedByServer;
    res.socket.destroy();
    await waitFor(async () => (await openConnections()) === before);
    expect(await openConnections()).toBe(before);
  });

  it('still upgrade with the right key, and the socket closes when the client leaves', async () => {
    const before = await openConnections();
    const res = await upgrade(`/v1/stream?api_key=${KEY}`);
    expect(res.status).toBe(101);
    expect(await openConnections()).toBe(before + 1);
    res.socket.destroy();
    await waitFor(async () => (await openConnections()) === before);
    expect(await openConnections()).toBe(before);
  });
});

describe('request log', () => {
  it('never shows the key of ?api_key=, accepted or not', async () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString('utf8'));
        done();
      },
    });
    const { app } = await buildTestApp(server.engine, server.tokenizer, ['--api-key', KEY], undefined, { level: 'info', stream });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const appPort = (app.server.address() as AddressInfo).port;
    try {
      const accepted = await rawUpgrade(appPort, `/v1/stream?x=1&api_key=${KEY}&y=2`);
      expect(accepted.status).toBe(101);
      accepted.socket.destroy();
      const refused = await rawUpgrade(appPort, '/v1/stream?api_key=sk-guessed-key');
      expect(refused.status).toBe(401);
      await refused.closedByServer;
      const plain = await app.inject({ method: 'GET', url: `/v1/models?API_KEY=${KEY}` });
      expect(plain.statusCode).toBe(401); // only /v1/stream takes the key from the query
    } finally {
      await app.close();
    }
    const log = lines.join('');
    expect(log).toContain('"url":"/v1/stream?x=1&api_key=[REDACTED]&y=2"');
    expect(log).toContain('"url":"/v1/stream?api_key=[REDACTED]"');
    expect(log).toContain('"url":"/v1/models?API_KEY=[REDACTED]"');
    expect(log).not.toContain(KEY);
    expect(log).not.toContain('sk-guessed-key');
  });
});
