// Graceful shutdown. On SIGTERM/SIGINT: report not-ready (/health 503, new generations 503), stop
// accepting connections, let in-flight streams finish for up to --drain-timeout-seconds, then
// abort the rest (their streams end with a "shutting down" error event), close the engine, exit 0.
// A second signal exits at once (code 1).
import type { FastifyInstance } from 'fastify';

export interface DrainOptions {
  readonly drainTimeoutSeconds: number;
}

/** Drains and closes the app (the engine is the caller's to shut down afterwards). */
export async function drainAndClose(app: FastifyInstance, opts: DrainOptions): Promise<void> {
  const serving = app.serving;
  serving.beginDrain();
  const deadline = setTimeout(() => {
    app.log.warn({ inflight: serving.numInflight }, 'drain timeout: aborting requests still in flight');
    serving.abortAll();
  }, opts.drainTimeoutSeconds * 1000);
  deadline.unref();
  const closed = app.close();
  let sweeper: NodeJS.Timeout | undefined;
  try {
    await serving.whenIdle();
    // Finished streams leave keep-alive connections behind that would hold close() open until
    // their keep-alive timeout: close each one as soon as it goes idle.
    sweeper = setInterval(() => app.server.closeIdleConnections(), 50);
    sweeper.unref();
    await closed;
  } finally {
    clearTimeout(deadline);
    clearInterval(sweeper);
  }
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
