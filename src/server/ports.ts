// What the HTTP layer needs from the parts below it, as structural types: the Engine
// (src/engine/engine.ts), the TextTokenizer (src/engine/tokenizer.ts) and the metrics registry
// (src/server/metrics.ts) each satisfy one of these. The app depends on these shapes only, so a
// route test can build the app around the real parts without the CLI.
import type { ModelConfig } from '../engine/model/config.ts';
import type { TextTokenizer } from '../engine/tokenizer.ts';
import type { EngineHealth, EngineStats, PrefixCacheDeletion, PrefixCacheEntryInfo, SubmitRequest, TokenEvent } from '../engine/types.ts';

export interface EnginePort {
  readonly config: ModelConfig;
  /** Longest prompt + completion, in tokens, one sequence may reach. */
  readonly maxModelLen: number;
  /** Throws RequestRejectedError | QueueFullError | EngineUnavailableError before the first event. */
  generate(req: SubmitRequest, signal?: AbortSignal): AsyncIterable<TokenEvent>;
  abort(requestId: string): void;
  stats(): EngineStats;
  /** ready / restarting after a lost worker / failed for good (readiness and liveness follow it). */
  health(): EngineHealth;
  /** The prefix-cache API: the most recently used snapshots (memory and disk), and deleting one by key. */
  listPrefixCache(limit: number): Promise<PrefixCacheEntryInfo[]>;
  deletePrefixCache(key: string): Promise<PrefixCacheDeletion>;
  /** stepTimeoutMs: how long to wait for the step in flight (Engine.shutdown). */
  shutdown(opts?: { readonly stepTimeoutMs?: number }): Promise<void>;
}

/** encodeToInt32 is the HTTP thread's encode (long text goes to a worker); tokenBytes gives a token's raw bytes. */
export type TokenizerPort = Pick<
  TextTokenizer,
  'encode' | 'encodeToInt32' | 'decode' | 'tokenToId' | 'tokenBytes' | 'isSpecial' | 'vocabSize' | 'containsSpecialTokenText'
>;

export interface RequestTracker {
  onEvent(ev: TokenEvent): void;
  onFinish(): void;
}

export interface MetricsPort {
  trackRequest(): RequestTracker;
  updateEngineStats(s: EngineStats): void;
  updateEngineHealth(h: EngineHealth): void;
  readonly contentType: string;
  render(): Promise<string>;
}

/** The checkpoint's chat template and the special-token strings it refers to (tokenizer_config.json). */
export interface ChatAssets {
  readonly template: string | null;
  readonly bosToken: string;
  readonly eosToken: string;
}

/** A large request body parsed off the HTTP thread: the body the route validates, and what was derived from its bulk. */
export interface ParsedLargeBody {
  readonly body: unknown;
  /** Route-specific (the routes' prompt worker: the prompt's ids, or the 4xx its preparation raised). */
  readonly derived: unknown;
}

/** One large body on its way off the HTTP thread. */
export interface LargeBodySession {
  /** The next chunk, as it arrives (copied: the caller may reuse its buffer). */
  push(chunk: Buffer): void;
  /** All of it arrived: the parsed body, or a 4xx (bad UTF-8 or JSON, an invalid body). */
  end(): Promise<ParsedLargeBody>;
  /** The request failed or the client left: forget the body. */
  abort(): void;
}

/** Parses large bodies of some routes off the HTTP thread (the JSON body parser hands them over). */
export interface LargeBodyParser {
  /** A session for a body of the route at `routeUrl`, or null when that route's bodies are parsed here. */
  begin(routeUrl: string): LargeBodySession | null;
}
