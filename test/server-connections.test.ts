// Sockets on a listening server with --api-key: a refused WebSocket upgrade (no key, wrong key, wrong
// `?api_key=`, unknown path, bad URL) is answered and its socket closed by the server, so the number
// of open server sockets comes back to where it was; an accepted upgrade still works.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawUpgrade, type RawResponse } from './helpers/raw-http.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

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
