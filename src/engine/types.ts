// Plain typed data that crosses the engine boundary: what the server submits and what it gets back.
// No JSON wire shapes and no Fastify here (see ../../README.md, "Architecture").
import type { SnapshotDiskStats } from '../cache/cache-manager.ts';

export type { PrefixCacheEntryInfo, SnapshotDiskStats } from '../cache/cache-manager.ts';

/** Sampling controls, already validated and defaulted by the HTTP layer. */
export interface SamplingParams {
  /** 0 means greedy (argmax). */
  readonly temperature: number;
  readonly topP: number; // 1 = off
  readonly topK: number; // 0 or -1 = off
  readonly minP: number; // 0 = off
  /** Seed of this request's private PRNG; null = nondeterministic. */
  readonly seed: number | null;
  readonly presencePenalty: number; // 0 = off
  readonly frequencyPenalty: number; // 0 = off
  readonly repetitionPenalty: number; // 1 = off
  /** token id → bias added to its logit. */
  readonly logitBias: ReadonlyMap<number, number>;
  /** Number of top alternatives to return with each sampled token; null = no logprobs at all. */
  readonly logprobs: number | null;
  /** Logprobs of every prompt token (with this many alternatives); null = none. */
  readonly promptLogprobs: number | null;
  readonly maxTokens: number;
  readonly minTokens: number;
  /** Generation ends when one of these is sampled (after minTokens); eos ids are added unless ignoreEos. */
  readonly stopTokenIds: readonly number[];
  readonly ignoreEos: boolean;
}

/**
 * A constraint on the generated text (structured outputs), compiled by XGrammar in the grammar worker
 * (./grammar/). Schemas and grammars travel as text, the form XGrammar reads. `param` names the
 * request field it came from, for the error when it does not compile.
 */
export type GrammarConstraint = { readonly param: string } & (
  /** JSON matching this JSON Schema (no properties or items beyond those the schema names). */
  | { readonly kind: 'json_schema'; readonly schema: string }
  /** Any JSON object. */
  | { readonly kind: 'json_object' }
  /** Text matching this regular expression (XGrammar's subset: no lookaround, no backreferences). */
  | { readonly kind: 'regex'; readonly pattern: string }
  /** Exactly one of these strings. */
  | { readonly kind: 'choice'; readonly choices: readonly string[] }
  /** Text of this EBNF grammar (XGrammar's dialect, root rule `root`). */
  | { readonly kind: 'ebnf'; readonly grammar: string }
  /**
   * One or more blocks `begin + JSON + end` joined by `separator` (tool calls in the chat template's
   * format), each JSON matching `schema`; at most one block unless `multiple`.
   */
  | {
      readonly kind: 'tagged_json';
      readonly begin: string;
      readonly end: string;
      readonly separator: string;
      readonly schema: string;
      readonly multiple: boolean;
    }
);

export interface GenerateRequest {
  /** Unique per engine; the server derives it from the HTTP request id (plus choice index for n > 1). */
  readonly requestId: string;
  readonly promptTokenIds: PromptTokenIds;
  readonly sampling: SamplingParams;
  /** Send `progress` events while the prompt is prefilled. */
  readonly reportProgress: boolean;
  /**
   * The first this-many prompt tokens are likely to start later prompts too (in a chat: everything
   * before the last message, e.g. a long document in the system message). With prefix caching the
   * state is also snapshotted at the last page boundary within them, not only at the prompt's last one.
   */
  readonly sharedPrefixTokens?: number;
  /**
   * The request id of another request with the same prompt (another choice of the same `n > 1`
   * request): this one waits until that one has computed the prompt, then resumes from its prefix
   * snapshot, so the prompt is computed once for all choices.
   */
  readonly forkOf?: string;
  /** Constrain the output to this grammar; the request waits (not yet queued) while it compiles. */
  readonly constraint?: GrammarConstraint;
  /**
   * Warm the prefix cache: prefill the prompt's whole pages (a trailing partial page is dropped),
   * snapshot the state there (written to the snapshot folder too, when there is one), and end with
   * `done` (finishReason 'length', no token) once the snapshot is stored. Nothing is sampled.
   */
  readonly prefillOnly?: boolean;
}

/**
 * Prompt ids. The tokenizer gives an Int32Array: it crosses threads as one memcpy where a number[] is
 * cloned element by element on the HTTP thread, and the worker keeps it as it is (4 B a token).
 */
export type PromptTokenIds = Int32Array | readonly number[];

/** What Engine.generate takes (the same as what the core holds). */
export type SubmitRequest = GenerateRequest;

export interface TopLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export type TokenEvent =
  /** Prefill advanced; sent at most every few hundred ms when reportProgress is set. */
  | { readonly type: 'progress'; readonly processedTokens: number; readonly totalTokens: number; readonly cachedTokens: number }
  /** Logprobs of the prompt tokens (index 0 has none: null), sent once before the first token when asked. */
  | { readonly type: 'prompt_logprobs'; readonly entries: readonly (PromptLogprobEntry | null)[] }
  /** One generated token. `logprob`/`top` are present when sampling.logprobs is not null. */
  | {
      readonly type: 'token';
      readonly tokenId: number;
      readonly logprob?: number;
      readonly top?: readonly TopLogprob[];
    }
  /** Last event of every stream. */
  | {
      readonly type: 'done';
      readonly finishReason: FinishReason;
      /** For 'stop' on a token: the stop/eos token id that ended it (not emitted as a token). */
      readonly stopTokenId: number | null;
      readonly promptTokens: number;
      readonly completionTokens: number;
      readonly cachedTokens: number;
      /** Set when finishReason is 'error'. */
      readonly errorMessage?: string;
      readonly timing: RequestTiming;
      /** A warm-up (prefillOnly) that stored its snapshot: its prefix key, and whether its file is on disk. */
      readonly snapshot?: WarmedSnapshot;
    };

export interface PromptLogprobEntry {
  readonly tokenId: number;
  readonly logprob: number;
  readonly top: readonly TopLogprob[];
}

/** Seconds, measured in the engine, for metrics. */
export interface RequestTiming {
  readonly queueSeconds: number;
  readonly prefillSeconds: number;
  readonly decodeSeconds: number;
}

/** Counters of what the engine holds right now; every count returns to zero when idle. */
export interface EngineStats {
  readonly numRunning: number;
  readonly numWaiting: number;
  /** Prompt tokens of the waiting requests (the server bounds it: --max-waiting-tokens). */
  readonly waitingPromptTokens: number;
  readonly kvPagesUsed: number;
  readonly kvPagesTotal: number;
  readonly stateSlotsUsed: number;
  readonly stateSlotsTotal: number;
  readonly stateBytesInUse: number;
  readonly prefixCacheBytes: number;
  /** W8ASpike models: zero spikes and all spikes of the spike-coded linear inputs computed so far (0 otherwise). */
  readonly spikeZeros: number;
  readonly spikeValues: number;
  /** Requests preempted since start (a full-attention pool ran out; they recomputed). Cumulative. */
  readonly numPreemptions: number;
  /** With a snapshot folder: this process's cumulative reads, writes and failures, and the folder's size. */
  readonly prefixStore?: SnapshotDiskStats;
  /** Grammar matchers held (one per constrained request, queued or running); absent before the first. */
  readonly grammarMatchers?: number;
}

/**
 * The supervised engine's condition (engine.ts). `restarting`: the inference worker was lost and a new
 * one is being started (requests get 503, readiness fails). `failed`: it failed too often to recover
 * in this process (liveness fails, so the orchestrator restarts the process).
 */
export type EngineCondition = 'ready' | 'restarting' | 'failed' | 'closed';

export interface EngineHealth {
  readonly condition: EngineCondition;
  /** Replacement workers started since the engine was created (the engine_restarts_total counter). */
  readonly restarts: number;
  /** Why the last worker was lost (for logs and operators), or null. */
  readonly lastFailure: string | null;
}

export interface WarmedSnapshot {
  readonly key: string;
  readonly onDisk: boolean;
}

/** What deleting a prefix snapshot found. */
export interface PrefixCacheDeletion {
  readonly memory: boolean;
  readonly disk: boolean;
}

