// The engine's error hierarchy. The server maps each class to an HTTP status in one table
// (src/server/errors.ts); nothing below the server knows about HTTP.

export class EngineError extends Error {
  override readonly name: string = 'EngineError';
}

/** The checkpoint cannot be served: bad config field, missing tensor, wrong shape, unreadable file. */
export class ModelLoadError extends EngineError {
  override readonly name = 'ModelLoadError';
}

/** The request can never be served by this engine (too long for the pool, bad token id, …). */
export class RequestRejectedError extends EngineError {
  override readonly name = 'RequestRejectedError';
  constructor(message: string, readonly param: string | null = null) {
    super(message);
  }
}

/** The waiting queue is full; the client should retry later. */
export class QueueFullError extends EngineError {
  override readonly name = 'QueueFullError';
}

/** The engine is shutting down or not yet loaded. */
export class EngineUnavailableError extends EngineError {
  override readonly name = 'EngineUnavailableError';
}
