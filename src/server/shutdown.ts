// Graceful shutdown. On SIGTERM/SIGINT, within --drain-timeout-seconds (T):
//
//   0 ─ not ready (/health 503, new generations 503); the listening socket closes (no new connections);
//   │   idle keep-alive connections are closed as soon as they are idle
//   │   in-flight generations run on
//   T − grace ─ the ones still running are aborted: their streams end with a "shutting down" error
//   │   event and [DONE] (grace = min(1 s, T/4), the time left for those last frames)
//   once no generation is in flight ─ WebSockets get a close frame (1001)
//   T ─ every connection still open is destroyed, whatever its state (a request body half sent, a
//       client that never answers the close frame, an upgraded socket nobody reads)
//
// then the app closes and the caller shuts the engine down (which writes the prefix snapshots) and
// exits 0. A second signal exits at once (code 1).
import type { FastifyInstance } from 'fastify';

export interface DrainOptions {
  readonly drainTimeoutSeconds: number;
}

/** Longest time kept at the end of the drain for aborted streams to write their last frames. */
const ABORT_GRACE_MS = 1000;
/** How often connections that became idle (a finished keep-alive request) are closed during a drain. */
const IDLE_SWEEP_MS = 50;

/** Resolves true when `p` settles within `ms`, false otherwise (the timer never holds the process). */
function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, ms));
    timer.unref();
  });
  return Promise.race([p.then(() => true), timeout]).finally(() => clearTimeout(timer));
}

/** Drains and closes the app within the drain timeout (the engine is the caller's to shut down afterwards). */
export async function drainAndClose(app: FastifyInstance, opts: DrainOptions): Promise<void> {
  const { serving, openSockets } = app;
  const startMs = performance.now();
  const deadlineMs = opts.drainTimeoutSeconds * 1000;
  const left = (): number => deadlineMs - (performance.now() - startMs);
  serving.beginDrain();
  if (app.server.listening) app.server.close(); // its callback is app.close()'s business
  const sweeper = setInterval(() => app.server.closeIdleConnections(), IDLE_SWEEP_MS);
  sweeper.unref();
  try {
    app.server.closeIdleConnections();
    const abortAtMs = deadlineMs - Math.min(ABORT_GRACE_MS, deadlineMs / 4);
    if (!(await within(serving.whenIdle(), abortAtMs))) {
      app.log.warn({ inflight: serving.numInflight }, 'drain timeout: aborting requests still in flight');
      serving.abortAll();
      await within(serving.whenIdle(), left());
    }
    for (const client of app.websocketServer.clients) client.close(1001, 'server shutting down');
    if (!(await within(openSockets.whenEmpty(), left()))) {
      app.log.warn({ connections: openSockets.size }, 'drain timeout: closing the connections still open');
      openSockets.destroyAll();
    }
  } finally {
    clearInterval(sweeper);
  }
  await app.close();
}

/** Installs the signal handlers; returns a function that removes them. */
export function installShutdownHandlers(
  app: FastifyInstance,
  opts: DrainOptions & { readonly onClosed: () => Promise<void>; readonly exit: (code: number) => void },
): () => void {
  let shuttingDown = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (shuttingDown) {
      app.log.warn({ signal }, 'second signal: exiting now');
      opts.exit(1);
      return;
    }
    shuttingDown = true;
    app.log.info({ signal, inflight: app.serving.numInflight, drainTimeoutSeconds: opts.drainTimeoutSeconds }, 'shutting down: draining');
    drainAndClose(app, opts)
      .then(opts.onClosed)
      .then(
        () => {
          app.log.info('shut down cleanly');
          opts.exit(0);
        },
        (err: unknown) => {
          app.log.error({ err }, 'error during shutdown');
          opts.exit(1);
        },
      );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return () => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };
}
