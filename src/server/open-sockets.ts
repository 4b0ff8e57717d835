// Every TCP connection of the HTTP server, whatever it carries: idle keep-alive, a request whose body
// is still arriving, an SSE stream, or a socket upgraded to a WebSocket (which the HTTP server stops
// tracking once it is handed over). Shutdown closes what is left through this list, so no state a
// client can leave a connection in keeps the process alive past the drain deadline.
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

export class OpenSockets {
  readonly #sockets = new Set<Socket>();
  #emptyWaiters: (() => void)[] = [];

  get size(): number {
    return this.#sockets.size;
  }

  add(socket: Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => {
      this.#sockets.delete(socket);
      if (this.#sockets.size > 0) return;
      const waiters = this.#emptyWaiters;
      this.#emptyWaiters = [];
      for (const w of waiters) w();
    });
  }

  /** Resolves once every connection has closed. */
  whenEmpty(): Promise<void> {
    if (this.#sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#emptyWaiters.push(resolve));
  }

  /** Destroys every connection still open; returns how many there were. */
  destroyAll(): number {
    const n = this.#sockets.size;
    for (const s of this.#sockets) s.destroy();
    return n;
  }
}

export default fp(
  async function openSocketsPlugin(app: FastifyInstance) {
    const sockets = new OpenSockets();
    app.decorate('openSockets', sockets);
    app.server.on('connection', (socket: Socket) => sockets.add(socket));
  },
  { name: 'spikeserve-open-sockets' },
);
