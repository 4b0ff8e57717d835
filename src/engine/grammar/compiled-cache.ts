// Compiled grammars by constraint key, least recently used out. Compiling a schema against the
// vocabulary costs 0.1–3 s in XGrammar's WASM build (bench/structured.ts); the same schema sent again
// (an agent's every call, n > 1 choices) is compiled once. Concurrent requests for a key that is still
// compiling share that compile. An evicted grammar is freed at once: matchers created from it hold
// their own reference to it inside XGrammar, so they keep working.
import type { Disposable } from './xgrammar.ts';

export class CompiledCache<G extends Disposable> {
  private readonly maxEntries: number;
  /** Insertion order = recency (a hit is re-inserted). */
  private readonly entries = new Map<string, G>();
  private readonly inFlight = new Map<string, Promise<G>>();

  constructor(maxEntries: number) {
    this.maxEntries = Math.max(1, Math.floor(maxEntries)); // the newest entry is always kept: its caller is about to use it
  }

  get size(): number {
    return this.entries.size;
  }

  /** The grammar for `key`, compiling it with `compile` on a miss; `cached` says whether it was kept. */
  async get(key: string, compile: () => Promise<G>): Promise<{ grammar: G; cached: boolean }> {
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return { grammar: hit, cached: true };
    }
    const pending = this.inFlight.get(key);
    if (pending !== undefined) return { grammar: await pending, cached: true };
    const promise = compile();
    this.inFlight.set(key, promise);
    try {
      const grammar = await promise;
      this.insert(key, grammar);
      return { grammar, cached: false };
    } finally {
      this.inFlight.delete(key);
    }
  }

  private insert(key: string, grammar: G): void {
    this.entries.set(key, grammar);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.get(oldest)?.dispose();
      this.entries.delete(oldest);
    }
  }
}
