// The lifetime of one generation request: an AbortSignal that fires when the client goes away
// (the response closes before it finished — SSE or not) or when a drain gives up waiting, and a
// registration in ServingState so shutdown can wait for it. Release exactly once, in a finally.
import type { FastifyInstance, FastifyReply } from 'fastify';
import { UnavailableError } from './errors.ts';

export interface RequestLifetime {
  readonly signal: AbortSignal;
  release(): void;
}

export function beginRequestLifetime(app: FastifyInstance, reply: FastifyReply): RequestLifetime {
  const controller = new AbortController();
  const untrack = app.serving.track(controller);
  const res = reply.raw;
  const onClose = (): void => {
    if (!res.writableFinished) controller.abort(new UnavailableError('the client closed the connection', 'client_closed'));
  };
  res.once('close', onClose);
  return {
    signal: controller.signal,
    release() {
      res.off('close', onClose);
      untrack();
    },
  };
}

/**
 * Same, for a WebSocket: the socket closing aborts the request. A near-copy of the HTTP one on
 * purpose: only the close condition differs, and a helper taking it as a callback reads worse.
 */
export function beginSocketLifetime(app: FastifyInstance, socket: { once(ev: 'close', cb: () => void): unknown; off(ev: 'close', cb: () => void): unknown }): RequestLifetime {
  const controller = new AbortController();
  const untrack = app.serving.track(controller);
  const onClose = (): void => controller.abort(new UnavailableError('the client closed the socket', 'client_closed'));
  socket.once('close', onClose);
  return {
    signal: controller.signal,
    release() {
      socket.off('close', onClose);
      untrack();
    },
  };
}
