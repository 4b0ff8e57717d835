// Reading one request's events from a real Engine, as the engine-level tests do.
import type { Engine } from '../../src/engine/engine.ts';
import type { GenerateRequest, TokenEvent } from '../../src/engine/types.ts';

/** Every event of the request, in order, and the generated token ids among them. */
export async function collect(engine: Engine, req: GenerateRequest, signal?: AbortSignal): Promise<{ tokens: number[]; events: TokenEvent[] }> {
  const tokens: number[] = [];
  const events: TokenEvent[] = [];
  for await (const e of engine.generate(req, signal)) {
    events.push(e);
    if (e.type === 'token') tokens.push(e.tokenId);
  }
  return { tokens, events };
}

/** The last event, which must be `done`. */
export function done(events: readonly TokenEvent[]): Extract<TokenEvent, { type: 'done' }> {
  const e = events[events.length - 1];
  if (e?.type !== 'done') throw new Error(`stream did not end with done: ${JSON.stringify(e)}`);
  return e;
}
