// Connections opened by hand (node:net), for tests that need a client to leave a connection in a
// given state: a WebSocket upgrade request (answered 101 or refused), a keep-alive connection left
// idle, a request whose body is only half sent.
import { connect, type Socket } from 'node:net';

export interface RawResponse {
  /** Status code of the response head. */
  readonly status: number;
  readonly socket: Socket;
  /** Resolves when the server ends the connection (FIN), or it is reset. */
  readonly closedByServer: Promise<void>;
}

function openRaw(port: number): { socket: Socket; closedByServer: Promise<void> } {
  const socket = connect(port, '127.0.0.1');
  const closedByServer = new Promise<void>((resolve) => {
    socket.once('end', () => resolve());
    socket.once('close', () => resolve());
  });
  socket.on('error', () => undefined); // a reset at shutdown is one of the outcomes tests wait for
  return { socket, closedByServer };
}

/** Writes `head` and resolves once a response head (status line … blank line) arrived. */
function request(port: number, head: string, body = ''): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const { socket, closedByServer } = openRaw(port);
    let received = '';
    socket.setEncoding('latin1');
    socket.once('error', reject);
    socket.on('data', (d: string) => {
      received += d;
      const m = /^HTTP\/1\.1 (\d{3})/.exec(received);
      if (m !== null && received.includes('\r\n\r\n')) resolve({ status: Number(m[1]), socket, closedByServer });
    });
    socket.write(head + body);
  });
}

/** A WebSocket upgrade request for `path` (with its query), sent by hand. */
export function rawUpgrade(port: number, path: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  const lines = [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return request(port, `${lines.join('\r\n')}\r\n\r\n`);
}

/** A keep-alive GET whose connection the client then leaves open and idle. */
export function rawIdleKeepAlive(port: number, path: string): Promise<RawResponse> {
  return request(port, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: keep-alive\r\n\r\n`);
}

/** A POST that announces `contentLength` bytes of JSON and sends only `sent` of them. */
export function rawHalfSentBody(port: number, path: string, contentLength: number, sent: string): { socket: Socket; closedByServer: Promise<void> } {
  const raw = openRaw(port);
  raw.socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${contentLength}\r\n\r\n${sent}`);
  return raw;
}
